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

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    def add_secrets(self, *values: str | None) -> None:
        self._secrets.update(v for v in values if v and len(v) >= 4)

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return _JWT_LIKE.sub("[redacted]", text)

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


