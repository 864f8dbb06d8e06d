"""`POST /v1/incidents`: a client reports a possible interception of its own issuance.

The body carries a fresh proof of the caller's identity (the fields of its method's
login body); the issuance must be the caller's (same principal, same machine). Its
secret ID is destroyed at once. Reports are rate-limited per caller.
"""

from ..audit_query import valid_request_id
from ..errors import InvalidRequest
from .inputs import parse_body, parse_reason
from .own_issuance import ACCESSOR, method_of, own_body, proof_fields, prove_caller

# Incident reports: per caller (exact principal), per window.
INCIDENT_LIMIT = 5
INCIDENT_WINDOW = 3600


class Incidents:
    def __init__(self, *, requests, method, admission, audit, rate_limits, minter):
        self._requests = requests
        self._method = method  # name -> Method (the login routes' verifiers)
        self._admission = admission  # chalicelib.admission.Admission: spends each proof once
        self._audit = audit
        self._rate_limits = rate_limits  # chalicelib.stores rate-limit store, or None
        self._minter = minter

    def report(self, raw_body, **context):
        route_fields = ("request_id", "reason", "accessor")
        allowed = (*route_fields, *proof_fields())
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
        method_name = method_of(issuance)

        def work(record, identity):
            doc = own_body(raw_body, route_fields, ("request_id",), method_name)
            wanted = valid_request_id(doc["request_id"])
            record.related_request_id = wanted
            reason = parse_reason(doc.get("reason"), required=False) or "possible interception reported by the client"
            accessor = doc.get("accessor")
            if accessor is not None and (not isinstance(accessor, str) or not ACCESSOR.fullmatch(accessor)):
                raise InvalidRequest("field accessor must be a wrapping token accessor")
            prove_caller(method=self._method(method_name), method_name=method_name, admission=self._admission,
                         rate_limits=self._rate_limits, doc=doc, record=record, issuance=issuance,
                         placeholder_role="incident", scope="incident", limit=INCIDENT_LIMIT, window=INCIDENT_WINDOW)
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

