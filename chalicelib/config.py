"""The broker's settings, read from environment variables and validated once at start.

A bad setting raises ConfigError naming the variable, so a misconfigured
deployment fails loudly at its first request instead of misbehaving later.
The table of variables is in docs/architecture.md and the README.
"""

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RULES_FILE = os.path.join(_HERE, "policies", "rules.toml")


@dataclass(frozen=True)
class Settings:
    vault_addr: str
    vault_public_addr: str
    vault_role_id: str
    vault_secret_id_secret: str
    vault_approle_mount: str
    vault_timeout: float
    server_id: str
    sts_endpoints: tuple  # allowed signed URLs, normalised "https://host/"
    sts_forward_url: str | None
    aws_endpoint_url: str | None
    aws_region: str
    ec2_regions: tuple
    audit_table: str
    replay_table: str
    rules_file: str
    max_clock_skew: int
    audit_retention_days: int
    log_level: str
    gcp_audience: str | None  # None: GCP proofs are not accepted
    gcp_certs_url: str
    gcp_compute_url: str
    gcp_max_token_age: int
    # Optional (None: off). Revocation, quarantine and the incident rate limit need the table.
    quarantine_table: str | None = None
    vault_audit_hash_path: str | None = None  # an audit device's path, e.g. "file": sys/audit-hash/<path>

    @classmethod
    def from_env(cls, env=None):
        env = os.environ if env is None else env
        region = _get(env, "BROKER_AWS_REGION", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        vault_addr = _url(env, "BROKER_VAULT_ADDR", required=True)
        return cls(
            vault_addr=vault_addr,
            vault_public_addr=_url(env, "BROKER_VAULT_PUBLIC_ADDR") or vault_addr,
            vault_role_id=_get(env, "BROKER_VAULT_ROLE_ID", required=True),
            vault_secret_id_secret=_get(env, "BROKER_VAULT_SECRET_ID_SECRET", required=True),
            vault_approle_mount=_get(env, "BROKER_VAULT_APPROLE_MOUNT", "approle").strip("/"),
            vault_timeout=_number(env, "BROKER_VAULT_TIMEOUT", 5, low=0.5, high=25),
            server_id=_get(env, "BROKER_SERVER_ID", required=True),
            sts_endpoints=tuple(_sts_endpoint(u) for u in _list(env, "BROKER_STS_ENDPOINTS", "https://sts.amazonaws.com")),
            sts_forward_url=_url(env, "BROKER_STS_FORWARD_URL"),
            aws_endpoint_url=_url(env, "BROKER_AWS_ENDPOINT_URL"),
            aws_region=region,
            ec2_regions=tuple(_list(env, "BROKER_EC2_REGIONS", region)),
            audit_table=_get(env, "BROKER_AUDIT_TABLE", required=True),
            replay_table=_get(env, "BROKER_REPLAY_TABLE", required=True),
            rules_file=_get(env, "BROKER_RULES_FILE", DEFAULT_RULES_FILE),
            max_clock_skew=int(_number(env, "BROKER_MAX_CLOCK_SKEW", 300, low=30, high=900)),
            audit_retention_days=int(_number(env, "BROKER_AUDIT_RETENTION_DAYS", 400, low=1, high=3650)),
            log_level=_get(env, "BROKER_LOG_LEVEL", "INFO").upper(),
            gcp_audience=_get(env, "BROKER_GCP_AUDIENCE"),
            gcp_certs_url=_url(env, "BROKER_GCP_CERTS_URL") or "https://www.googleapis.com/oauth2/v1/certs",
            gcp_compute_url=_url(env, "BROKER_GCP_COMPUTE_URL") or "https://compute.googleapis.com",
            gcp_max_token_age=int(_number(env, "BROKER_GCP_MAX_TOKEN_AGE", 300, low=30, high=3600)),
            quarantine_table=_get(env, "BROKER_QUARANTINE_TABLE"),
            vault_audit_hash_path=_audit_path(env, "BROKER_VAULT_AUDIT_HASH_PATH"),
        )


def _get(env, name, default=None, required=False):
    value = env.get(name, "").strip()
    if value:
        return value
    if required:
        raise ConfigError(f"{name} is required but not set")
    return default


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


def _url(env, name, required=False):
    raw = _get(env, name, required=required)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _sts_endpoint(raw):
    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.path not in ("", "/"):
        raise ConfigError(f"BROKER_STS_ENDPOINTS: {raw!r} must be an https URL with no path, like https://sts.amazonaws.com")
    host = parts.hostname.lower()
    if not (host == "sts.amazonaws.com" or (host.startswith("sts.") and host.endswith((".amazonaws.com", ".amazonaws.com.cn")))):
        raise ConfigError(f"BROKER_STS_ENDPOINTS: {host} is not an AWS STS endpoint")
    return f"https://{host}/"
