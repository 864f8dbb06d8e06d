"""`POST /v1/tokens`: a client registers the accessor of the Vault token it logged in with.

After a `--sink` or `--exec` login, `broker login` sends the issuance's request ID, the
token's accessor and a fresh proof of its identity. The broker checks that the issuance
is the caller's (same principal, same machine, as for an interception report) and keeps
the accessor (chalicelib/stores/tokens.py), so a revocation revokes that token at once
instead of finding it by scanning every token. Nothing is asked of Vault here: the
revocation checks the token's metadata with the revoking identity before revoking it,
so a registered accessor of somebody else's token is ignored. Rate-limited per caller.
"""

import json
import re

from ..audit_query import valid_request_id
from ..errors import InvalidRequest, NotAuthorized
from .incidents import _not_the_callers
from .inputs import parse_body
from .audited import need

REGISTRATION_LIMIT = 20
REGISTRATION_WINDOW = 3600
_ACCESSOR = re.compile(r"[A-Za-z0-9._-]{1,128}")


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
        from ..methods import REGISTRY, package

        proof_fields = {f for name in REGISTRY for f in package(name).PROOF_FIELDS}
        allowed = ("request_id", "accessor", *sorted(proof_fields))
        doc, issuance = None, None
        try:
            doc = parse_body(raw_body, allowed, ("request_id", "accessor"))
            issuance = self._audit.get(valid_request_id(doc["request_id"]))
        except InvalidRequest:
            pass
        method_name = (issuance or {}).get("method") or "aws"

        def work(record, identity):
            tokens = need(self._tokens, "token registration")
            body = parse_body(raw_body, allowed, ("request_id", "accessor"))
            wanted = valid_request_id(body["request_id"])
            record.related_request_id = wanted
            accessor = body["accessor"]
            if not isinstance(accessor, str) or not _ACCESSOR.fullmatch(accessor):
                raise InvalidRequest("field accessor must be a Vault token accessor")
            method = self._method(method_name)
            proof = {k: body[k] for k in package(method_name).PROOF_FIELDS if k in body}
            login = method.parse(json.dumps(dict(proof, role="token")).encode())
            self._admission.seen(method.proof_hash(login))  # as a login: a replayed proof costs no cloud call
            caller = method.verify(login)
            record.principal, record.account = caller.principal, caller.account
            record.instance = caller.claimed.id if caller.claimed else None
            self._admission.admit(caller.proof_hash, request_id=record.request_id, method=method_name,
                                  valid_until=caller.valid_until)
            if self._rate_limits is not None:
                self._rate_limits.take_slot("token-register", caller.principal, limit=REGISTRATION_LIMIT,
                                            window=REGISTRATION_WINDOW)
            mismatch = _not_the_callers(issuance, caller, record.instance)
            if mismatch:
                raise NotAuthorized("that request ID was not issued to this caller", detail=mismatch)
            tokens.add(wanted, accessor, keep_for=self._keep_for)
            record.role = issuance.get("role")
            record.code = "token_registered"
            record.reason = f"token accessor {accessor} registered for issuance {wanted}"
            return {"related_request_id": wanted, "accessor": accessor, "registered": True}

        return self._requests.run("token.register", context, work, admin=False, method=method_name,
                                  outcome="registration", event="token")
