"""JSON request bodies, parsed strictly: anything malformed is an InvalidRequest (400),
never an exception. Each method's login body (chalicelib/methods/*/request.py) and the
security routes build on these."""

import json

from .errors import InvalidRequest
from .policy.names import ROLE_NAME

MAX_BODY_BYTES = 64 * 1024


def decode_json_object(raw, allowed, required):
    """Decode a JSON object body holding only `allowed` fields, all `required` ones among them.
    An empty body is an empty object when nothing is required."""
    if raw is None or len(raw) == 0:
        if required:
            raise InvalidRequest("request body is empty; expected a JSON object")
        return {}
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
    missing = [f for f in required if f not in doc]
    if missing:
        raise InvalidRequest(f"missing field(s): {', '.join(missing)}")
    return doc


def parse_json_object(raw, fields):
    """Decode a JSON object body with exactly the given string fields."""
    doc = decode_json_object(raw, fields, fields)
    for f in fields:
        if not isinstance(doc[f], str):
            raise InvalidRequest(f"field {f} must be a string")
    return doc


def parse_role(value):
    if not ROLE_NAME.match(value):
        raise InvalidRequest("field role must be an AppRole name (letters, digits, - _ .; at most 128)")
    return value
