"""``broker policy check FILE`` and ``broker policy explain``: the broker's own rules
engine, reached through broker/policy_engine.py (needs a checkout)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.cli.common import Output, env, exit_code_epilog
from broker.errors import EXIT_OK, EXIT_POLICY_DENIED, RulesInvalidError


def add_policy_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="check the rules file, explain decisions (needs a checkout)")
    psub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    check = psub.add_parser("check", parents=[common], help="validate a rules file",
                            epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", metavar="FILE", help="the rules file (TOML)")
    check.set_defaults(func=cmd_policy_check)
    explain = psub.add_parser("explain", parents=[common],
                              help="say which rules grant ROLE to a caller with these facts, and why not",
                              epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("--facts", required=True, metavar="FACTS.json",
                         help="the caller's facts as JSON (as the audit trail records them; '-' for stdin)")
    explain.add_argument("--role", required=True, help="the role asked for")
    explain.add_argument("--rules", default=env("BROKER_RULES_FILE"), metavar="FILE",
                         help="the rules file (env BROKER_RULES_FILE; default chalicelib/policies/rules.toml "
                         "or policies/rules.toml in the checkout)")
    explain.set_defaults(func=cmd_policy_explain)


def cmd_policy_check(args: argparse.Namespace, out: Output) -> int:
    from broker.policy_engine import load_engine

    engine = load_engine()
    ruleset = engine.load_rules(args.file)
    rules = list(getattr(ruleset, "rules", ()))
    names = [getattr(r, "name", str(r)) for r in rules]
    roles = sorted({getattr(r, "role", "") for r in rules} - {""})
    warnings = engine.warnings(ruleset)
    if not out.json_mode:
        print(f"{args.file}: OK, {len(rules)} rule(s) for role(s) {', '.join(roles) or '(none)'}",
              file=out.stderr if out.quiet else out.stdout)
        for warning in warnings:
            print(f"warning: {warning}", file=out.stderr)
    out.result({"status": "ok", "file": args.file, "rules": names, "roles": roles, "warnings": warnings})
    return EXIT_OK


def _read_facts(source: str) -> Any:
    try:
        if source == "-":
            return json.load(sys.stdin)
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise RulesInvalidError(f"cannot read the facts file {source}: {exc.strerror}") from None
    except ValueError as exc:
        raise RulesInvalidError(f"the facts file {source} is not JSON: {exc}") from None


def cmd_policy_explain(args: argparse.Namespace, out: Output) -> int:
    from broker.policy_engine import default_rules_file, load_engine

    engine = load_engine()
    rules_path = args.rules or default_rules_file()
    ruleset = engine.load_rules(rules_path)
    raw = _read_facts(args.facts)
    if isinstance(raw, dict) and isinstance(raw.get("event"), dict):
        raw = raw["event"]  # `broker audit show --json` prints {"event": record, ...}
    if isinstance(raw, dict) and "request_id" in raw and isinstance(raw.get("facts"), dict):
        # An audit record as it is: its facts, read by its own method.
        raw = dict(raw["facts"], method=raw.get("method") or raw["facts"].get("method", "aws"))
    facts = engine.facts_from_dict(raw, args.facts)

    verdicts = list(ruleset.explain(facts, args.role))
    granted_by = [str(getattr(v.rule, "name", v.rule)) for v in verdicts if v.granted and v.role == args.role]
    if not out.json_mode:
        stream = out.stdout
        if not verdicts:
            print(f"role {args.role}: DENIED: no rule in {rules_path} grants this role", file=stream)
        for v in verdicts:
            name = getattr(v.rule, "name", v.rule)
            print(f"rule {name} (role {v.role}): {'GRANTED' if v.granted else 'denied'}", file=stream)
            for reason in v.reasons:
                print(f"  - {reason}", file=stream)
        if verdicts:
            verdict = f"GRANTED by {', '.join(granted_by)}" if granted_by else "DENIED"
            print(f"role {args.role}: {verdict}", file=stream)
    out.result({
        "status": "ok",
        "rules_file": rules_path,
        "role": args.role,
        "granted": bool(granted_by),
        "granted_by": granted_by,
        "verdicts": [
            {"rule": str(getattr(v.rule, "name", v.rule)), "role": v.role, "granted": bool(v.granted),
             "reasons": [str(r) for r in v.reasons]}
            for v in verdicts
        ],
    })
    return EXIT_OK if granted_by else EXIT_POLICY_DENIED
