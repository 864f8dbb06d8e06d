"""The security team's commands: ``broker audit search|show``, ``broker revoke`` and
``broker revoke lift``.

Each request carries a fresh signed ``sts:GetCallerIdentity`` proof of the
engineer's own AWS identity (the default credential chain: SSO, profiles,
environment...) in the ``X-Broker-Proof`` header, which the broker checks against
``[security] principal_arns`` of its rules file. The HTTP request itself is also
SigV4-signed for ``execute-api`` with the same credentials, which API Gateway's IAM
authorization checks in the deployed stages (``chalice local`` ignores it).

Output: an aligned table (or key/value lines) by default, ``--json`` or ``--csv``
for tools. Nothing secret is ever printed: audit records hold accessors and
hashes, never tokens or secret IDs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import re
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from broker.cli.common import env as _env
from broker.errors import EXIT_OK, EXIT_UNAVAILABLE, NoCredentialsError, RefusedError, UnavailableError, UsageError
from broker.http import (
    CONNECTION_ERRORS,
    broker_error_fields,
    build_opener,
    check_base_url,
    parse_retry_after,
    request,
    ssl_context,
)

PROOF_HEADER = "X-Broker-Proof"
BINDING_HEADER = "X-Broker-Request"
RETRYABLE = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 3
_RELATIVE = re.compile(r"^(\d+)(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com$")
CSV_COLUMNS = ("time", "outcome", "code", "action", "method", "role", "rule", "principal", "account", "instance",
               "source_ip", "request_id", "related_request_id", "revocation_id", "secret_id_accessor", "reason")
OUTCOMES = ("issued", "denied", "error", "incident", "admin", "registration")
TABLE_COLUMNS = (("TIME", "time"), ("OUTCOME", "outcome"), ("CODE", "code"), ("ROLE", "role"),
                 ("INSTANCE", "instance"), ("PRINCIPAL", "principal"), ("REQUEST ID", "request_id"),
                 ("REASON", "reason"))


# ---- the parser ---------------------------------------------------------------------------


def _connection_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("broker")
    g.add_argument("--broker-url", default=_env("BROKER_URL"), metavar="URL", help="base URL of the broker (env BROKER_URL)")
    g.add_argument("--server-id", default=_env("BROKER_SERVER_ID"), metavar="ID",
                   help="the broker's X-Vault-AWS-IAM-Server-ID value (env BROKER_SERVER_ID)")
    g.add_argument("--ca-cert", default=_env("BROKER_CA_CERT"), metavar="FILE", help="CA bundle for the broker's TLS")
    g.add_argument("--timeout", type=float, default=float(_env("BROKER_TIMEOUT", "30")), metavar="SECONDS",
                   help="timeout of each request (default 30)")
    g.add_argument("--sts-url", default=_env("BROKER_STS_URL", "https://sts.amazonaws.com/"), metavar="URL",
                   help="STS endpoint the proof is signed for (default https://sts.amazonaws.com/)")
    g.add_argument("--sts-region", default=_env("BROKER_STS_REGION"), metavar="REGION", help="SigV4 region of the proof")
    g.add_argument("--api-region", default=_env("BROKER_API_REGION"), metavar="REGION",
                   help="region of the API Gateway request signature (default: from an execute-api URL, "
                   "else AWS_REGION, else us-east-1)")


def add_security_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``audit`` and ``revoke`` on the ``broker`` command's subparsers."""
    audit = sub.add_parser("audit", help="the security team: search and read the broker's audit trail")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    asub.required = True
    search = asub.add_parser(
        "search", parents=[common], help="search the audit trail, newest first",
        description="Search the broker's audit trail. Filters combine with AND. Times are ISO 8601 "
        "(2024-05-01T12:00:00Z) or relative to now (30m, 24h, 7d).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  broker audit search --since 24h --outcome denied\n"
        "  broker audit search --role web --since 7d --all --csv > web.csv\n"
        "  broker audit search --instance i-0123456789abcdef0 --json")
    search.add_argument("--since", default="24h", help="from this time (default 24h ago)")
    search.add_argument("--until", help="up to this time (default now)")
    search.add_argument("--outcome", help="issued, denied, error, incident, admin, registration (comma-separated)")
    search.add_argument("--role", help="the AppRole")
    search.add_argument("--instance", help="an EC2 or GCE instance ID")
    search.add_argument("--principal", help="an STS session ARN, an IAM role/user ARN (all its sessions), "
                        "or a service account email")
    search.add_argument("--method", help="aws, gcp (comma-separated)")
    search.add_argument("--account", help="an AWS account ID or a GCP project ID")
    search.add_argument("--limit", type=int, default=50, help="records per page (default 50, at most 500)")
    search.add_argument("--all", action="store_true", help="follow the pages to the end (one signed proof per page)")
    search.add_argument("--next", dest="cursor", help="continue from a previous page's cursor")
    search.add_argument("--csv", action="store_true", help="CSV on stdout")
    _connection_args(search)
    search.set_defaults(func=cmd_audit_search)

    show = asub.add_parser("show", parents=[common], help="one audit record")
    show.add_argument("request_id", metavar="REQUEST_ID")
    _connection_args(show)
    show.set_defaults(func=cmd_audit_show)

    revoke = sub.add_parser(
        "revoke", parents=[common],
        usage="broker revoke (--instance ID | --principal ARN | --request-id ID) --reason TEXT "
        "[--quarantine DURATION] [options]\n       broker revoke lift REVOCATION_ID [--reason TEXT] [options]",
        help="the security team: destroy what was issued to a target and quarantine it (or: revoke lift ID)",
        description="Destroy every secret ID the broker issued to the target that may still be valid, and "
        "refuse the target (403 quarantined) for the quarantine's duration. `broker revoke lift ID` lifts "
        "a revocation's quarantine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  broker revoke --instance i-0123456789abcdef0 --reason 'IDS alert 4711' --quarantine 24h\n"
        "  broker revoke --principal arn:aws:iam::123456789012:role/demo-batch --reason leak --quarantine 0\n"
        "  broker revoke --request-id 5b1259de-... --reason 'token in a CI log'\n"
        "  broker revoke lift 0f6c3e2a-... --reason reimaged")
    revoke.add_argument("lift", nargs="*", metavar="lift ID", help="lift the quarantine of revocation ID")
    target = revoke.add_mutually_exclusive_group()
    target.add_argument("--instance", help="an EC2 or GCE instance ID")
    target.add_argument("--principal", help="an STS session ARN, an IAM role/user ARN (every session of it), "
                        "or a service account email")
    target.add_argument("--request-id", help="one request (its verified instance, else its principal, is quarantined)")
    revoke.add_argument("--reason", metavar="TEXT",
                        help="why (recorded in the audit trail); required, except for `revoke lift`")
    revoke.add_argument("--quarantine", default="24h", help="how long the target is refused: 30m, 24h, 7d; "
                        "0 for no quarantine (default 24h)")
    revoke.add_argument("--force", action="store_true", help="quarantine a target that matches no issuance and "
                        "no known principal (a misspelt target is refused without it)")
    _connection_args(revoke)
    revoke.set_defaults(func=cmd_revoke)


