"""`POST /v1/incidents`: a client reports a possible interception of its own issuance.

The body carries a fresh proof of the caller's identity (the fields of its method's
login body); the issuance must be the caller's (same principal, same machine). Its
secret ID is destroyed at once. Reports are rate-limited per caller.
"""

import json
import re

from ..audit_query import valid_request_id
from ..errors import InvalidRequest, NotAuthorized
from .inputs import parse_body, parse_reason

# Incident reports: per caller (exact principal), per window.
INCIDENT_LIMIT = 5
INCIDENT_WINDOW = 3600
_ACCESSOR = re.compile(r"[A-Za-z0-9._-]{1,128}")


class Incidents:
    def __init__(self, *, requests, method, admission, audit, rate_limits, minter):
        self._requests = requests
        self._method = method  # name -> Method (the login routes' verifiers)
        self._admission = admission  # chalicelib.admission.Admission: spends each proof once
        self._audit = audit
        self._rate_limits = rate_limits  # chalicelib.stores rate-limit store, or None
        self._minter = minter

    def report(self, raw_body, **context):
        from ..methods import REGISTRY, package

        proof_fields = {f for name in REGISTRY for f in package(name).PROOF_FIELDS}
        allowed = ("request_id", "reason", "accessor", *sorted(proof_fields))
        doc = None
        try:
            doc = parse_body(raw_body, allowed, ("request_id",))
        except InvalidRequest:
            pass
        issuance = None
        if isinstance(doc, dict) and isinstance(doc.get("request_id"), str):
            try:
                issuance = self._audit.get(valid_request_id(doc["request_id"]))
            except InvalidRequest:
                pass
        # The proof's method is the reported issuance's (the audit trail's word), not a guess
        # from which fields the body carries.
        method_name = (issuance or {}).get("method") or "aws"

        def work(record, identity):
            if doc is None:
                parse_body(raw_body, allowed, ("request_id",))
            wanted = valid_request_id(doc["request_id"])
            record.related_request_id = wanted
            reason = parse_reason(doc.get("reason"), required=False) or "possible interception reported by the client"
            accessor = doc.get("accessor")
            if accessor is not None and (not isinstance(accessor, str) or not _ACCESSOR.fullmatch(accessor)):
                raise InvalidRequest("field accessor must be a wrapping token accessor")
            method = self._method(method_name)
            proof = {k: doc[k] for k in package(method_name).PROOF_FIELDS if k in doc}
            login = method.parse(json.dumps(dict(proof, role="incident")).encode())
            self._admission.seen(method.proof_hash(login))  # as a login: a replayed proof costs no cloud call
            caller = method.verify(login)
            record.principal, record.account = caller.principal, caller.account
            record.instance = caller.claimed.id if caller.claimed else None
            self._admission.admit(caller.proof_hash, request_id=record.request_id, method=method_name,
                                  valid_until=caller.valid_until)
            if self._rate_limits is not None:
                self._rate_limits.take_slot("incident", caller.principal, limit=INCIDENT_LIMIT,
                                            window=INCIDENT_WINDOW)
            mismatch = _not_the_callers(issuance, caller, record.instance)
            if mismatch:
                raise NotAuthorized("that request ID was not issued to this caller", detail=mismatch)
            record.role = issuance.get("role")
            record.reason = reason + (f" (wrapping accessor {accessor})" if accessor else "")
            result = "nothing to destroy"
            if issuance.get("secret_id_accessor"):
                result = self._minter.destroy_secret_id_status(issuance["role"], issuance["secret_id_accessor"])
            record.destroyed = [{"request_id": wanted, "role": issuance.get("role"),
                                 "secret_id_accessor": issuance.get("secret_id_accessor"), "result": result}]
            record.code = "interception_reported"
            return {"related_request_id": wanted, "secret_id": result}

        return self._requests.run("incident", context, work, admin=False, method=method_name, outcome="incident",
                                  event="incident")


def _not_the_callers(issuance, caller, instance):
    """Why the issuance is not the caller's to report, or None."""
    if issuance is None:
        return "no such audit record"
    if issuance.get("outcome") != "issued":
        return f"the record is not an issuance (outcome {issuance.get('outcome')})"
    if issuance.get("principal") != caller.principal:
        return f"issued to {issuance.get('principal')}, reported by {caller.principal}"
    if issuance.get("instance") and issuance["instance"] != instance:
        return f"issued to instance {issuance['instance']}, reported from {instance}"
    return None
