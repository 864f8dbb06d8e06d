"""One stage's deployment values (deploy/STAGE.toml): read, checked, and turned into what
the packages and .chalice/config.json need.

The values file holds only what a deployer must choose (Vault address, the broker's
AppRole role ID, server ID, the VPC endpoints that may call the API, the Google
audience, the reader role of each member account, alarm settings). Everything that
follows from the stage (table, secret and log group names) is derived here, so it
is written nowhere else.

`placeholders(values)` lists every value that is still one of the repository's
examples; `make package` refuses to build while there is one, unless
ALLOW_PLACEHOLDERS=1.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROJECT = Path(__file__).resolve().parent.parent
APP_NAME = "secret-zero-broker"
DEFAULT_READER_ROLE = "secret-zero-reader"

# The repository's example values: a deployment that still carries one would not work
# (or worse, would trust an example account). Names of the values are in the messages.
EXAMPLE_ROLE_ID = "set-me-from-broker-vault-setup"
EXAMPLE_VPC_ENDPOINTS = frozenset({"vpce-0123456789abcdef0", "vpce-0fedcba9876543210"})
# moto's default account, the local stack's second account, and AWS documentation's
# usual example IDs
EXAMPLE_ACCOUNTS = frozenset({"123456789012", "210987654321", "111122223333", "444455556666",
                              "111111111111", "222222222222", "000000000000"})
# RFC 2606 / RFC 6761 names reserved for examples, and this repository's "example.internal"
_EXAMPLE_HOST = re.compile(r"(^|\.)(example\.(com|net|org|internal)|example|invalid|test|localhost)$")
_EXAMPLE_WORD = re.compile(r"example|placeholder|set-me|changeme|change-me|todo", re.IGNORECASE)

_ACCOUNT = re.compile(r"\d{12}")
_VPCE = re.compile(r"vpce-[0-9a-f]{8,17}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
_ENV_NAME = re.compile(r"BROKER_[A-Z0-9_]+|GOOGLE_APPLICATION_CREDENTIALS")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
# what the values file sets through its own keys: not again through [environment]
_DERIVED_ENV = {"BROKER_VAULT_ADDR", "BROKER_VAULT_ROLE_ID", "BROKER_VAULT_SECRET_ID_SECRET",
                "BROKER_REVOKER_ROLE_ID", "BROKER_REVOKER_SECRET_ID_SECRET",
                "BROKER_SERVER_ID", "BROKER_AUDIT_TABLE", "BROKER_REPLAY_TABLE",
                "BROKER_QUARANTINE_TABLE", "BROKER_LOG_LEVEL", "BROKER_GCP_AUDIENCE",
                "BROKER_ACCOUNT_READERS"}


class ValuesError(ValueError):
    """The values file is unusable: the message names the file and the key."""


@dataclass(frozen=True)
class Reader:
    account: str
    role_arn: str
    external_id: str


@dataclass(frozen=True)
class Thresholds:
    """Alarm thresholds (docs/operations.md, "Alarms and the dashboard", says why these)."""

    api_5xx_per_5min: int = 5
    invalid_proof_per_5min: int = 20
    proof_replayed_per_5min: int = 5
    quarantined_per_5min: int = 1
    p99_latency_ms: int = 15000
    lambda_errors_per_5min: int = 1
    lambda_throttles_per_min: int = 1
    dynamodb_throttles_per_5min: int = 1
    rules_rejected_per_5min: int = 1
    rules_rollback_per_5min: int = 1
    rules_source_unavailable_per_5min: int = 1
    identity_budget_exhausted_per_5min: int = 5
    principal_budget_exhausted_per_5min: int = 1
    trust_policy_changed_per_5min: int = 1


@dataclass(frozen=True)
class Values:
    path: Path
    stage: str
    vault_addr: str
    vault_role_id: str
    server_id: str
    log_level: str
    endpoint_type: str | None  # None: Chalice's default (EDGE)
    vpc_endpoints: tuple[str, ...]
    throttle_rate_limit: int
    throttle_burst_limit: int
    gcp_audience: str | None
    readers: tuple[Reader, ...]
    alarm_topic_arn: str | None
    thresholds: Thresholds
    log_retention_days: int
    extra_env: dict[str, str] = field(default_factory=dict)
    # The revoking identity's role ID (`broker vault setup` creates it and stores its secret
    # ID beside the broker's); None: revocations reach no Vault token (complete: false).
    revoker_role_id: str | None = None

    # ---- derived names (one place: deploy/resources.yaml and the IAM policy follow them) ----
    @property
    def function_name(self) -> str:
        return f"{APP_NAME}-{self.stage}"

    @property
    def role_name(self) -> str:
        """The function's execution role: the reader roles (and Google's workload identity
        condition) trust it by this name. It is the name `chalice deploy` gives it
        (APP-STAGE-FUNCTION, with a policy file), so every way of deploying agrees."""
        return f"{APP_NAME}-{self.stage}-api_handler"

    def table(self, kind: str) -> str:
        return f"{APP_NAME}-{self.stage}-{kind}"

    @property
    def secret_name(self) -> str:
        return f"{APP_NAME}/{self.stage}/vault-secret-id"

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def environment(self) -> dict[str, str]:
        """The function's environment variables (.chalice/config.json's stage block)."""
        env = {
            "BROKER_VAULT_ADDR": self.vault_addr,
            "BROKER_VAULT_ROLE_ID": self.vault_role_id,
            "BROKER_VAULT_SECRET_ID_SECRET": self.secret_name,
            **({"BROKER_REVOKER_ROLE_ID": self.revoker_role_id,
                "BROKER_REVOKER_SECRET_ID_SECRET": f"{self.secret_name}-revoker"} if self.revoker_role_id else {}),
            "BROKER_SERVER_ID": self.server_id,
            "BROKER_AUDIT_TABLE": self.table("audit"),
            "BROKER_REPLAY_TABLE": self.table("replay"),
            "BROKER_QUARANTINE_TABLE": self.table("quarantine"),
            "BROKER_LOG_LEVEL": self.log_level,
        }
        if self.gcp_audience:
            env["BROKER_GCP_AUDIENCE"] = self.gcp_audience
        if self.readers:
            env["BROKER_ACCOUNT_READERS"] = self.account_readers_json()
        env.update(self.extra_env)
        return env

    def account_readers_json(self) -> str:
        return json.dumps({r.account: {"role_arn": r.role_arn, "external_id": r.external_id}
                           for r in self.readers}, sort_keys=True, separators=(",", ":"))

    def api_policy(self) -> dict | None:
        """The private API's resource policy: only the listed VPC endpoints may call."""
        if self.endpoint_type != "PRIVATE":
            return None
        endpoints = list(self.vpc_endpoints)
        statement = {"Principal": "*", "Action": "execute-api:Invoke", "Resource": "execute-api:/*"}
        return {"Version": "2012-10-17", "Statement": [
            {"Sid": "DenyOutsideTheListedVpcEndpoints", "Effect": "Deny", **statement,
             "Condition": {"StringNotEquals": {"aws:SourceVpce": endpoints}}},
            {"Sid": "AllowThroughTheListedVpcEndpoints", "Effect": "Allow", **statement,
             "Condition": {"StringEquals": {"aws:SourceVpce": endpoints}}},
        ]}