# ---- the HTTP side ----------------------------------------------------------------------------


def request_binding(method: str, path: str, params: dict[str, str] | None, body: bytes | None) -> str:
    """The X-Broker-Request value the proof signs (the broker's chalicelib/admin_auth.py
    checks the same): method, path, SHA-256 of the sorted query and of the body, a nonce."""
    import hashlib
    import secrets

    query = urlencode(sorted((params or {}).items()))
    return (f"v1;method={method.upper()};path={path};query={hashlib.sha256(query.encode()).hexdigest()};"
            f"body={hashlib.sha256(body or b'').hexdigest()};nonce={secrets.token_hex(16)}")


class SecurityApi:
    """Signed requests to the security routes, with a few retries on 429/5xx and replays."""

    def __init__(self, args: argparse.Namespace, *, credentials: Any = None,
                 sleep: Callable[[float], None] = time.sleep,
                 add_secrets: Callable[..., None] = lambda *values: None) -> None:
        """`add_secrets`: the output's scrubber (broker/cli/common.py), handed each proof's
        signature and session token, the proof header and the request's own signature."""
        from broker.clouds.aws import ProofSigner

        self._add_secrets = add_secrets

        missing = [flag for flag, value in (("--broker-url/BROKER_URL", args.broker_url),
                                            ("--server-id/BROKER_SERVER_ID", args.server_id)) if not value]
        if missing:
            raise UsageError("missing " + ", ".join(missing))
        # https only, but http on loopback (a local stack): the proofs are bearer credentials.
        self.base_url = check_base_url(args.broker_url, "broker URL")
        parts = urlsplit(self.base_url)
        self.timeout = args.timeout
        self._opener = build_opener(ssl_context(args.ca_cert, "the broker"), self.base_url)
        self._credentials = credentials or _credentials()
        self._signer = ProofSigner(args.server_id, sts_url=args.sts_url, region=args.sts_region,
                                   credentials=self._credentials)
        host_region = _EXECUTE_API_HOST.search(parts.hostname or "")
        self._api_region = (args.api_region or (host_region.group(1) if host_region else None)
                            or _env("AWS_REGION") or _env("AWS_DEFAULT_REGION") or "us-east-1")
        self._sleep = sleep

    def _proof(self, method: str, path: str, params: dict[str, str] | None, body: bytes | None) -> str:
        """A fresh proof bound to this one request (method, path, query, body, a random
        nonce): the broker refuses it for any other request, and no two are alike."""
        proof = self._signer.sign({BINDING_HEADER: request_binding(method, path, params, body)})
        header = base64.b64encode(json.dumps(proof.login_fields(), separators=(",", ":")).encode()).decode()
        self._add_secrets(*proof.secret_values(), header)  # never printed, whatever a broker echoes
        return header

    def _signed_request(self, method: str, url: str, body: bytes | None, path: str = "",
                        params: dict[str, str] | None = None) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        headers = {"Accept": "application/json", PROOF_HEADER: self._proof(method, path, params, body)}
        if body is not None:
            headers["Content-Type"] = "application/json"
        aws_request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
        SigV4Auth(self._credentials.get_frozen_credentials(), "execute-api", self._api_region).add_auth(aws_request)
        signed = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in aws_request.headers.items()}
        authorization = signed.get("Authorization") or ""
        self._add_secrets(authorization.rpartition("Signature=")[2] or None, signed.get("X-Amz-Security-Token"))
        return signed

    def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        last = "no attempt"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = self._signed_request(method, url, data, path, params)
            try:
                result = request(self._opener, method, url, data=data, headers=headers, timeout=self.timeout,
                                 max_bytes=16 << 20)
            except CONNECTION_ERRORS as exc:
                last = f"cannot reach the broker: {type(exc).__name__}: {exc}"
                if attempt < MAX_ATTEMPTS:
                    self._sleep(attempt)
                    continue
                raise UnavailableError(last) from None
            status, headers, raw = result.status, result.headers, result.body
            if status == 200:
                try:
                    doc = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise UnavailableError("the broker's answer is not JSON") from None
                if not isinstance(doc, dict):
                    raise UnavailableError("the broker's answer is not a JSON object")
                return doc
            code, message, request_id = broker_error_fields(result)
            if status == 401 and code == "proof_replayed" and attempt < MAX_ATTEMPTS:
                continue  # never expected (each proof has its own nonce): sign a new one
            if status in RETRYABLE and attempt < MAX_ATTEMPTS:
                self._sleep(min(10.0, parse_retry_after(headers.get("retry-after")) or attempt))
                last = f"HTTP {status} {code}: {message}"
                continue
            if 400 <= status < 500:
                raise RefusedError(status, code, message, request_id=request_id)
            raise UnavailableError(f"the broker failed: HTTP {status} {code}: {message}", request_id=request_id)
        raise UnavailableError(f"the broker is unavailable after {MAX_ATTEMPTS} attempts; last: {last}")


