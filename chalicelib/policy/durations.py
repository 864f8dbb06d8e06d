"""Durations in the rules file: an int of seconds, or '90', '90s', '5m', '1h'."""

import re

_DURATION = re.compile(r"^(\d+)(s|m|h)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(value):
    """Seconds from an int or a string like '90', '90s', '5m', '1h'; None if malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 16:
        m = _DURATION.match(value.strip())
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    return None
