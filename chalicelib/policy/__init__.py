"""The access rules: pure, no I/O but reading the file; shared by the broker and the client.

    model.py      Rule, RuleSet, Decision, Verdict, Issuance: deciding and explaining
    load.py       the rules file: load, validate (every problem at once), warnings
    limits.py     [rate_limits]
    fields.py     validation helpers and RulesError, shared with each method's conditions
    durations.py  '60s', '5m', '1h'
    names.py      the role and rule name patterns

The engine knows no cloud: each method's `[rule.<method>]` conditions are parsed and
matched by that method's `match` module (chalicelib/methods/<name>/match.py).
"""

from .durations import parse_duration
from .fields import RulesError
from .limits import DEFAULT_PER_IDENTITY, Limit, RateLimits
from .load import MAX_SERIAL, SUPPORTED_VERSION, load_rules, parse_rules, warnings
from .model import (DEFAULT_SECRET_ID_TTL, DEFAULT_WRAP_TTL, SECRET_ID_TTL_BOUNDS, WRAP_TTL_BOUNDS, Decision, Issuance,
                    Rule, RuleSet, Verdict)
from .names import ROLE_NAME, RULE_NAME

__all__ = [
    "DEFAULT_PER_IDENTITY", "DEFAULT_SECRET_ID_TTL", "MAX_SERIAL", "DEFAULT_WRAP_TTL", "Decision", "Issuance", "Limit",
    "ROLE_NAME", "RULE_NAME", "RateLimits", "Rule", "RuleSet", "RulesError", "SECRET_ID_TTL_BOUNDS",
    "SUPPORTED_VERSION", "Verdict", "WRAP_TTL_BOUNDS", "load_rules", "parse_duration", "parse_rules", "warnings",
]