def _api(args: argparse.Namespace, out: Any) -> SecurityApi:
    return SecurityApi(args, add_secrets=out.add_secrets)


def _credentials() -> Any:
    try:
        import logging

        import botocore.session  # noqa: F401 - ImportError when botocore is missing

        from broker.clouds.botocore_session import new_session
        from botocore.exceptions import BotoCoreError
    except ImportError:  # pragma: no cover - depends on the install
        raise UsageError("botocore is needed to sign requests (docs/client.md: install)") from None
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        credentials = new_session().get_credentials()
    except BotoCoreError as exc:
        raise NoCredentialsError(f"could not load AWS credentials: {type(exc).__name__}: {exc}") from None
    if credentials is None:
        raise NoCredentialsError("no AWS credentials found: the security commands sign with your own AWS "
                                 "identity (a profile, SSO, environment variables...)")
    return credentials


# ---- times --------------------------------------------------------------------------------------


def to_iso(value: str | None, *, now: datetime | None = None) -> str | None:
    """An ISO 8601 UTC time from ISO 8601 text or a duration ago (30m, 24h, 7d, 2w)."""
    if value is None:
        return None
    value = value.strip()
    now = now or datetime.now(timezone.utc)
    m = _RELATIVE.match(value)
    if m:
        when = now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{value!r} is neither an ISO 8601 time nor a duration like 30m, 24h, 7d") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- output -------------------------------------------------------------------------------------


