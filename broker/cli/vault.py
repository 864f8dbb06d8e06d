"""``broker vault setup`` and ``broker vault rotate-broker-secret`` (operators; need botocore
for Secrets Manager, and setup a checkout for the rules)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

from broker.cli.common import Output, env, exit_code_epilog
from broker.errors import EXIT_OK, UsageError


def add_vault_admin_arguments(parser: argparse.ArgumentParser, *, broker_role_help: str) -> None:
    """Where Vault and the broker's secret are: the arguments both commands share."""
    parser.add_argument("--vault-addr", default=env("VAULT_ADDR") or env("BAO_ADDR"), metavar="URL",
                        help="Vault address (env VAULT_ADDR or BAO_ADDR)")
    parser.add_argument("--vault-ca-cert", default=env("VAULT_CACERT"), metavar="FILE",
                        help="CA bundle to verify Vault's TLS certificate (env VAULT_CACERT)")
    parser.add_argument("--vault-namespace", default=env("VAULT_NAMESPACE"), metavar="NS",
                        help="Vault Enterprise namespace (env VAULT_NAMESPACE)")
    parser.add_argument("--approle-mount", default=env("BROKER_APPROLE_MOUNT", "approle"), metavar="PATH",
                        help="mount path of the AppRole auth method (default approle)")
    parser.add_argument("--broker-role", default="secret-zero-broker", metavar="NAME", help=broker_role_help)
    parser.add_argument("--secret", default=env("BROKER_VAULT_SECRET_ID_SECRET"), metavar="NAME",
                        help="Secrets Manager secret holding the broker's secret ID (env BROKER_VAULT_SECRET_ID_SECRET)")
    parser.add_argument("--aws-region", default=env("AWS_REGION") or env("AWS_DEFAULT_REGION"), metavar="REGION",
                        help="region of the secret (env AWS_REGION or AWS_DEFAULT_REGION)")
    parser.add_argument("--aws-endpoint-url", default=None, metavar="URL",
                        help="Secrets Manager endpoint, for a local stack (default: botocore's, which also "
                        "honours AWS_ENDPOINT_URL_SECRETS_MANAGER)")


def add_vault_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    vault = sub.add_parser("vault", help="set up Vault/OpenBao for the broker (needs a checkout)")
    vsub = vault.add_subparsers(dest="vault_command", metavar="SUBCOMMAND")
    vsub.required = True
    vsetup = vsub.add_parser(
        "setup", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="enable AppRole, write the policies and AppRoles the rules need, store the broker's secret ID",
        description="Idempotent: enables the AppRole auth method, writes the policies of policies/vault/, the "
        "broker's AppRole and one AppRole per role the rules serve (single-use secret IDs), and stores the "
        "broker's secret ID in Secrets Manager (created response-wrapped, checked, unwrapped here) unless the "
        "stored one is still valid. The Vault token comes from VAULT_TOKEN, BAO_TOKEN or ~/.vault-token.",
        epilog=exit_code_epilog())
    add_vault_admin_arguments(vsetup, broker_role_help="the broker's own AppRole and policy name (default secret-zero-broker)")
    vsetup.add_argument("--rules", default=env("BROKER_RULES_FILE"), metavar="FILE",
                        help="the rules file: which roles to serve (default: the checkout's)")
    vsetup.add_argument("--policy-dir", metavar="DIR", help="the Vault policies (default: the checkout's policies/vault)")
    vsetup.add_argument("--broker-cidrs", metavar="CIDR,...",
                        help="bind the broker's secret IDs and tokens to these CIDRs (the function's egress)")
    vsetup.add_argument("--token-bound-cidrs", metavar="CIDR,...",
                        help="bind the served roles' tokens to these CIDRs")
    vsetup.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    vsetup.set_defaults(func=cmd_vault_setup)
    _add_rotate_command(vsub, common)


def vault_admin_session(args: argparse.Namespace, out: Output):
    """The Vault client (token from the environment) and the Secrets Manager client that
    `vault setup` and `vault rotate-broker-secret` work with, after checking their arguments."""
    from broker.http import ssl_context
    from broker.vault_setup import Vault, vault_token_from_env

    if not args.vault_addr:
        raise UsageError("missing --vault-addr/VAULT_ADDR")
    if not args.secret:
        raise UsageError("missing --secret/BROKER_VAULT_SECRET_ID_SECRET (where the broker's secret ID is kept)")
    if not args.aws_region:
        raise UsageError("missing --aws-region/AWS_REGION (the region of the secret)")
    token = vault_token_from_env()
    out.add_secrets(token)
    ssl_context(args.vault_ca_cert, "Vault")  # the CA bundle checked before anything is sent
    vault = Vault(args.vault_addr, token or "", namespace=args.vault_namespace, ca_cert=args.vault_ca_cert)
    try:
        import botocore.session  # noqa: F401 - ImportError when botocore is missing

        from broker.clouds.botocore_session import new_session
        from botocore.exceptions import UnknownServiceError
    except ImportError:
        raise UsageError("the broker's secret ID is kept in Secrets Manager, which needs botocore: "
                         "install the client's wheel with botocore (docs/client.md)") from None
    try:
        secrets_client = new_session().create_client(
            "secretsmanager", region_name=args.aws_region, endpoint_url=args.aws_endpoint_url)
    except UnknownServiceError:
        raise UsageError("this botocore has no Secrets Manager model (the single-file broker.pyz carries only "
                         "what login needs): run the vault commands from the wheel with botocore") from None
    return vault, secrets_client


