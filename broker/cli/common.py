"""What every command shares: output (stderr for people, stdout for --json, secrets
scrubbed), settings from flags/environment/config file, argument types, exit codes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, TextIO

from broker.config import setting
from broker.errors import EXIT_CODES

# Anything shaped like a JWT (even cut short): identity tokens are bearer credentials.
# Pieces of long secrets (session tokens, signatures) that are redacted wherever they appear.
_FRAGMENT = 16
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?)?")


def env(name: str, default: str | None = None) -> str | None:
    """A flag's default: the environment variable, else the config file (broker/config.py)."""
    return setting(name, default)


def exit_code_epilog() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code:<3}  {text}" for code, text in sorted(EXIT_CODES.items())]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def common_parser() -> argparse.ArgumentParser:
    """--json, --quiet, --debug: the parent of every command's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="print only errors on stderr")
    common.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return common


class Output:
    """stderr for people, stdout for --json; scrubs known secrets from everything."""

    def __init__(self, *, quiet: bool = False, json_mode: bool = False,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.quiet = quiet
        self.json_mode = json_mode
        self._stdout = stdout
        self._stderr = stderr
        self._secrets: set[str] = set()
        self._fragments: set[str] = set()

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    def add_secrets(self, *values: str | None) -> None:
        for value in values:
            if value and len(value) >= 4 and value not in self._secrets:
                self._secrets.add(value)
                if len(value) >= 2 * _FRAGMENT:  # a long secret may be echoed cut short: know its pieces
                    self._fragments.update(value[i:i + _FRAGMENT] for i in range(len(value) - _FRAGMENT + 1))

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        text = self._scrub_fragments(text)
        return _JWT_LIKE.sub("[redacted]", text)

    def _scrub_fragments(self, text: str) -> str:
        """Redact every run of text covered by pieces of a long secret (a session token cut at 100
        characters, a signature split over two lines): pieces of _FRAGMENT characters are 96 bits or
        more of a secret, never found by chance."""
        if not self._fragments or len(text) < _FRAGMENT:
            return text
        covered = [False] * len(text)
        for i in range(len(text) - _FRAGMENT + 1):
            if text[i:i + _FRAGMENT] in self._fragments:
                covered[i:i + _FRAGMENT] = [True] * _FRAGMENT
        if not any(covered):
            return text
        out, i = [], 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append("[redacted]")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(self.scrub(f"broker: {message}"), file=self.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(self.scrub(f"broker: warning: {message}"), file=self.stderr, flush=True)

    def error(self, message: str) -> None:
        print(self.scrub(f"broker: error: {message}"), file=self.stderr, flush=True)

    def alarm(self, message: str) -> None:
        bar = "!" * 72
        print(self.scrub(f"{bar}\nbroker: SECURITY ALERT: {message}\n{bar}"), file=self.stderr, flush=True)

    def result(self, data: dict[str, Any]) -> None:
        if self.json_mode:
            print(self.scrub(json.dumps(data, sort_keys=True)), file=self.stdout, flush=True)

    def flush(self) -> None:
        for stream in (self.stdout, self.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


