"""The security routes' inputs: reasons, durations, strict JSON bodies."""

import re
import unicodedata

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


# Characters a reason may not hold once its whitespace is collapsed: controls (C0, DEL, C1:
# terminal escapes), format characters (bidirectional overrides, zero-width marks) and lone
# surrogates (not text: no store or log can encode them).
_REFUSED_CATEGORIES = ("Cc", "Cf", "Cs")


def parse_reason(value, what="reason", required=True):
    """A free-text reason as it is stored and logged: every run of whitespace (line breaks,
    tabs) one space, no leading or trailing space; at most MAX_REASON characters; no control,
    format or surrogate character. Anything else is an InvalidRequest (400)."""
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"field {what} must be a non-empty string")
    text = " ".join(value.split())
    if len(text) > MAX_REASON:
        raise InvalidRequest(f"field {what} is longer than {MAX_REASON} characters")
    bad = next((c for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise InvalidRequest(f"field {what} holds a control or format character (U+{ord(bad):04X}): "
                             "it must be printable text")
    return text


def parse_body(raw, allowed, required=()):
    return decode_json_object(raw, allowed, required)