def short_principal(principal: str | None) -> str:
    """arn:aws:sts::123456789012:assumed-role/demo-node/i-0abc -> 123456789012:demo-node/i-0abc"""
    if not principal:
        return ""
    m = re.match(r"^arn:aws[a-z-]*:(?:sts|iam)::(\d{12}):(?:assumed-role/|role/|user/)?(.+)$", principal)
    return f"{m.group(1)}:{m.group(2)}" if m else principal


def _cell(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    if key == "time" and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key == "principal":
        return short_principal(value)
    if key == "code" and event.get("action") and value == "ok":
        return str(event["action"])
    return "" if value is None else " ".join(str(value).split())


def render_table(events: list[dict[str, Any]], stream: Any, width: int | None = None) -> None:
    if width is None:
        # A terminal's width (or COLUMNS), and no cutting at all where the table goes to a
        # file or a pipe: a cut principal or reason is useless there.
        interactive = hasattr(stream, "isatty") and stream.isatty()
        if interactive or os.environ.get("COLUMNS"):
            width = shutil.get_terminal_size((160, 24)).columns
        else:
            width = sys.maxsize
    rows = [[_cell(e, key) for _, key in TABLE_COLUMNS] for e in events]
    headers = [title for title, _ in TABLE_COLUMNS]
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(len(headers))]
    # Too wide: the reason gives way first (to 10), then the principal (to 20); then it overflows.
    for column, minimum in ((len(widths) - 1, 10), (headers.index("PRINCIPAL"), 20)):
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        if excess > 0:
            widths[column] = max(minimum, widths[column] - excess)
    for row in [headers] + rows:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip(), file=stream)


def render_csv(events: list[dict[str, Any]], stream: Any) -> None:
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    for e in events:
        writer.writerow(["" if e.get(k) is None else (json.dumps(e[k]) if isinstance(e[k], (dict, list)) else e[k])
                         for k in CSV_COLUMNS])


def render_record(event: dict[str, Any], stream: Any) -> None:
    for key in sorted(event, key=lambda k: (CSV_COLUMNS.index(k) if k in CSV_COLUMNS else 99, k)):
        value = event[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:<24} {value}", file=stream)


# ---- the commands --------------------------------------------------------------------------------


def cmd_audit_search(args: argparse.Namespace, out: Any) -> int:
    if args.json and args.csv:
        raise UsageError("choose one of --json and --csv")
    if not 1 <= args.limit <= 500:
        raise UsageError("--limit must be from 1 to 500")
    unknown = sorted({o.strip() for o in (args.outcome or "").split(",")} - set(OUTCOMES) - {""})
    if unknown:  # checked before a proof is signed and spent
        raise UsageError(f"--outcome takes {', '.join(OUTCOMES)} (comma-separated), not {', '.join(unknown)}")
    api = _api(args, out)
    params = {"since": to_iso(args.since), "until": to_iso(args.until), "outcome": args.outcome, "role": args.role,
              "instance": args.instance, "principal": args.principal, "method": args.method,
              "account": args.account, "limit": str(args.limit)}
    params = {k: v for k, v in params.items() if v}
    events: list[dict[str, Any]] = []
    cursor = args.cursor
    pages = 0
    while True:
        doc = api.call("GET", "/v1/audit/events", params=dict(params, **({"next": cursor} if cursor else {})))
        pages += 1
        events += doc.get("events") or []
        cursor = doc.get("next")
        if not (args.all and cursor):
            break
        out.info(f"page {pages}: {len(events)} record(s) so far")
    if args.json:
        print(json.dumps({"events": events, "count": len(events), "next": cursor}, sort_keys=True), file=out.stdout)
    elif args.csv:
        render_csv(events, out.stdout)
    else:
        render_table(events, out.stdout)
        more = f"; more: --next {cursor}" if cursor else ""
        out.info(f"{len(events)} record(s){more}")
    return EXIT_OK


def cmd_audit_show(args: argparse.Namespace, out: Any) -> int:
    request_id = _path_id(args.request_id, "REQUEST_ID")
    doc = _api(args, out).call("GET", f"/v1/audit/events/{request_id}")
    event = doc.get("event") or {}
    if args.json:
        print(json.dumps(event, sort_keys=True), file=out.stdout)
    else:
        render_record(event, out.stdout)
    return EXIT_OK


