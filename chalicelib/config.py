"""The broker's settings, read from environment variables and validated once at start.

A bad setting raises ConfigError naming the variable, so a misconfigured
deployment fails loudly at its first request instead of misbehaving later.
The table of variables is in docs/architecture.md and the README.
"""

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RULES_FILE = os.path.join(_HERE, "policies", "rules.toml")


@dataclass(frozen=True)
class Settings:
    vault_addr: str
    vault_public_addr: str
    vault_role_id: str = field(repr=False)  # half of the broker's Vault login: never in a repr
    vault_secret_id_secret: str
    vault_approle_mount: str
    vault_timeout: float
    aws_endpoint_url: str | None
    aws_region: str
    audit_table: str
    replay_table: str
    rules_file: str
    audit_retention_days: int
    log_level: str
    # Each proof method's own settings ({name: settings}); a method whose settings are
    # None is not enabled (GCP: no BROKER_GCP_AUDIENCE). See chalicelib/methods/*/settings.py.
    methods: dict = field(default_factory=dict)
    # Optional (None: off). Revocation, quarantine and the incident rate limit need the table.
    quarantine_table: str | None = None
    vault_audit_hash_path: str | None = None  # an audit device's path, e.g. "file": `audit show` asks sys/audit-hash/<path>
    # The revoking identity (chalicelib/revoker.py): its own AppRole, used only by the revocation route.
    # Unset: revocations destroy secret IDs with the issuing identity and reach no Vault token.
    revoker_role_id: str | None = field(default=None, repr=False)  # the revoker's, likewise
    revoker_secret_id_secret: str | None = None
    token_max_ttl: int = 86400  # the served roles' longest token lifetime: how far back a revocation looks
    revocation_settle_seconds: float = 3.0  # the second sweep runs this long after the quarantine
    token_scan_seconds: float = 12.0  # a revocation's scans of every token accessor stop after this long
    rules_source: tuple = None  # (kind, location): chalicelib/rules_source.py; None: the rules file
    rules_refresh: float = 60.0  # seconds between reads of a remote rules source (0: never)
    # BROKER_RULES_ALLOW_SERIAL: the one rules serial the broker applies although it applied a
    # higher one (going back on purpose, chalicelib/rules_source.py); None: never below the mark.
    rules_allow_serial: int | None = None
    # BROKER_VAULT_NAMESPACE: the Vault namespace every Vault object of the broker lives in (its
    # AppRole, the served roles, the revoker), sent as X-Vault-Namespace; None: the root namespace.
    vault_namespace: str | None = None

    # A revocation's second sweep (settle seconds after its quarantine) must see every
    # issuance that got past the quarantine before it landed. One third of the settle time
    # for the audit indexes to show a record, and two thirds for the issuance: the reads it
    # relied on until its record is written (a shared key's kept read counts from the
    # login's own read of the quarantine epoch that vouched for it; where the table has no
    # epoch yet, the read itself, up to a third old).
    # An issuance outside its window reads its quarantine keys again and takes itself back
    # if they refuse it (chalicelib/pipeline/issuance.py).
    @property
    def shared_quarantine_read_seconds(self):
        return self.revocation_settle_seconds / 3

    @property
    def issuance_window_seconds(self):
        return self.revocation_settle_seconds * 2 / 3

    def __getattr__(self, name):
        """A method's settings by its registry name (`settings.aws`), None when it is off."""
        from .methods import REGISTRY

        methods = self.__dict__.get("methods")
        if methods is not None and name in REGISTRY:
            return methods.get(name)
        raise AttributeError(name)

    @classmethod
    def from_env(cls, env=None):
        from .methods import settings_from_env

        env = os.environ if env is None else env
        region = _get(env, "BROKER_AWS_REGION", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        vault_addr = _url(env, "BROKER_VAULT_ADDR", required=True)
        _distinct_tables(env)
        if "BROKER_AWS_CLIENTS" in env:  # a setting of earlier versions, which had a second AWS client
            raise ConfigError("BROKER_AWS_CLIENTS is no longer a setting: every AWS call goes through botocore; "
                              "remove it from the function's environment")
        return cls(
            vault_addr=vault_addr,
            vault_public_addr=_url(env, "BROKER_VAULT_PUBLIC_ADDR") or vault_addr,
            vault_role_id=_get(env, "BROKER_VAULT_ROLE_ID", required=True),
            vault_secret_id_secret=_get(env, "BROKER_VAULT_SECRET_ID_SECRET", required=True),
            vault_approle_mount=_get(env, "BROKER_VAULT_APPROLE_MOUNT", "approle").strip("/"),
            vault_timeout=_number(env, "BROKER_VAULT_TIMEOUT", 5, low=0.5, high=25),
            vault_namespace=_namespace(env, "BROKER_VAULT_NAMESPACE"),
            aws_endpoint_url=_url(env, "BROKER_AWS_ENDPOINT_URL"),
            aws_region=region,
            audit_table=_get(env, "BROKER_AUDIT_TABLE", required=True),
            replay_table=_get(env, "BROKER_REPLAY_TABLE", required=True),
            rules_file=_get(env, "BROKER_RULES_FILE", DEFAULT_RULES_FILE),
            audit_retention_days=int(_number(env, "BROKER_AUDIT_RETENTION_DAYS", 400, low=1, high=3650)),
            log_level=_get(env, "BROKER_LOG_LEVEL", "INFO").upper(),
            methods=settings_from_env(env, region),
            quarantine_table=_get(env, "BROKER_QUARANTINE_TABLE"),
            vault_audit_hash_path=_audit_path(env, "BROKER_VAULT_AUDIT_HASH_PATH"),
            revoker_role_id=_get(env, "BROKER_REVOKER_ROLE_ID"),
            revoker_secret_id_secret=_get(env, "BROKER_REVOKER_SECRET_ID_SECRET",
                                          required=bool(_get(env, "BROKER_REVOKER_ROLE_ID"))),
            token_max_ttl=int(_number(env, "BROKER_TOKEN_MAX_TTL", 86400, low=60, high=366 * 86400)),
            revocation_settle_seconds=_number(env, "BROKER_REVOCATION_SETTLE_SECONDS", 3, low=1, high=10),
            token_scan_seconds=_number(env, "BROKER_TOKEN_SCAN_SECONDS", 12, low=1, high=600),
            rules_source=_rules_source(env),
            rules_refresh=_number(env, "BROKER_RULES_REFRESH_SECONDS", 60, low=0, high=3600),
            rules_allow_serial=_serial(env, "BROKER_RULES_ALLOW_SERIAL"),
        )


def _distinct_tables(env):
    """The audit, replay and quarantine tables are three tables: their keys differ, and one
    table named twice would fail every request (a 503) instead of the start."""
    names = {}
    for name in ("BROKER_AUDIT_TABLE", "BROKER_REPLAY_TABLE", "BROKER_QUARANTINE_TABLE"):
        table = _get(env, name)
        if table is not None and table in names:
            raise ConfigError(f"{name} names the table {table!r} of {names[table]}: each needs its own table")
        names.setdefault(table, name)


def _rules_source(env):
    from .rules_source import parse_source

    return parse_source(_get(env, "BROKER_RULES_SOURCE"), _get(env, "BROKER_RULES_FILE", DEFAULT_RULES_FILE))


def _serial(env, name):
    from .policy import MAX_SERIAL

    raw = _get(env, name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > MAX_SERIAL:
        raise ConfigError(f"{name} must be a rules serial (a whole number from 0 to {MAX_SERIAL}), got {raw!r}")
    return int(raw)


def _get(env, name, default=None, required=False):
    value = env.get(name, "").strip()
    if value:
        return value
    if required:
        raise ConfigError(f"{name} is required but not set")
    return default


def _choice(env, name, default, allowed):
    value = _get(env, name, default).lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _list(env, name, default):
    items = [v.strip() for v in _get(env, name, default).split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{name} must list at least one value")
    return items


def _number(env, name, default, low, high):
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def _audit_path(env, name):
    raw = _get(env, name)
    if raw is None:
        return None
    path = raw.strip("/")
    if not path or any(p in ("", ".", "..") or not all(c.isalnum() or c in "-_." for c in p) for p in path.split("/")):
        raise ConfigError(f"{name} must be a Vault audit device path like file, got {raw!r}")
    return path


# A namespace path: segments of letters, digits, '-' and '_' (Vault and OpenBao refuse a '/' or
# a space in a namespace's name; "root" and "sys"-like names are theirs), at most 8 deep.
MAX_NAMESPACE_DEPTH = 8


def _namespace(env, name):
    """A Vault namespace path (`team-a`, `admin/team-a`) without its slashes at the ends, or None
    for the root namespace (unset, empty or `root`)."""
    raw = _get(env, name)
    if raw is None:
        return None
    path = raw.strip("/")
    if path == "root":
        return None
    parts = path.split("/")
    if (not path or len(parts) > MAX_NAMESPACE_DEPTH or len(path) > 255
            or any(not p or p in (".", "..") or not all(c.isascii() and (c.isalnum() or c in "-_") for c in p)
                   for p in parts)):
        raise ConfigError(f"{name} must be a Vault namespace path like team-a or admin/team-a (letters, digits, "
                          f"'-' and '_', segments separated by '/'), got {raw!r}")
    return path


def _url(env, name, required=False):
    raw = _get(env, name, required=required)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


# The helpers each method's settings use too (chalicelib/methods/*/settings.py).
env_value, env_list, env_number, env_url = _get, _list, _number, _url
