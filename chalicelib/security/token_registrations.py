"""`POST /v1/tokens`: a client registers the accessor of the Vault token it logged in with.

After a `--sink` or `--exec` login, `broker login` sends the issuance's request ID, the
token's accessor, and what shows the issuance is its own, one of (dispatched on which the
body carries, never both):

- `registration_key`: the `token_registration_key` of the issuance's answer. Only the
  caller the issuance was answered to holds it; the audit record keeps its SHA-256. One
  DynamoDB transaction checks it and keeps the accessor (chalicelib/stores/tokens.py):
  no second cloud proof, no read before it; at most 20 attempts per issuance;
- a fresh proof of its identity (clients before the key): the issuance must be the
  caller's (same principal, same machine, as for an interception report); rate-limited
  per caller.

The broker keeps the accessor, so a revocation revokes that token at once instead of
finding it by scanning every token. Nothing is asked of Vault here: the revocation checks
the token's metadata (`request_id`) with the revoking identity before revoking it, so a
registered accessor of somebody else's token (or of no token) is ignored.
"""

import json
import re

from ..audit_query import valid_request_id
from ..errors import InvalidRequest
from .audited import need
from .inputs import parse_body
from .own_issuance import ACCESSOR, method_of, own_body, proof_fields, prove_caller

REGISTRATION_LIMIT = 20
REGISTRATION_WINDOW = 3600
KEY_FIELDS = ("request_id", "accessor", "registration_key")
REGISTRATION_KEY = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


class TokenRegistrations:
    def __init__(self, *, requests, method, admission, audit, rate_limits, tokens, keep_for):
        self._requests = requests
        self._method = method
        self._admission = admission
        self._audit = audit
        self._rate_limits = rate_limits
        self._tokens = tokens  # stores: TokenRegistry, or None (no quarantine table: 503)
        self._keep_for = keep_for  # the tokens' longest lifetime

    def register(self, raw_body, **context):
        if _names_a_key(raw_body):
            return self._register_by_key(raw_body, context)
        route_fields = ("request_id", "accessor")
        allowed = (*route_fields, *proof_fields())
        doc, issuance = None, None
        try:
            doc = parse_body(raw_body, allowed, ("request_id", "accessor"))
            issuance = self._audit.get(valid_request_id(doc["request_id"]))
        except InvalidRequest:
            pass
        method_name = method_of(issuance)

        def work(record, identity):
            tokens = need(self._tokens, "token registration")
            body = own_body(raw_body, route_fields, route_fields, method_name)
            wanted = valid_request_id(body["request_id"])
            record.related_request_id = wanted
            accessor = body["accessor"]
            if not isinstance(accessor, str) or not ACCESSOR.fullmatch(accessor):
                raise InvalidRequest("field accessor must be a Vault token accessor")
            prove_caller(method=self._method(method_name), method_name=method_name, admission=self._admission,
                         rate_limits=self._rate_limits, doc=body, record=record, issuance=issuance,
                         placeholder_role="token", scope="token-register", limit=REGISTRATION_LIMIT,
                         window=REGISTRATION_WINDOW)
            tokens.add(wanted, accessor, keep_for=self._keep_for)
            record.role = issuance.get("role")
            record.code = "token_registered"
            record.reason = f"token accessor {accessor} registered for issuance {wanted}"
            return {"related_request_id": wanted, "accessor": accessor, "registered": True}

        return self._requests.run("token.register", context, work, admin=False, method=method_name,
                                  outcome="registration", event="token")

    def _register_by_key(self, raw_body, context):
        def work(record, identity):
            tokens = need(self._tokens, "token registration")
            body = parse_body(raw_body, KEY_FIELDS, KEY_FIELDS)  # strictly: no proof fields beside a key
            wanted = valid_request_id(body["request_id"])
            record.related_request_id = wanted
            accessor, key = body["accessor"], body["registration_key"]
            if not isinstance(accessor, str) or not ACCESSOR.fullmatch(accessor):
                raise InvalidRequest("field accessor must be a Vault token accessor")
            if not isinstance(key, str) or not REGISTRATION_KEY.fullmatch(key):
                raise InvalidRequest("field registration_key must be the token_registration_key of the issuance")
            from ..pipeline.issuance import registration_key_sha256

            tokens.add_by_key(wanted, accessor, registration_key_sha256(key), keep_for=self._keep_for)
            record.code = "token_registered"
            record.reason = f"token accessor {accessor} registered for issuance {wanted} (by its registration key)"
            return {"related_request_id": wanted, "accessor": accessor, "registered": True}

        return self._requests.run("token.register", context, work, admin=False, method="registration_key",
                                  outcome="registration", event="token")


def _names_a_key(raw_body):
    """Does the body carry a registration key (the key route), rather than a proof?"""
    try:
        doc = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "registration_key" in doc
