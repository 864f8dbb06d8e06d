"""The ``broker`` command line: ``broker login`` and ``broker policy check|explain``.

Human messages go to stderr; ``--json`` puts one machine-readable summary on
stdout. Nothing secret is ever printed: no wrapping token, role ID, secret ID,
Vault token, AWS key or signature (accessors and request IDs are fine). As a
last line of defence, every message is also scrubbed of the secrets this process
has handled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence, TextIO

from broker import __version__
from broker.errors import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_POLICY_DENIED,
    EXIT_UNEXPECTED,
    ClientError,
    InterceptionError,
    RulesInvalidError,
    UsageError,
)

_ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Anything shaped like a JWT (even cut short): identity tokens are bearer credentials.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?)?")


def add_vault_admin_arguments(parser, *, broker_role_help):
    """Where Vault and the broker's secret are: the arguments `vault setup` and
    `vault rotate-broker-secret` share."""
    parser.add_argument("--vault-addr", default=_env("VAULT_ADDR") or _env("BAO_ADDR"), metavar="URL",
                        help="Vault address (env VAULT_ADDR or BAO_ADDR)")
    parser.add_argument("--vault-ca-cert", default=_env("VAULT_CACERT"), metavar="FILE",
                        help="CA bundle to verify Vault's TLS certificate (env VAULT_CACERT)")
    parser.add_argument("--vault-namespace", default=_env("VAULT_NAMESPACE"), metavar="NS",
                        help="Vault Enterprise namespace (env VAULT_NAMESPACE)")
    parser.add_argument("--approle-mount", default=_env("BROKER_APPROLE_MOUNT", "approle"), metavar="PATH",
                        help="mount path of the AppRole auth method (default approle)")
    parser.add_argument("--broker-role", default="secret-zero-broker", metavar="NAME", help=broker_role_help)
    parser.add_argument("--secret", default=_env("BROKER_VAULT_SECRET_ID_SECRET"), metavar="NAME",
                        help="Secrets Manager secret holding the broker's secret ID (env BROKER_VAULT_SECRET_ID_SECRET)")
    parser.add_argument("--aws-region", default=_env("AWS_REGION") or _env("AWS_DEFAULT_REGION"), metavar="REGION",
                        help="region of the secret (env AWS_REGION or AWS_DEFAULT_REGION)")
    parser.add_argument("--aws-endpoint-url", default=None, metavar="URL", help=argparse.SUPPRESS)


def _exit_code_epilog() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items())]
    return "\n".join(lines)


LOGIN_EPILOG = (
    "The command of --exec comes after '--', at the end: broker login ... --exec -- CMD ARGS...\n"
    "\n"
    "examples:\n"
    "  broker login --broker-url https://broker.example.com --role web \\\n"
    "      --server-id broker.example.com --out-dir /run/vault-agent\n"
    "  BROKER_URL=... BROKER_ROLE=batch BROKER_SERVER_ID=... broker login --exec -- python job.py\n"
    "  broker login --cloud gcp --broker-url https://broker.example.com --role web --sink /run/vault/token\n"
    "\n" + _exit_code_epilog()
)


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


# ---- argument parsing ----------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="print only errors on stderr")
    common.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    parser = argparse.ArgumentParser(
        prog="broker",
        description="Client of the secret-zero broker: trade this machine's cloud identity "
        "for Vault/OpenBao AppRole credentials.",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    login = sub.add_parser(
        "login",
        parents=[common],
        help="prove this machine's AWS or GCP identity, receive and unwrap AppRole credentials, hand them on",
        description="Prove this machine's cloud identity (AWS: an sts:GetCallerIdentity signed with the default "
        "credential chain; GCP: the GCE metadata server's identity token), ask the broker for the role, check "
        "and unwrap the wrapped role ID and secret ID, and hand them on.",
        epilog=LOGIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = login.add_argument_group("broker")
    g.add_argument("--broker-url", default=_env("BROKER_URL"), metavar="URL",
                   help="base URL of the broker (env BROKER_URL)")
    g.add_argument("--role", default=_env("BROKER_ROLE"), help="AppRole to ask for (env BROKER_ROLE)")
    g.add_argument("--server-id", default=_env("BROKER_SERVER_ID"), metavar="ID",
                   help="the broker's X-Vault-AWS-IAM-Server-ID value, for the AWS proof (env BROKER_SERVER_ID)")
    g.add_argument("--ca-cert", default=_env("BROKER_CA_CERT"), metavar="FILE",
                   help="CA bundle to verify the broker's TLS certificate (env BROKER_CA_CERT)")
    g.add_argument("--timeout", type=_positive_float, default=_env("BROKER_TIMEOUT", "10"), metavar="SECONDS",
                   help="timeout of each HTTP request (default 10; env BROKER_TIMEOUT)")
    g.add_argument("--max-attempts", type=_positive_int, default=_env("BROKER_MAX_ATTEMPTS", "6"), metavar="N",
                   help="attempts at the broker, each with a fresh proof (default 6; env BROKER_MAX_ATTEMPTS)")
    g.add_argument("--max-wait", type=_positive_float, default=_env("BROKER_MAX_WAIT", "120"), metavar="SECONDS",
                   help="give up retrying after this long (default 120; env BROKER_MAX_WAIT)")

    g.add_argument("--cloud", choices=("auto", "aws", "gcp"), default=_env("BROKER_CLOUD", "auto"),
                   help="which cloud proves this machine's identity (default auto: AWS credentials without "
                   "IMDS, else a GCE metadata server, else EC2 IMDS; env BROKER_CLOUD)")

    gcp = login.add_argument_group("GCP proof")
    gcp.add_argument("--audience", default=_env("BROKER_GCP_AUDIENCE"), metavar="AUD",
                     help="audience of the identity token (default: the broker URL; env BROKER_GCP_AUDIENCE)")
    gcp.add_argument("--metadata-url", default=_env("BROKER_GCP_METADATA_URL"), metavar="URL",
                     help="base URL of the GCE metadata server (default http://metadata.google.internal; "
                     "env BROKER_GCP_METADATA_URL)")

    a = login.add_argument_group("AWS proof")
    a.add_argument("--sts-url", default=_env("BROKER_STS_URL", "https://sts.amazonaws.com/"), metavar="URL",
                   help="STS endpoint the proof is signed for (default https://sts.amazonaws.com/; "
                   "env BROKER_STS_URL); the broker must accept it")
    a.add_argument("--sts-region", default=_env("BROKER_STS_REGION"), metavar="REGION",
                   help="SigV4 region (default: from a regional --sts-url, else us-east-1; env BROKER_STS_REGION)")

    v = login.add_argument_group("Vault")
    v.add_argument("--vault-addr", default=_env("VAULT_ADDR"), metavar="URL",
                   help="Vault address (env VAULT_ADDR; default: the vault_addr the broker returns)")
    v.add_argument("--vault-ca-cert", default=_env("VAULT_CACERT"), metavar="FILE",
                   help="CA bundle to verify Vault's TLS certificate (env VAULT_CACERT)")
    v.add_argument("--vault-namespace", default=_env("VAULT_NAMESPACE"), metavar="NS",
                   help="Vault Enterprise namespace (env VAULT_NAMESPACE)")
    v.add_argument("--approle-mount", default=_env("BROKER_APPROLE_MOUNT", "approle"), metavar="PATH",
                   help="mount path of the AppRole auth method (default approle; env BROKER_APPROLE_MOUNT)")

    h = login.add_argument_group("hand-off (exactly one)").add_mutually_exclusive_group()
    h.add_argument("--out-dir", metavar="DIR", help="write DIR/role_id and DIR/secret_id, mode 0600")
    h.add_argument("--agent-dir", metavar="DIR",
                   help="for a Vault/OpenBao Agent: write DIR/role_id and, still wrapped, DIR/secret_id "
                   "(the wrapping token; set secret_id_response_wrapping_path in the Agent), mode 0600")
    h.add_argument("--sink", metavar="FILE", help="log in and write the Vault token to FILE, mode 0600")
    h.add_argument("--exec", dest="exec_", action="store_true",
                   help="log in and exec the command given after '--' with VAULT_TOKEN and VAULT_ADDR set")
    login.set_defaults(func=cmd_login)

    policy = sub.add_parser("policy", help="check the rules file, explain decisions (needs a checkout)")
    psub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    check = psub.add_parser("check", parents=[common], help="validate a rules file",
                            epilog=_exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", metavar="FILE", help="the rules file (TOML)")
    check.set_defaults(func=cmd_policy_check)
    explain = psub.add_parser("explain", parents=[common],
                              help="say which rules grant ROLE to a caller with these facts, and why not",
                              epilog=_exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("--facts", required=True, metavar="FACTS.json",
                         help="the caller's facts as JSON (as the audit trail records them; '-' for stdin)")
    explain.add_argument("--role", required=True, help="the role asked for")
    explain.add_argument("--rules", default=_env("BROKER_RULES_FILE"), metavar="FILE",
                         help="the rules file (env BROKER_RULES_FILE; default chalicelib/policies/rules.toml "
                         "or policies/rules.toml in the checkout)")
    explain.set_defaults(func=cmd_policy_explain)

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
        epilog=_exit_code_epilog())
    add_vault_admin_arguments(vsetup, broker_role_help="the broker's own AppRole and policy name (default secret-zero-broker)")
    vsetup.add_argument("--rules", default=_env("BROKER_RULES_FILE"), metavar="FILE",
                        help="the rules file: which roles to serve (default: the checkout's)")
    vsetup.add_argument("--policy-dir", metavar="DIR", help="the Vault policies (default: the checkout's policies/vault)")
    vsetup.add_argument("--broker-cidrs", metavar="CIDR,...",
                        help="bind the broker's secret IDs and tokens to these CIDRs (the function's egress)")
    vsetup.add_argument("--token-bound-cidrs", metavar="CIDR,...",
                        help="bind the served roles' tokens to these CIDRs")
    vsetup.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    vsetup.set_defaults(func=cmd_vault_setup)

    from broker.vault_rotate import add_rotate_command  # broker vault rotate-broker-secret

    add_rotate_command(vsub, common)

    from broker.security_cli import add_security_commands  # broker audit ..., broker revoke ...

    add_security_commands(sub, common)
    return parser


# ---- login ------------------------------------------------------------------------------


def _ssl_context(cafile: str | None, what: str) -> ssl.SSLContext | None:
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the CA bundle for {what} from {cafile}: {exc}") from None


def cmd_login(args: argparse.Namespace, out: Output) -> int:
    from broker.api import BrokerClient, RetryPolicy, is_loopback
    from broker.handoff import (
        exec_with_token,
        preflight_command,
        preflight_out_dir,
        preflight_sink,
        write_approle_files,
        write_sink,
    )
    from broker.proofs import build_proof_source
    from broker.incident import reporting
    from broker.vault import VaultClient, normalize_mount, unwrap_credentials, unwrap_role_id_for_agent

    missing = [flag for flag, value in (("--broker-url/BROKER_URL", args.broker_url),
                                        ("--role/BROKER_ROLE", args.role)) if not value]
    if args.cloud == "aws" and not args.server_id:
        missing.append("--server-id/BROKER_SERVER_ID")
    if missing:
        raise UsageError("missing " + ", ".join(missing))
    if not _ROLE_NAME.match(args.role):
        raise UsageError(f"invalid role name {args.role!r}")
    mount = normalize_mount(args.approle_mount)
    command = list(args.command_argv or [])
    if not (args.out_dir or args.agent_dir or args.sink or args.exec_):
        raise UsageError("choose a hand-off: --out-dir DIR, --agent-dir DIR, --sink FILE or --exec -- CMD ARGS...")
    if args.exec_ and not command:
        raise UsageError("--exec needs a command after '--': broker login ... --exec -- CMD ARGS...")
    if command and not args.exec_:
        raise UsageError("a command after '--' is only used with --exec")
    # Check the hand-off before anything is issued: a secret ID minted for nothing is waste
    # (and one more thing in the audit trail to explain).
    problem = (preflight_out_dir(args.out_dir) if args.out_dir
               else preflight_out_dir(args.agent_dir, "--agent-dir") if args.agent_dir
               else preflight_sink(args.sink) if args.sink
               else preflight_command(command))
    if problem:
        raise UsageError(problem)
    for url, what in ((args.broker_url, "broker"), (args.vault_addr, "Vault")):
        if url and url.startswith("http://") and not is_loopback(url):
            out.warn(f"the {what} URL {url} is not https: credentials would cross the network in clear")

    client = BrokerClient(
        args.broker_url,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts, max_wait=args.max_wait),
        ssl_context=_ssl_context(args.ca_cert, "the broker"),
        log=out.info,
    )
    vault_ssl = _ssl_context(args.vault_ca_cert, "Vault")
    if args.vault_addr:  # a bad address is a usage error before anything is issued
        VaultClient(args.vault_addr)

    proof = build_proof_source(
        cloud=args.cloud, broker_url=client.base_url, server_id=args.server_id, sts_url=args.sts_url,
        sts_region=args.sts_region, audience=args.audience, metadata_url=args.metadata_url,
        timeout=args.timeout, add_secret=out.add_secrets, log=out.info)
    out.info(f"asking {client.base_url} for role {args.role}")
    issued = client.request_credentials(args.role, proof.make, path=proof.path, replay_hint=proof.replay_hint)
    out.add_secrets(issued.role_id_wrap.token, issued.secret_id_wrap.token)
    out.info(
        f"issued: request ID {issued.request_id}, wrapping accessors "
        f"role ID {issued.role_id_wrap.accessor}, secret ID {issued.secret_id_wrap.accessor}"
    )
    summary: dict[str, Any] = {
        "status": "ok",
        "request_id": issued.request_id,
        "role": issued.role,
        "cloud": proof.cloud,
        "attempts": issued.attempts,
        "role_id_wrap_accessor": issued.role_id_wrap.accessor,
        "secret_id_wrap_accessor": issued.secret_id_wrap.accessor,
    }

    vault_addr = args.vault_addr or issued.vault_addr
    if not vault_addr:
        raise UsageError("no Vault address: the broker returned none; set --vault-addr or VAULT_ADDR",
                         request_id=issued.request_id)
    if not args.vault_addr and vault_addr.startswith("http://") and not is_loopback(vault_addr):
        out.warn(f"the Vault address from the broker, {vault_addr}, is not https")
    vault = VaultClient(vault_addr, timeout=args.timeout, ssl_context=vault_ssl, namespace=args.vault_namespace)
    summary["vault_addr"] = vault.addr
    # A possible interception (exit 6) is reported to the broker before exiting (broker/incident.py).
    report = {"client": client, "make_proof": proof.make, "out": out}
    if args.agent_dir:
        # The secret ID stays wrapped: the Agent checks its creation path again and unwraps it.
        role_id = reporting(lambda: unwrap_role_id_for_agent(vault, issued, mount=mount), **report)
        out.add_secrets(role_id)
        role_path, secret_path = write_approle_files(args.agent_dir, role_id, issued.secret_id_wrap.token)
        ttl = issued.secret_id_wrap.ttl
        summary.update(handoff="agent-dir", role_id_file=os.path.abspath(role_path),
                       secret_id_file=os.path.abspath(secret_path), secret_id_wrap_ttl=ttl)
        out.info(f"wrapping tokens checked; wrote {role_path} and the secret ID's wrapping token to "
                 f"{secret_path}: start the Agent now, it must unwrap it within "
                 f"{f'{ttl} s' if ttl else 'the wrap TTL'}")
        out.result(summary)
        return EXIT_OK
    creds = reporting(lambda: unwrap_credentials(vault, issued, mount=mount), **report)
    out.add_secrets(creds.role_id, creds.secret_id)
    summary["secret_id_accessor"] = creds.secret_id_accessor
    out.info(f"wrapping tokens checked and unwrapped (secret ID accessor {creds.secret_id_accessor})")

    if args.out_dir:
        role_path, secret_path = write_approle_files(args.out_dir, creds.role_id, creds.secret_id)
        summary.update(handoff="out-dir", role_id_file=os.path.abspath(role_path),
                       secret_id_file=os.path.abspath(secret_path))
        out.info(f"wrote {role_path} and {secret_path}")
        out.result(summary)
        return EXIT_OK

    login = vault.approle_login(creds.role_id, creds.secret_id, mount=mount)
    out.add_secrets(login.client_token)
    summary.update(token_accessor=login.accessor, token_ttl=login.lease_duration,
                   token_policies=list(login.policies))
    out.info(f"logged in to Vault (token accessor {login.accessor}, ttl {login.lease_duration}s)")
    from broker.token_registration import register_token  # so a revocation reaches this token at once

    summary["token_registered"] = register_token(client, proof.make, issued.request_id, login.accessor, out)
    if args.sink:
        path = write_sink(args.sink, login.client_token)
        summary.update(handoff="sink", sink=path)
        out.info(f"wrote the token to {path}")
        out.result(summary)
        return EXIT_OK

    summary.update(handoff="exec", command=command[0])
    out.info(f"exec {command[0]}")
    out.result(summary)
    out.flush()
    extra_env = {}
    if args.vault_namespace:
        extra_env["VAULT_NAMESPACE"] = args.vault_namespace
    if args.vault_ca_cert:
        extra_env["VAULT_CACERT"] = args.vault_ca_cert
    exec_with_token(command, token=login.client_token, vault_addr=vault.addr, extra_env=extra_env)
    return EXIT_OK  # pragma: no cover - exec does not return


# ---- policy ---------------------------------------------------------------------------


def _find_checkout() -> str | None:
    """The nearest directory, from the current one upwards, that holds chalicelib/rules.py."""
    directory = os.path.abspath(os.getcwd())
    while True:
        if os.path.isfile(os.path.join(directory, "chalicelib", "policy", "__init__.py")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _import_policy_modules() -> tuple[Any, Any]:
    """``chalicelib.policy`` (the rules engine) and ``chalicelib.methods`` (each method's
    facts and conditions), imported lazily from the checkout."""
    import importlib

    def attempt() -> tuple[Any, Any]:
        return importlib.import_module("chalicelib.policy"), importlib.import_module("chalicelib.methods")

    try:
        return attempt()
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("chalicelib"):
            raise
    checkout = _find_checkout()
    if checkout is not None and checkout not in sys.path:
        sys.path.insert(0, checkout)
        for name in [m for m in sys.modules if m == "chalicelib" or m.startswith("chalicelib.")]:
            del sys.modules[name]
        try:
            return attempt()
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("chalicelib"):
                raise
    raise UsageError(
        "the policy commands need the broker's rules engine (chalicelib/policy/), which is not installed "
        "with the client: run them from inside a checkout of the broker repository"
    )


def _default_rules_file() -> str:
    base = _find_checkout() or os.getcwd()
    for candidate in ("chalicelib/policies/rules.toml", "policies/rules.toml"):
        path = os.path.join(base, candidate)
        if os.path.isfile(path):
            return path
    return os.path.join(base, "chalicelib/policies/rules.toml")


def _load_rules(rules_mod: Any, path: str) -> Any:
    try:
        return rules_mod.load_rules(path)
    except rules_mod.RulesError as exc:
        raise RulesInvalidError(f"invalid rules: {exc}") from None


def cmd_policy_check(args: argparse.Namespace, out: Output) -> int:
    rules_mod, _ = _import_policy_modules()
    ruleset = _load_rules(rules_mod, args.file)
    rules = list(getattr(ruleset, "rules", ()))
    names = [getattr(r, "name", str(r)) for r in rules]
    roles = sorted({getattr(r, "role", "") for r in rules} - {""})
    warnings = rules_mod.warnings(ruleset)
    if not out.json_mode:
        print(f"{args.file}: OK, {len(rules)} rule(s) for role(s) {', '.join(roles) or '(none)'}",
              file=out.stderr if out.quiet else out.stdout)
        for warning in warnings:
            print(f"warning: {warning}", file=out.stderr)
    out.result({"status": "ok", "file": args.file, "rules": names, "roles": roles, "warnings": warnings})
    return EXIT_OK


def cmd_policy_explain(args: argparse.Namespace, out: Output) -> int:
    rules_mod, facts_mod = _import_policy_modules()
    rules_path = args.rules or _default_rules_file()
    ruleset = _load_rules(rules_mod, rules_path)
    try:
        if args.facts == "-":
            raw = json.load(sys.stdin)
        else:
            with open(args.facts, encoding="utf-8") as f:
                raw = json.load(f)
    except OSError as exc:
        raise RulesInvalidError(f"cannot read the facts file {args.facts}: {exc.strerror}") from None
    except ValueError as exc:
        raise RulesInvalidError(f"the facts file {args.facts} is not JSON: {exc}") from None
    fact_errors: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError)
    try:
        from chalicelib.errors import BrokerError  # type: ignore[import-not-found]

        fact_errors += (BrokerError,)
    except ImportError:
        pass
    if isinstance(raw, dict) and isinstance(raw.get("event"), dict):
        raw = raw["event"]  # `broker audit show --json` prints {"event": record, ...}
    if isinstance(raw, dict) and "request_id" in raw and isinstance(raw.get("facts"), dict):
        # An audit record as it is: its facts, read by its own method.
        raw = dict(raw["facts"], method=raw.get("method") or raw["facts"].get("method", "aws"))
    try:
        facts = facts_mod.facts_from_dict(raw)
    except fact_errors as exc:
        raise RulesInvalidError(f"invalid facts in {args.facts}: {exc}") from None

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


# ---- vault setup -------------------------------------------------------------------------


def vault_admin_session(args: argparse.Namespace, out: Output):
    """The Vault client (token from the environment) and the Secrets Manager client that
    `vault setup` and `vault rotate-broker-secret` work with, after checking their arguments."""
    from broker.vault_setup import Vault, vault_token_from_env

    if not args.vault_addr:
        raise UsageError("missing --vault-addr/VAULT_ADDR")
    if not args.secret:
        raise UsageError("missing --secret/BROKER_VAULT_SECRET_ID_SECRET (where the broker's secret ID is kept)")
    if not args.aws_region:
        raise UsageError("missing --aws-region/AWS_REGION (the region of the secret)")
    token = vault_token_from_env()
    out.add_secrets(token)
    vault = Vault(args.vault_addr, token or "", namespace=args.vault_namespace,
                  ssl_context=_ssl_context(args.vault_ca_cert, "Vault"))
    try:
        import botocore.session
    except ImportError:
        raise UsageError("the broker's secret ID is kept in Secrets Manager, which needs botocore: "
                         "pip install 'secret-zero-broker[aws]'") from None
    secrets_client = botocore.session.get_session().create_client(
        "secretsmanager", region_name=args.aws_region, endpoint_url=args.aws_endpoint_url)
    return vault, secrets_client


def cmd_vault_setup(args: argparse.Namespace, out: Output) -> int:
    from broker.vault_setup import served_roles, setup

    vault, secrets_client = vault_admin_session(args, out)
    checkout = _find_checkout() or os.getcwd()
    rules_path = args.rules or _default_rules_file()
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


# ---- entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``broker`` and ``python -m broker`` exit with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command_argv: list[str] = []
    parse_argv = argv
    if "--" in argv:
        index = argv.index("--")
        parse_argv, command_argv = argv[:index], argv[index + 1:]
    parser = build_parser()
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
    except InterceptionError as exc:
        out.alarm(str(exc))
        out.result(_error_summary(exc, accessor=exc.accessor))
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


def _error_summary(exc: ClientError, accessor: str | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": "error",
        "exit_code": exc.exit_code,
        "error": type(exc).__name__,
        "message": exc.message,
        "request_id": exc.request_id,
    }
    if accessor:
        summary["accessor"] = accessor
    if getattr(exc, "incident", None):
        summary["incident"] = exc.incident  # the report of a possible interception to the broker
    code = getattr(exc, "code", None)
    if code:
        summary["code"] = code
    return summary
