"""``broker login``: prove this machine's identity, receive, check, unwrap, hand on."""

from __future__ import annotations

import argparse
import re
from typing import Any, Dict, List

from broker.cli.common import Output, env, exit_code_epilog, positive_float, positive_int
from broker.errors import EXIT_OK, UsageError

ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

EPILOG = (
    "The command of --exec comes after '--', at the end: broker login ... --exec -- CMD ARGS...\n"
    "\n"
    "examples:\n"
    "  broker login --broker-url https://broker.example.com --role web \\\n"
    "      --server-id broker.example.com --vault-addr https://vault.example.com:8200 --agent-dir /run/vault-agent\n"
    "  BROKER_URL=... BROKER_ROLE=batch BROKER_SERVER_ID=... VAULT_ADDR=... broker login --exec -- python job.py\n"
    "  broker login --cloud gcp --broker-url https://broker.example.com --role web --sink /run/vault/token\n"
    "\n" + exit_code_epilog()
)


def add_login_command(sub: Any, common: argparse.ArgumentParser) -> None:
    login = sub.add_parser(
        "login",
        parents=[common],
        help="prove this machine's AWS or GCP identity, receive and unwrap AppRole credentials, hand them on",
        description="Prove this machine's cloud identity (AWS: an sts:GetCallerIdentity signed with the default "
        "credential chain; GCP: the GCE metadata server's identity token), ask the broker for the role, check "
        "and unwrap the wrapped role ID and secret ID at the pinned Vault, and hand them on. Settings come from "
        "flags, else the environment, else the config file (BROKER_CONFIG, default "
        "/etc/secret-zero-broker/client.conf).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = login.add_argument_group("broker")
    g.add_argument("--broker-url", default=env("BROKER_URL"), metavar="URL",
                   help="base URL of the broker, https (http only on loopback) (env BROKER_URL)")
    g.add_argument("--role", default=env("BROKER_ROLE"), help="AppRole to ask for (env BROKER_ROLE)")
    g.add_argument("--server-id", default=env("BROKER_SERVER_ID"), metavar="ID",
                   help="the broker's X-Vault-AWS-IAM-Server-ID value, for the AWS proof (env BROKER_SERVER_ID)")
    g.add_argument("--ca-cert", default=env("BROKER_CA_CERT"), metavar="FILE",
                   help="CA bundle to verify the broker's TLS certificate (env BROKER_CA_CERT)")
    g.add_argument("--timeout", type=positive_float, default=env("BROKER_TIMEOUT", "10"), metavar="SECONDS",
                   help="timeout of each HTTP request (default 10; env BROKER_TIMEOUT)")
    g.add_argument("--max-attempts", type=positive_int, default=env("BROKER_MAX_ATTEMPTS", "6"), metavar="N",
                   help="attempts at the broker, each with a fresh proof (default 6; env BROKER_MAX_ATTEMPTS)")
    g.add_argument("--max-wait", type=positive_float, default=env("BROKER_MAX_WAIT", "120"), metavar="SECONDS",
                   help="give up retrying after this long; a Retry-After that does not fit stops the client at "
                   "once (default 120; env BROKER_MAX_WAIT)")
    g.add_argument("--cloud", choices=("auto", "aws", "gcp"), default=env("BROKER_CLOUD", "auto"),
                   help="which cloud proves this machine's identity (default auto: AWS credentials without "
                   "IMDS, else a GCE metadata server, else EC2 IMDS; env BROKER_CLOUD)")

    gcp = login.add_argument_group("GCP proof")
    gcp.add_argument("--audience", default=env("BROKER_GCP_AUDIENCE"), metavar="AUD",
                     help="audience of the identity token (default: the broker URL; env BROKER_GCP_AUDIENCE)")
    gcp.add_argument("--metadata-url", default=env("BROKER_GCP_METADATA_URL"), metavar="URL",
                     help="base URL of the GCE metadata server (default http://metadata.google.internal; "
                     "env BROKER_GCP_METADATA_URL)")

    a = login.add_argument_group("AWS proof")
    a.add_argument("--sts-url", default=env("BROKER_STS_URL", "https://sts.amazonaws.com/"), metavar="URL",
                   help="STS endpoint the proof is signed for (default https://sts.amazonaws.com/; "
                   "env BROKER_STS_URL); the broker must accept it")
    a.add_argument("--sts-region", default=env("BROKER_STS_REGION"), metavar="REGION",
                   help="SigV4 region (default: from a regional --sts-url, else us-east-1; env BROKER_STS_REGION)")

    v = login.add_argument_group("Vault")
    v.add_argument("--vault-addr", default=env("VAULT_ADDR"), metavar="URL",
                   help="the Vault address this machine trusts (env VAULT_ADDR): an answer of the broker naming "
                   "another one is refused (exit 6). Not pinned: the broker's, if https")
    v.add_argument("--allow-insecure-vault", action="store_true",
                   help="nothing pinned: accept an http:// Vault address from the broker on loopback (local stacks)")
    v.add_argument("--vault-ca-cert", default=env("VAULT_CACERT"), metavar="FILE",
                   help="CA bundle to verify Vault's TLS certificate (env VAULT_CACERT)")
    v.add_argument("--vault-namespace", default=env("VAULT_NAMESPACE"), metavar="NS",
                   help="Vault Enterprise namespace (env VAULT_NAMESPACE)")
    v.add_argument("--approle-mount", default=env("BROKER_APPROLE_MOUNT", "approle"), metavar="PATH",
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


def _choose_handoff(args: argparse.Namespace, out: Output) -> Any:
    from broker.handoffs import AgentDir, Exec, OutDir, Sink

    command: List[str] = list(args.command_argv or [])
    if not (args.out_dir or args.agent_dir or args.sink or args.exec_):
        raise UsageError("choose a hand-off: --out-dir DIR, --agent-dir DIR, --sink FILE or --exec -- CMD ARGS...")
    if args.exec_ and not command:
        raise UsageError("--exec needs a command after '--': broker login ... --exec -- CMD ARGS...")
    if command and not args.exec_:
        raise UsageError("a command after '--' is only used with --exec")
    if args.agent_dir:
        return AgentDir(args.agent_dir)
    if args.out_dir:
        return OutDir(args.out_dir)
    if args.sink:
        return Sink(args.sink)
    extra_env = {}
    if args.vault_namespace:
        extra_env["VAULT_NAMESPACE"] = args.vault_namespace
    if args.vault_ca_cert:
        extra_env["VAULT_CACERT"] = args.vault_ca_cert

    def before_exec(summary: Dict[str, Any]) -> None:
        after = summary.pop("_after_handoff", None)
        if after is not None:
            summary["token_registration"] = "after exec, in a detached process"
        out.result(summary)
        out.flush()
        if after is not None:  # the registration must not wait the exec, nor be lost
            from broker.token_registration import register_in_background

            register_in_background(after, out)

    return Exec(command, extra_env=extra_env, before_exec=before_exec)


def cmd_login(args: argparse.Namespace, out: Output) -> int:
    from broker.api import BrokerClient, RetryPolicy
    from broker.clouds import build_proof_source
    from broker.handoffs import Material
    from broker.http import ssl_context
    from broker.incident import reporting
    from broker.vault import VaultClient, normalize_mount, unwrap_credentials, unwrap_role_id_for_agent
    from broker.vault_trust import check_answer_namespace, check_pinned, trusted_vault_addr

    # Everything that can be checked is checked before anything is signed or issued.
    missing = [flag for flag, value in (("--broker-url/BROKER_URL", args.broker_url),
                                        ("--role/BROKER_ROLE", args.role)) if not value]
    if args.cloud == "aws" and not args.server_id:
        missing.append("--server-id/BROKER_SERVER_ID")
    if missing:
        raise UsageError("missing " + ", ".join(missing))
    if not ROLE_NAME.match(args.role):
        raise UsageError(f"invalid role name {args.role!r}")
    mount = normalize_mount(args.approle_mount)
    handoff = _choose_handoff(args, out)
    problem = handoff.preflight()
    if problem:
        raise UsageError(problem)
    pinned = check_pinned(args.vault_addr)
    client = BrokerClient(
        args.broker_url,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts, max_wait=args.max_wait),
        ssl_context=ssl_context(args.ca_cert, "the broker"),
        log=out.info,
    )
    ssl_context(args.vault_ca_cert, "Vault")  # the CA bundle is checked before anything is issued

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
    summary: Dict[str, Any] = {
        "status": "ok",
        "request_id": issued.request_id,
        "role": issued.role,
        "cloud": proof.cloud,
        "attempts": issued.attempts,
        "role_id_wrap_accessor": issued.role_id_wrap.accessor,
        "secret_id_wrap_accessor": issued.secret_id_wrap.accessor,
    }

    # Which Vault: decided before the answer came (pinned), or an https one, said loudly.
    vault_addr, was_pinned = trusted_vault_addr(pinned, issued, allow_insecure=args.allow_insecure_vault)
    check_answer_namespace(args.vault_namespace, issued)  # and which namespace, likewise
    if not was_pinned:
        out.warn(f"trusting the Vault address named by the broker, {vault_addr}: nothing pinned it "
                 "(pin it with --vault-addr, VAULT_ADDR or the config file)")
    vault = VaultClient(vault_addr, timeout=args.timeout, ca_cert=args.vault_ca_cert, namespace=args.vault_namespace)
    summary.update(vault_addr=vault.addr, vault_namespace=vault.namespace, vault_pinned=was_pinned)
    # A possible interception (exit 6) is reported to the broker before exiting (broker/incident.py).
    report = {"client": client, "make_proof": proof.make, "out": out}

    if handoff.stage == "wrapped":
        # The secret ID stays wrapped: the Agent checks its creation path again and unwraps it.
        role_id = reporting(lambda: unwrap_role_id_for_agent(vault, issued, mount=mount), **report)
        out.add_secrets(role_id)
        material = Material(role_id=role_id, secret_id=issued.secret_id_wrap.token, vault_addr=vault.addr,
                            secret_id_wrap_ttl=issued.secret_id_wrap.ttl, vault_namespace=vault.namespace)
    else:
        creds = reporting(lambda: unwrap_credentials(vault, issued, mount=mount), **report)
        out.add_secrets(creds.role_id, creds.secret_id)
        summary["secret_id_accessor"] = creds.secret_id_accessor
        out.info(f"wrapping tokens checked and unwrapped (secret ID accessor {creds.secret_id_accessor})")
        material = Material(role_id=creds.role_id, secret_id=creds.secret_id, vault_addr=vault.addr,
                            vault_namespace=vault.namespace)
        if handoff.stage == "token":
            login = vault.approle_login(creds.role_id, creds.secret_id, mount=mount)
            out.add_secrets(login.client_token)
            material.token = login.client_token
            summary.update(token_accessor=login.accessor, token_ttl=login.lease_duration,
                           token_policies=list(login.policies))
            out.info(f"logged in to Vault (token accessor {login.accessor}, ttl {login.lease_duration}s)")
            if issued.registration_key:
                out.add_secrets(issued.registration_key)
            register = _registration(client, issued, login.accessor, proof.make, out)
            if handoff.name == "exec":
                summary["_after_handoff"] = register  # Exec's before_exec runs it, detached
    # Nothing between the login and the hand-off: the token reaches its sink or command first.
    handoff.deliver(material, summary, out.info)
    if handoff.stage == "token":
        summary["token_registered"] = register()  # a revocation reaches this token at once
    out.result(summary)
    return EXIT_OK


def _registration(client: Any, issued: Any, accessor: str, make_proof: Any, out: Output) -> Any:
    """The token registration (POST /v1/tokens), to run after the hand-off: by the issuance's
    registration key (no cloud proof), or with a fresh proof from a broker that sent none."""
    from broker.token_registration import register_token

    def register() -> bool:
        return register_token(client, issued.request_id, accessor, out, registration_key=issued.registration_key,
                              make_proof=make_proof)

    return register
