"""The JSON body of POST /v1/credentials/aws, parsed strictly.

The fields and encodings are those of Vault's aws auth method for an `iam` login,
so a request built by `hvac.aws_utils.generate_sigv4_auth_request` is accepted
as it is. Anything malformed is an InvalidRequest (400), never an exception.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .errors import InvalidRequest

MAX_BODY_BYTES = 64 * 1024
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
AWS_FIELDS = ("role", "iam_http_request_method", "iam_request_url", "iam_request_body", "iam_request_headers")


@dataclass(frozen=True)
class AwsLoginRequest:
    role: str
    method: str
    url: str
    body: bytes
    headers: tuple  # ((name as sent, value), ...), one value per name

    def header(self, name):
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


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


def parse_aws_login(raw):
    doc = parse_json_object(raw, AWS_FIELDS)
    role = parse_role(doc["role"])
    method = doc["iam_http_request_method"]
    if len(method) > 16:
        raise InvalidRequest("field iam_http_request_method is too long")
    url = _b64(doc, "iam_request_url")
    try:
        url = url.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("field iam_request_url must decode to an ASCII URL") from None
    body = _b64(doc, "iam_request_body")
    headers = _headers(_b64(doc, "iam_request_headers"))
    return AwsLoginRequest(role, method, url, body, headers)


def _b64(doc, field):
    try:
        return base64.b64decode(doc[field], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"field {field} is not valid base64") from None


def _headers(raw):
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("field iam_request_headers must be base64 of a JSON object") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("field iam_request_headers must be base64 of a JSON object")
    if len(obj) > 32:
        raise InvalidRequest("field iam_request_headers has too many headers")
    seen, headers = set(), []
    for name, value in obj.items():
        if not _HEADER_NAME.match(name):
            raise InvalidRequest("field iam_request_headers has an invalid header name")
        if name.lower() in seen:
            raise InvalidRequest(f"header {name} is given twice")
        seen.add(name.lower())
        if isinstance(value, list):
            if len(value) != 1:
                raise InvalidRequest(f"header {name} must have exactly one value")
            value = value[0]
        if not isinstance(value, str) or any(c in value for c in "\r\n\0") or len(value) > 4096:
            raise InvalidRequest(f"header {name} has an invalid value")
        headers.append((name, value))
    return tuple(headers)