def _path_id(value: str, what: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F-]{36}", value or ""):
        raise UsageError(f"{what} must be a UUID, got {value!r}")
    return value.lower()


def cmd_revoke(args: argparse.Namespace, out: Any) -> int:
    if args.lift:
        if len(args.lift) != 2 or args.lift[0] != "lift":
            raise UsageError("usage: broker revoke lift REVOCATION_ID [--reason ...], or broker revoke --instance ...")
        if args.instance or args.principal or args.request_id:
            raise UsageError("broker revoke lift takes a revocation ID, not a target")
        return _lift(args, out)
    target = {k: v for k, v in (("instance", args.instance), ("principal", args.principal),
                                ("request_id", args.request_id)) if v}
    if len(target) != 1:
        raise UsageError("name the target: --instance ID, --principal ARN or --request-id ID")
    if not args.reason:
        raise UsageError("--reason is required: it goes into the audit trail")
    body = dict(target, reason=args.reason, quarantine=args.quarantine, **({"force": True} if args.force else {}))
    doc = _api(args, out).call("POST", "/v1/revocations", body=body)
    if args.json:
        print(json.dumps(doc, sort_keys=True), file=out.stdout)
    else:
        stream = out.stdout
        kind, value = next(iter(doc.get("target", target).items()))
        print(f"revocation {doc.get('revocation_id')}: {kind} {value}", file=stream)
        destroyed = doc.get("destroyed") or []
        if destroyed:
            rows = [dict(d, wrapping=_wrapping(d), tokens=_tokens(d)) for d in destroyed]
            render_plain(rows, ("request_id", "role", "secret_id_accessor", "result", "wrapping", "tokens"), stream)
        else:
            print("nothing issued to it may still be in use", file=stream)
        for note in doc.get("covers") or []:
            print(f"also covered: {note}", file=stream)
        for q in doc.get("quarantine") or []:
            (qk, qv), = q["target"].items()
            print(f"quarantined: {qk} {qv} until {q['until']} (revocation {q['revocation_id']})", file=stream)
        if not doc.get("quarantine"):
            print("no quarantine", file=stream)
        print(f"audit record: {doc.get('request_id')}", file=stream)
    if not doc.get("complete", True):
        out.error("the revocation is not complete: " + "; ".join(doc.get("problems") or ["see 'failed'"]))
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _wrapping(entry: dict[str, Any]) -> str:
    """The wrapping tokens' fate in one cell: "revoked/used or expired" (role ID's/secret ID's)."""
    wraps = entry.get("wrapping_tokens") or {}
    return "/".join(str(wraps.get(k, "-")) for k in ("role_id", "secret_id"))


def _tokens(entry: dict[str, Any]) -> str:
    tokens = entry.get("tokens")
    if not isinstance(tokens, list):
        return str(tokens or "-")
    if not tokens:
        return "none found"
    results: dict[str, int] = {}
    for t in tokens:
        results[t.get("result", "?")] = results.get(t.get("result", "?"), 0) + 1
    return ", ".join(f"{n} {result}" for result, n in results.items())


def render_plain(rows: list[dict[str, Any]], keys: tuple[str, ...], stream: Any) -> None:
    table = [[k.upper().replace("_", " ") for k in keys]] + [[str(r.get(k) or "") for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    for row in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=stream)


def _lift(args: argparse.Namespace, out: Any) -> int:
    revocation_id = _path_id(args.lift[1], "the revocation ID")
    body = {"reason": args.reason} if args.reason else None
    doc = _api(args, out).call("DELETE", f"/v1/revocations/{revocation_id}", body=body)
    if args.json:
        print(json.dumps(doc, sort_keys=True), file=out.stdout)
    else:
        for t in doc.get("lifted") or []:
            (k, v), = t.items()
            print(f"lifted: {k} {v}", file=out.stdout)
        for q in doc.get("still_quarantined") or []:
            (k, v), = q["target"].items()
            print(f"still quarantined: {k} {v} until {q['until']} by revocation {q['revocation_id']}", file=out.stdout)
        if not doc.get("lifted") and not doc.get("still_quarantined"):
            print("nothing to lift (already lifted or expired)", file=out.stdout)
        print(f"audit record: {doc.get('request_id')}", file=out.stdout)
    return EXIT_OK


__all__ = ["add_security_commands", "SecurityApi"]
