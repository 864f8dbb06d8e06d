"""The security routes' inputs: reasons, durations, strict JSON bodies."""

import re

from ..bodies import decode_json_object
from ..errors import InvalidRequest

MAX_QUARANTINE = 365 * 86400
MAX_REASON = 500
_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value, what):
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise InvalidRequest(f"{what} must be a duration like 30m, 24h or 7d (0 for none)")
    m = _DURATION.match(value.strip())
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_QUARANTINE:
        raise InvalidRequest(f"{what} is longer than {MAX_QUARANTINE // 86400} days")
    return seconds


def parse_reason(value, what="reason", required=True):
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"field {what} must be a non-empty string")
    text = " ".join(value.split())
    if len(text) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidRequest(f"field {what} must be printable text of at most {MAX_REASON} characters")
    return text


def parse_body(raw, allowed, required=()):
    return decode_json_object(raw, allowed, required)
