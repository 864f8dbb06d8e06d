"""The JSON body of an AWS login (`POST /v1/credentials/aws`), parsed strictly.

The fields and encodings are those of Vault's aws auth method for an `iam` login,
so what `hvac.aws_utils.generate_sigv4_auth_request` builds is accepted as it is.
One optional field of our own: `ecs_task_arn`, the task a container says it runs
in (from its task metadata endpoint). Anything malformed is an InvalidRequest (400).
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from ...bodies import decode_json_object, parse_role
from ...errors import InvalidProof, InvalidRequest
from . import CLAIM_FIELDS, PROOF_FIELDS

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
AWS_FIELDS = ("role",) + PROOF_FIELDS
OPTIONAL_FIELDS = CLAIM_FIELDS
MAX_TASK_ARN = 512


@dataclass(frozen=True)
class AwsLoginRequest:
    role: str
    method: str
    url: str
    body: bytes
    headers: tuple = field(repr=False)  # ((name as sent, value), ...), one value per name; holds the session token
    ecs_task_arn: str | None = None  # a claim, checked against DescribeTasks

    def header(self, name):
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def parse_aws_login(raw):
    doc = decode_json_object(raw, AWS_FIELDS + OPTIONAL_FIELDS, AWS_FIELDS)
    for f in AWS_FIELDS:
        if not isinstance(doc[f], str):
            raise InvalidRequest(f"field {f} must be a string")
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
    task_arn = doc.get("ecs_task_arn")
    if task_arn is not None and (not isinstance(task_arn, str) or not task_arn or len(task_arn) > MAX_TASK_ARN
                                 or not task_arn.isascii()):
        raise InvalidRequest("field ecs_task_arn must be an ECS task ARN")
    return AwsLoginRequest(role, method, url, body, headers, task_arn)


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
        if not isinstance(value, str) or len(value) > 4096:
            raise InvalidRequest(f"header {name} has an invalid value")
        if not _sendable(value):
            # A value no HTTP client could have sent (and STS could have signed) is a forged
            # proof, not an outage: refuse it here, before the HTTP layer raises on it.
            raise InvalidProof(f"header {name} has a value no HTTP client sends (control, non-latin-1 "
                               "or surrounding whitespace)")
        headers.append((name, value))
    return tuple(headers)


# Characters an HTTP client can't put in a header value: controls, DEL, beyond latin-1.
_UNSENDABLE = re.compile(r"[^\x20-\x7e\x80-\xff]")


def _sendable(value):
    if value != value.strip(" \t"):
        return False
    return _UNSENDABLE.search(value) is None