def shown(path: Path) -> str:
    """The path as a deployer would type it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)


def values_file(stage: str) -> Path:
    return PROJECT / "deploy" / f"{stage}.toml"


def load(stage: str, path: Path | str | None = None) -> Values:
    path = Path(path) if path else values_file(stage)
    if not path.is_file():
        raise ValuesError(f"{path}: no values file for stage {stage!r} (copy deploy/prod.toml)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValuesError(f"{path}: not TOML: {e}") from None
    return _parse(path, stage, doc)


def _parse(path: Path, stage: str, doc: dict) -> Values:
    where = shown(path)

    def fail(key, why):
        raise ValuesError(f"{where}: {key}: {why}")

    def table(name):
        value = doc.get(name, {})
        if not isinstance(value, dict):
            fail(name, "must be a table")
        return value

    def string(tbl, tname, key, *, required=True, default=None):
        value = tbl.get(key, default)
        if value is None or value == "":
            if required:
                fail(f"{tname}.{key}", "is required")
            return None
        if not isinstance(value, str) or value != value.strip():
            fail(f"{tname}.{key}", "must be a string without surrounding spaces")
        return value

    def integer(tbl, tname, key, default, low, high):
        value = tbl.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            fail(f"{tname}.{key}", f"must be a whole number from {low} to {high}")
        return value

    known = {"stage", "vault", "broker", "api", "gcp", "account_readers", "alarms", "environment", "logs"}
    unknown = sorted(set(doc) - known)
    if unknown:
        fail(", ".join(unknown), f"unknown key (known: {', '.join(sorted(known))})")
    if doc.get("stage") != stage:
        fail("stage", f"must be {stage!r} (the file's stage), not {doc.get('stage')!r}")

    vault, broker, api, gcp, alarms, logs = (table(n) for n in ("vault", "broker", "api", "gcp", "alarms", "logs"))
    vault_addr = string(vault, "vault", "addr")
    parts = urlsplit(vault_addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail("vault.addr", "must be an http(s) URL")
    if parts.scheme != "https" and stage == "prod":
        fail("vault.addr", "must be https in prod")
    log_level = string(broker, "broker", "log_level", default="INFO").upper()
    if log_level not in _LOG_LEVELS:
        fail("broker.log_level", f"one of {', '.join(sorted(_LOG_LEVELS))}")

    endpoint_type = string(api, "api", "endpoint_type", required=False)
    if endpoint_type not in (None, "PRIVATE", "REGIONAL", "EDGE"):
        fail("api.endpoint_type", "PRIVATE, REGIONAL or EDGE")
    vpc_endpoints = api.get("vpc_endpoints", [])
    if not isinstance(vpc_endpoints, list) or not all(isinstance(v, str) and _VPCE.fullmatch(v)
                                                      for v in vpc_endpoints):
        fail("api.vpc_endpoints", "must be a list of VPC endpoint IDs (vpce-...)")
    if endpoint_type == "PRIVATE" and not vpc_endpoints:
        fail("api.vpc_endpoints", "a PRIVATE API needs at least one VPC endpoint")
    if endpoint_type != "PRIVATE" and vpc_endpoints:
        fail("api.vpc_endpoints", "only a PRIVATE API is called through VPC endpoints")
    rate = integer(api, "api", "throttle_rate_limit", 100, 1, 10000)
    burst = integer(api, "api", "throttle_burst_limit", 50, 1, 5000)

    readers = []
    rows = doc.get("account_readers", [])
    if not isinstance(rows, list):
        fail("account_readers", "must be an array of tables ([[account_readers]])")
    for i, row in enumerate(rows):
        name = f"account_readers[{i}]"
        if not isinstance(row, dict) or set(row) - {"account", "role_arn", "external_id"}:
            fail(name, "keys: account, external_id, role_arn (optional)")
        account = row.get("account")
        if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
            fail(f"{name}.account", "a 12-digit AWS account ID, as a string")
        if any(r.account == account for r in readers):
            fail(f"{name}.account", f"{account} is listed twice")
        role_arn = row.get("role_arn") or f"arn:aws:iam::{account}:role/{DEFAULT_READER_ROLE}"
        m = _ROLE_ARN.fullmatch(role_arn) if isinstance(role_arn, str) else None
        if not m or m.group(1) != account:
            fail(f"{name}.role_arn", f"must be a role ARN in account {account}")
        external_id = row.get("external_id")
        if not isinstance(external_id, str) or not _EXTERNAL_ID.fullmatch(external_id):
            fail(f"{name}.external_id", "2-1224 characters of [A-Za-z0-9+=,.@:/_-]")
        readers.append(Reader(account, role_arn, external_id))

    env = table("environment")
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key) or not isinstance(value, str):
            fail(f"environment.{key}", "names are BROKER_* (or GOOGLE_APPLICATION_CREDENTIALS), values strings")
        if key in _DERIVED_ENV:
            fail(f"environment.{key}", "is set by the values file's own keys (or derived from the stage)")

    topic = string(alarms, "alarms", "sns_topic_arn", required=False)
    if topic and not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}", topic):
        fail("alarms.sns_topic_arn", "must be an SNS topic ARN (or empty: alarms without actions)")
    given = alarms.get("thresholds", {})
    defaults = Thresholds()
    if not isinstance(given, dict) or set(given) - set(defaults.__dict__):
        fail("alarms.thresholds", f"known keys: {', '.join(defaults.__dict__)}")
    thresholds = Thresholds(**{k: integer(given, "alarms.thresholds", k, v, 1, 10**6)
                               for k, v in defaults.__dict__.items()})
    retention = integer(logs, "logs", "retention_days", 400, 1, 3653)
    if retention not in LOG_RETENTION_DAYS:
        fail("logs.retention_days", f"one of CloudWatch Logs' retentions: {', '.join(map(str, LOG_RETENTION_DAYS))}")

    return Values(
        path=path, stage=stage, vault_addr=vault_addr,
        vault_role_id=string(vault, "vault", "role_id"),
        revoker_role_id=string(vault, "vault", "revoker_role_id", required=False),
        server_id=string(broker, "broker", "server_id"),
        log_level=log_level, endpoint_type=endpoint_type, vpc_endpoints=tuple(vpc_endpoints),
        throttle_rate_limit=rate, throttle_burst_limit=burst,
        gcp_audience=string(gcp, "gcp", "audience", required=False),
        readers=tuple(readers), alarm_topic_arn=topic, thresholds=thresholds,
        log_retention_days=retention, extra_env=dict(env),
    )


# ---- placeholders ----------------------------------------------------------------------------


def placeholders(values: Values) -> list[str]:
    """Every value that is still one of the repository's examples, each named with its key."""
    found = []

    def flag(key, value, why):
        found.append(f"{key} = {value!r}: {why}")

    if values.vault_role_id == EXAMPLE_ROLE_ID or _EXAMPLE_WORD.search(values.vault_role_id):
        flag("vault.role_id", values.vault_role_id,
             "placeholder; `vault read -field=role_id auth/approle/role/secret-zero-broker/role-id`")
    if values.revoker_role_id and (values.revoker_role_id == EXAMPLE_ROLE_ID
                                   or _EXAMPLE_WORD.search(values.revoker_role_id)):
        flag("vault.revoker_role_id", values.revoker_role_id,
             "placeholder; `vault read -field=role_id auth/approle/role/secret-zero-revoker/role-id`")
    host = urlsplit(values.vault_addr).hostname or ""
    if _EXAMPLE_HOST.search(host):
        flag("vault.addr", values.vault_addr, "example host name")
    if _EXAMPLE_HOST.search(values.server_id) or _EXAMPLE_WORD.search(values.server_id):
        flag("broker.server_id", values.server_id, "example name; choose one unique to this deployment")
    for v in values.vpc_endpoints:
        if v in EXAMPLE_VPC_ENDPOINTS:
            flag("api.vpc_endpoints", v, "example VPC endpoint ID")
    if values.gcp_audience:
        audience_host = urlsplit(values.gcp_audience).hostname or values.gcp_audience
        if _EXAMPLE_HOST.search(audience_host) or _EXAMPLE_WORD.search(values.gcp_audience):
            flag("gcp.audience", values.gcp_audience, "example audience")
    for i, r in enumerate(values.readers):
        if r.account in EXAMPLE_ACCOUNTS:
            flag(f"account_readers[{i}].account", r.account, "example account ID")
        if _EXAMPLE_WORD.search(r.external_id) or r.external_id == "secret-zero-local":
            flag(f"account_readers[{i}].external_id", r.external_id,
                 "example external ID; choose a value unique to this broker and account")
    if values.alarm_topic_arn:
        account = values.alarm_topic_arn.split(":")[4]
        if account in EXAMPLE_ACCOUNTS:
            flag("alarms.sns_topic_arn", values.alarm_topic_arn, "example account ID")
    for key, value in values.extra_env.items():
        if _EXAMPLE_WORD.search(value) or _EXAMPLE_HOST.search(urlsplit(value).hostname or ""):
            flag(f"environment.{key}", value, "example value")
    return found
