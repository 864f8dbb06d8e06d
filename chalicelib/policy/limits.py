"""[rate_limits]: how many issuances the broker allows in a window."""

import re
from dataclasses import dataclass, field

from .durations import parse_duration
from .fields import RulesError, only_keys


@dataclass(frozen=True)
class Limit:
    count: int
    window: int  # seconds

    def __str__(self):
        return f"{self.count}/{self.window}s"


# A machine boots once; a crash-looping container a few times an hour. More than this
# from one identity is a loop minting secret IDs, which is what the limit is for.
DEFAULT_PER_IDENTITY = Limit(20, 3600)
# What every caller that claims no machine also counts, per principal (an IAM role, whatever
# its session names; an IAM user; a GCP service account): a caller who may assume a role
# names a new session as often as it likes, and each would otherwise get a budget of its own.
DEFAULT_PER_PRINCIPAL = Limit(200, 3600)
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


@dataclass(frozen=True)
class RateLimits:
    """Counted in DynamoDB, shared by every Lambda instance."""

    per_identity: Limit = None  # None: DEFAULT_PER_IDENTITY
    per_role: dict = field(default_factory=dict)  # {role: Limit}
    per_principal: Limit = None  # None: DEFAULT_PER_PRINCIPAL

    def __post_init__(self):
        if self.per_identity is None:
            object.__setattr__(self, "per_identity", DEFAULT_PER_IDENTITY)
        if self.per_principal is None:
            object.__setattr__(self, "per_principal", DEFAULT_PER_PRINCIPAL)

    def of_budget(self, name):
        """The Limit of a caller's budget by its name (methods/base.py: IDENTITY_BUDGET, PRINCIPAL_BUDGET)."""
        return {"identity": self.per_identity, "principal": self.per_principal}[name]


def parse_limit(value, where):
    m = _RATE.match(value) if isinstance(value, str) else None
    window = parse_duration(m.group(2)) if m else None
    if not m or window is None or not 1 <= window <= 86400 or not 1 <= int(m.group(1)) <= 1_000_000:
        raise RulesError(f"{where}: {value!r} is not a rate like '20/1h' (1 to 1000000 per 1s..24h)")
    return Limit(int(m.group(1)), window)


def parse_rate_limits(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table ([rate_limits])")
    only_keys(raw, {"per_identity", "per_principal", "per_role"}, where)
    per_identity = parse_limit(raw["per_identity"], f"{where}.per_identity") if "per_identity" in raw \
        else DEFAULT_PER_IDENTITY
    per_principal = parse_limit(raw["per_principal"], f"{where}.per_principal") if "per_principal" in raw \
        else DEFAULT_PER_PRINCIPAL
    per_role = raw.get("per_role", {})
    if not isinstance(per_role, dict):
        raise RulesError(f"{where}.per_role: must be a table of role = 'N/window'")
    return RateLimits(per_identity, {role: parse_limit(v, f"{where}.per_role.{role}") for role, v in per_role.items()},
                      per_principal)
