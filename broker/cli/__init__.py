"""The ``broker`` command line: one module per command.

- ``login`` (broker/cli/login.py): what a machine runs at boot;
- ``policy check|push|explain`` (policy.py): the rules engine (in broker.pyz, else a checkout's);
- ``vault setup|rotate-broker-secret`` (vault.py): operators;
- ``audit search|show``, ``revoke`` (security.py): the security team.

Human messages go to stderr; ``--json`` puts one machine-readable summary on
stdout. Nothing secret is ever printed: no wrapping token, role ID, secret ID,
Vault token, AWS key or signature (accessors and request IDs are fine). As a
last line of defence, every message is also scrubbed of the secrets this process
has handled (broker/cli/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Dict, Optional, Sequence

from broker import __version__
from broker.cli.common import Output, common_parser, exit_code_epilog
from broker.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_UNEXPECTED,
    ClientError,
    InterceptionError,
    RateLimitedError,
    UntrustedVaultError,
)

__all__ = ["main", "build_parser", "Output"]


def build_parser() -> argparse.ArgumentParser:
    from broker.cli.login import add_login_command
    from broker.cli.policy import add_policy_commands
    from broker.cli.security import add_security_commands
    from broker.cli.vault import add_vault_commands

    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Client of the secret-zero broker: trade this machine's cloud identity "
        "for Vault/OpenBao AppRole credentials.",
        epilog=exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_login_command(sub, common)
    add_policy_commands(sub, common)
    add_vault_commands(sub, common)
    add_security_commands(sub, common)
    return parser


def _split_command(argv: list) -> tuple:
    """(the broker's arguments, the command after '--' for login --exec)."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (``broker`` and ``python -m broker`` exit with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parse_argv, command_argv = _split_command(argv)
    early = Output()
    try:
        parser = build_parser()  # flags' defaults read the environment and the config file
    except ClientError as exc:
        early.error(str(exc))
        return exc.exit_code
    try:
        args = parser.parse_args(parse_argv)
        if command_argv and args.command != "login":
            args = parser.parse_args(argv)
            command_argv = []
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else EXIT_UNEXPECTED
    args.command_argv = command_argv

    out = Output(quiet=args.quiet, json_mode=args.json)
    try:
        return args.func(args, out)
    except BrokenPipeError:
        return _stdout_closed()
    except (InterceptionError, UntrustedVaultError) as exc:
        out.alarm(str(exc))
        out.result(_error_summary(exc, accessor=getattr(exc, "accessor", None)))
        return exc.exit_code
    except ClientError as exc:
        out.error(str(exc))
        out.result(_error_summary(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last resort: no traceback unless asked
        if args.debug:
            out.error("unexpected error:\n" + traceback.format_exc())
        else:
            out.error(f"unexpected error: {type(exc).__name__}: {exc} (--debug shows the traceback)")
        out.result({"status": "error", "exit_code": EXIT_UNEXPECTED, "error": type(exc).__name__})
        return EXIT_UNEXPECTED


def _stdout_closed() -> int:
    """The reader of stdout went away (``broker audit search --json | head``): no traceback, and
    no second BrokenPipeError when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def _error_summary(exc: ClientError, accessor: Optional[str] = None) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        "status": "error",
        "exit_code": exc.exit_code,
        "error": type(exc).__name__,
        "message": exc.message,
        "request_id": exc.request_id,
    }
    if accessor:
        summary["accessor"] = accessor
    if isinstance(exc, UntrustedVaultError):
        summary["accessors"] = list(exc.accessors)
    if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
        summary["retry_after"] = round(exc.retry_after)
    if getattr(exc, "incident", None):
        summary["incident"] = exc.incident  # the report of a possible interception to the broker
    code = getattr(exc, "code", None)
    if code:
        summary["code"] = code
    return summary
