"""The AWS method's settings: read from the environment and validated once at start.

A bad value raises ConfigError naming the variable (docs/architecture.md lists them).
"""

import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ...config import env_list, env_number, env_url, env_value
from ...errors import ConfigError

_ACCOUNT = re.compile(r"^\d{12}$")
_ROLE_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")


@dataclass(frozen=True)
class Reader:
    """The role the broker assumes to read one member account's facts."""

    account: str
    role_arn: str
    external_id: str | None
    partition: str = "aws"  # the role ARN's: the reader reads that partition's account only


@dataclass(frozen=True)
class AwsSettings:
    server_id: str
    sts_endpoints: tuple  # allowed signed URLs, normalised "https://host/"
    sts_forward_url: str | None  # local stack only
    max_clock_skew: int
    regions: tuple  # where instances (and, without a task ARN, tasks) are looked for
    readers: dict = field(default_factory=dict)  # {account: Reader}
    own_account: str | None = None  # None: asked of STS once, at start
    own_partition: str = "aws"  # the broker's own account's partition (its region's)
    fact_cache_seconds: float = 5.0  # role tags, trust policies: seconds, never minutes

    @classmethod
    def from_env(cls, env, region):
        return cls(
            server_id=env_value(env, "BROKER_SERVER_ID", required=True),
            sts_endpoints=tuple(_sts_endpoint(u) for u in env_list(env, "BROKER_STS_ENDPOINTS",
                                                                   "https://sts.amazonaws.com")),
            sts_forward_url=env_url(env, "BROKER_STS_FORWARD_URL"),
            max_clock_skew=int(env_number(env, "BROKER_MAX_CLOCK_SKEW", 300, low=30, high=900)),
            regions=tuple(env_list(env, "BROKER_EC2_REGIONS", region)),
            readers=parse_readers(env_value(env, "BROKER_ACCOUNT_READERS")),
            own_account=_account(env_value(env, "BROKER_ACCOUNT_ID"), "BROKER_ACCOUNT_ID"),
            own_partition=partition_of_region(region),
            fact_cache_seconds=env_number(env, "BROKER_FACT_CACHE_SECONDS", 5, low=0, high=60),
        )


def partition_of_region(region):
    """The AWS partition a region belongs to (`cn-north-1`: aws-cn; `us-gov-west-1`: aws-us-gov)."""
    region = region or ""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _account(value, name):
    if value is not None and not _ACCOUNT.match(value):
        raise ConfigError(f"{name} must be a 12-digit AWS account ID, got {value!r}")
    return value


def parse_readers(raw):
    """BROKER_ACCOUNT_READERS: {"ACCOUNT": {"role_arn": "...", "external_id": "..."}, ...}."""
    name = "BROKER_ACCOUNT_READERS"
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a JSON object of account -> {{role_arn, external_id}}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name} must be a JSON object of account -> {{role_arn, external_id}}")
    readers = {}
    for account, spec in doc.items():
        _account(account, f"{name}: key {account!r}")
        if not isinstance(spec, dict) or set(spec) - {"role_arn", "external_id"} or "role_arn" not in spec:
            raise ConfigError(f"{name}: {account} must be an object with role_arn and, optionally, external_id")
        m = _ROLE_ARN.match(spec["role_arn"]) if isinstance(spec["role_arn"], str) else None
        if not m:
            raise ConfigError(f"{name}: {account}: role_arn {spec['role_arn']!r} is not an IAM role ARN")
        if m.group(2) != account:
            # A reader in another account would read that account's facts for this one's callers.
            raise ConfigError(f"{name}: {account}: role_arn {spec['role_arn']} is in account {m.group(2)}, "
                              "not in the account it reads")
        external_id = spec.get("external_id")
        if external_id is not None and (not isinstance(external_id, str) or not _EXTERNAL_ID.match(external_id)):
            raise ConfigError(f"{name}: {account}: external_id must be 2 to 1224 characters of [\\w+=,.@:/-]")
        readers[account] = Reader(account, spec["role_arn"], external_id, partition=m.group(1))
    return readers


def _sts_endpoint(raw):
    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.path not in ("", "/"):
        raise ConfigError(f"BROKER_STS_ENDPOINTS: {raw!r} must be an https URL with no path, like https://sts.amazonaws.com")
    host = parts.hostname.lower()
    if not (host == "sts.amazonaws.com" or (host.startswith("sts.") and host.endswith((".amazonaws.com", ".amazonaws.com.cn")))):
        raise ConfigError(f"BROKER_STS_ENDPOINTS: {host} is not an AWS STS endpoint")
    return f"https://{host}/"
