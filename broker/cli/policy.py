"""``broker policy check FILE`` and ``broker policy explain``: the broker's own rules
engine, reached through broker/policy_engine.py (carried by broker.pyz; from the wheel, a checkout)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from broker.cli.common import Output, env, exit_code_epilog
from broker.errors import EXIT_OK, EXIT_POLICY_DENIED, RulesInvalidError


def add_policy_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="check, push and explain the rules (the engine: in broker.pyz, or a checkout's)")
    psub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    check = psub.add_parser("check", parents=[common], help="validate a rules file",
                            epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", metavar="SOURCE",
                       help="the rules: a file, or what is deployed (s3://BUCKET/KEY, ssm:NAME)")
    _add_aws_options(check)
    check.set_defaults(func=cmd_policy_check)
    push = psub.add_parser("push", parents=[common],
                           help="validate a rules file and upload it where the broker reads its rules",
                           epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("file", metavar="FILE", help="the rules file (TOML)")
    push.add_argument("--to", required=True, metavar="SOURCE",
                      help="the broker's BROKER_RULES_SOURCE: s3://BUCKET/KEY (versioned) or ssm:NAME")
    push.add_argument("--force", action="store_true",
                      help="push even when FILE's serial goes back behind the deployed rules' (the broker still "
                           "refuses it unless its BROKER_RULES_ALLOW_SERIAL names that serial)")
    _add_aws_options(push)
    push.set_defaults(func=cmd_policy_push)
    explain = psub.add_parser("explain", parents=[common],
                              help="say which rules grant ROLE to a caller with these facts, and why not",
                              epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("--facts", required=True, metavar="FACTS.json",
                         help="the caller's facts as JSON (as the audit trail records them; '-' for stdin)")
    explain.add_argument("--role", required=True, help="the role asked for")
    explain.add_argument("--rules", default=env("BROKER_RULES_SOURCE") or env("BROKER_RULES_FILE"), metavar="SOURCE",
                         help="the rules: a file or what is deployed (s3://BUCKET/KEY, ssm:NAME; env "
                         "BROKER_RULES_SOURCE or BROKER_RULES_FILE; default chalicelib/policies/rules.toml or "
                         "policies/rules.toml in the checkout, else in the current directory)")
    _add_aws_options(explain)
    explain.set_defaults(func=cmd_policy_explain)


def _add_aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aws-region", default=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1",
                        help="region of the S3 bucket or SSM parameter (env AWS_REGION)")
    parser.add_argument("--aws-endpoint-url", default=None, metavar="URL",
                        help="S3/SSM endpoint, for a local stack (default: botocore's)")


def _remote(source: str) -> Any:
    """("s3", (bucket, key)) or ("ssm", name) for a deployed source, else None (a file)."""
    if source.startswith("s3://"):
        bucket, _, key = source[len("s3://"):].partition("/")
        if not bucket or not key:
            raise RulesInvalidError(f"{source}: an S3 rules source is s3://BUCKET/KEY")
        return "s3", (bucket, key)
    if source.startswith("ssm:"):
        return "ssm", source[len("ssm:"):]
    return None


def _aws_client(service: str, args: argparse.Namespace) -> Any:
    from broker.clouds.botocore_session import new_session

    return new_session().create_client(service, region_name=args.aws_region, endpoint_url=args.aws_endpoint_url)


def _local_copy(source: str, args: argparse.Namespace) -> str:
    """A file holding the rules of `source` (itself when it is a file), for the engine to load."""
    remote = _remote(source)
    if remote is None:
        return source
    import tempfile

    kind, where = remote
    try:
        if kind == "s3":
            text = _aws_client("s3", args).get_object(Bucket=where[0], Key=where[1])["Body"].read().decode("utf-8")
        else:
            text = _aws_client("ssm", args).get_parameter(Name=where)["Parameter"]["Value"]
    except Exception as exc:  # botocore's many error classes: say which source and why
        raise RulesInvalidError(f"cannot read the deployed rules at {source}: {exc}") from None
    handle, path = tempfile.mkstemp(prefix="broker-rules-", suffix=".toml")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def cmd_policy_push(args: argparse.Namespace, out: Output) -> int:
    """Validate FILE with the broker's engine (every problem at once), then upload it. A file
    that fails validation is never uploaded; the broker would refuse it anyway and keep
    its last good rules, but a push that can't apply should fail here, loudly."""
    from broker.policy_engine import load_engine

    remote = _remote(args.to)
    if remote is None:
        raise RulesInvalidError(f"--to {args.to}: expected s3://BUCKET/KEY or ssm:NAME")
    engine = load_engine()
    ruleset = engine.load_rules(args.file)
    with open(args.file, "rb") as f:
        data = f.read()
    deployed = _deployed_serial(engine, args)
    serial = getattr(ruleset, "serial", 0)
    going_back = deployed is not None and (serial < deployed[0] or (serial == deployed[0] and serial > 0 and
                                                                    getattr(ruleset, "sha256", "") != deployed[1]))
    if going_back and not args.force:
        raise RulesInvalidError(
            f"{args.file}: serial {serial} goes back behind the rules deployed at {args.to} (serial {deployed[0]}): "
            "the broker would refuse them and keep its rules. Raise the serial; to go back on purpose, push "
            f"with --force and set BROKER_RULES_ALLOW_SERIAL={serial} on the broker")
    kind, where = remote
    try:
        if kind == "s3":
            metadata = {"rules-serial": str(serial)}
            if going_back:
                metadata["forced-over-serial"] = str(deployed[0])  # the push says it went back, on the object
            answer = _aws_client("s3", args).put_object(Bucket=where[0], Key=where[1], Body=data,
                                                        ContentType="application/toml", Metadata=metadata)
            version = answer.get("VersionId") or answer.get("ETag")
        else:
            tier = "Standard" if len(data) <= 4096 else "Advanced"
            answer = _aws_client("ssm", args).put_parameter(Name=where, Value=data.decode("utf-8"), Type="String",
                                                            Overwrite=True, Tier=tier)
            version = str(answer.get("Version"))
    except Exception as exc:
        raise RulesInvalidError(f"could not upload the rules to {args.to}: {exc}") from None
    roles = sorted({r.role for r in ruleset.rules})
    if not out.json_mode:
        print(f"{args.file}: valid, {len(ruleset.rules)} rule(s); pushed to {args.to} (version {version}). "
              "The broker applies it within BROKER_RULES_REFRESH_SECONDS.", file=out.stderr if out.quiet else out.stdout)
        for warning in engine.warnings(ruleset):
            print(f"warning: {warning}", file=out.stderr)
    if going_back:
        print(f"warning: forced: serial {serial} is behind the deployed serial {deployed[0]}; the broker "
              f"applies it only with BROKER_RULES_ALLOW_SERIAL={serial}", file=out.stderr)
    out.result({"status": "ok", "file": args.file, "to": args.to, "version": version, "roles": roles,
                "serial": serial, "forced": going_back})
    return EXIT_OK


def _deployed_serial(engine: Any, args: argparse.Namespace) -> Any:
    """(serial, sha256) of the rules deployed at --to, or None when there are none yet.
    Unreadable or invalid deployed rules are an error unless --force (the order can't be checked)."""
    try:
        path = _local_copy(args.to, args)
    except RulesInvalidError as exc:
        if any(code in str(exc) for code in ("NoSuchKey", "ParameterNotFound", "Not Found")):
            return None
        if args.force:
            return None
        raise RulesInvalidError(f"{exc} (to check the rules' order; --force pushes without it)") from None
    try:
        current = engine.load_rules(path)
    except RulesInvalidError:
        return None  # the broker refused those: nothing to go back behind
    finally:
        os.unlink(path)
    return getattr(current, "serial", 0), getattr(current, "sha256", "")


def cmd_policy_check(args: argparse.Namespace, out: Output) -> int:
    from broker.policy_engine import load_engine

    engine = load_engine()
    ruleset = engine.load_rules(_local_copy(args.file, args))
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
    ruleset = engine.load_rules(_local_copy(rules_path, args))
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