def cmd_vault_setup(args: argparse.Namespace, out: Output) -> int:
    from broker.policy_engine import default_rules_file, find_checkout
    from broker.vault_setup import served_roles, setup

    vault, secrets_client = vault_admin_session(args, out)
    checkout = find_checkout() or os.getcwd()
    rules_path = args.rules or default_rules_file()
    policy_dir = args.policy_dir or os.path.join(checkout, "policies", "vault")
    roles = served_roles(rules_path)

    def cidrs(text: str | None) -> list[str] | None:
        return [c.strip() for c in text.split(",") if c.strip()] if text else None

    plan = setup(vault, roles=roles, policy_dir=Path(policy_dir), secrets_client=secrets_client,
                 secret_name=args.secret, mount=args.approle_mount, broker_role=args.broker_role,
                 broker_cidrs=cidrs(args.broker_cidrs), token_bound_cidrs=cidrs(args.token_bound_cidrs),
                 dry_run=args.dry_run)
    verb = "would" if args.dry_run else "did"
    for change in plan.changes:
        out.info(f"{verb}: {change}")
    for same in plan.unchanged:
        out.info(f"ok: {same}")
    if not plan.changes:
        out.info("nothing to change")
    out.result(plan.summary())
    return EXIT_OK


def _add_rotate_command(vsub: Any, common: Any) -> None:
    """Register ``broker vault rotate-broker-secret``."""
    p = vsub.add_parser(
        "rotate-broker-secret", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a new secret ID for the broker's AppRole: store it, then destroy the old one after a grace period",
        description="Creates a new secret ID for the broker's own AppRole (response-wrapped, creation path "
        "checked, unwrapped here), checks that it logs in, stores it in Secrets Manager, waits --grace, then "
        "destroys the old one by accessor. The function reads the secret at each cold start and again when Vault "
        "refuses the secret ID it holds, so warm environments switch when the old one is destroyed, at their "
        "next login; during the grace period only new environments use the new one, and the old one still "
        "works if you need to roll back (put AWSPREVIOUS back). Two runs instead of a wait: --keep-old now, "
        "--finish OLD_ACCESSOR later. Prints accessors only. The Vault token comes from VAULT_TOKEN, BAO_TOKEN "
        "or ~/.vault-token.",
        epilog=exit_code_epilog())
    add_vault_admin_arguments(p, broker_role_help="the broker's own AppRole (default secret-zero-broker)")
    p.add_argument("--grace", default="15m", metavar="DURATION",
                   help="how long the old secret ID stays valid after the new one is stored (default 15m): a "
                   "canary window in which only new execution environments use the new one and a rollback is "
                   "still possible; 0 destroys it at once. With --finish: the least age of the stored secret ID")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep-old", action="store_true",
                      help="phase 1 only: store the new secret ID, keep the old one, print the --finish command")
    mode.add_argument("--finish", metavar="OLD_ACCESSOR",
                      help="phase 2 only: destroy the old secret ID by its accessor (refused while it is the "
                      "stored one, or while the stored one is younger than --grace)")
    p.add_argument("--dry-run", action="store_true", help="print what would happen, change nothing")
    p.set_defaults(func=cmd_vault_rotate)


def cmd_vault_rotate(args: Any, out: Any) -> int:
    from broker.vault_rotate import Rotator, parse_grace

    vault, secrets_client = vault_admin_session(args, out)
    grace = parse_grace(args.grace)
    rotator = Rotator(vault, secrets_client, args.secret, mount=args.approle_mount, broker_role=args.broker_role,
                      say=out.info, secret=out.add_secrets)
    hint = ["broker", "vault", "rotate-broker-secret", "--secret", args.secret]
    if args.approle_mount.strip("/") != "approle":
        hint += ["--approle-mount", args.approle_mount]
    if args.broker_role != "secret-zero-broker":
        hint += ["--broker-role", args.broker_role]
    finish_hint = shlex.join(hint).replace("{", "{{").replace("}", "}}") + " --finish {accessor}"
    if args.finish:
        result = rotator.finish(args.finish, grace=grace, dry_run=args.dry_run)
    else:
        result = rotator.rotate(grace=grace, keep_old=args.keep_old, dry_run=args.dry_run, finish_hint=finish_hint)
    out.result(result.summary())
    return EXIT_OK
