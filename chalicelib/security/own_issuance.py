"""A client acting on its own issuance (an interception report, a token registration)
proves who it is with a fresh proof in the body, and the issuance must be its own: the
same principal, the same machine. One check for both routes."""

import json
import re

from ..errors import InvalidRequest, NotAuthorized

# A Vault token or wrapping-token accessor, as the client sends it.
ACCESSOR = re.compile(r"[A-Za-z0-9._-]{1,128}")


def login_fields(method_name):
    """What the method's login body carries beside `role`: its proof fields and its optional
    claims (an AWS login's `ecs_task_arn`). A body proving its caller again carries these."""
    from ..methods import REGISTRY, package

    if method_name not in REGISTRY:  # an audit record of a request to a method the broker has not
        raise InvalidRequest(f"that request ID names no issuance of a method this broker serves ({method_name})")
    pkg = package(method_name)
    return tuple(pkg.PROOF_FIELDS) + tuple(getattr(pkg, "CLAIM_FIELDS", ()))


def proof_fields():
    """Every method's login fields but `role`: what a body may carry beside the route's own
    before the issuance (and so the method) is known."""
    from ..methods import REGISTRY

    return sorted({f for name in REGISTRY for f in login_fields(name)})


def own_body(raw_body, route_fields, required, method_name):
    """The body, strictly: the route's fields and the issuance's method's login fields (but
    `role`), nothing else (another method's proof fields are unknown fields here)."""
    from .inputs import parse_body

    return parse_body(raw_body, (*route_fields, *login_fields(method_name)), required)


def method_of(issuance):
    """The proof's method is the issuance's (the audit trail's word), not a guess from
    which fields the body carries; with no issuance found, the registry's first (the
    request is refused once its caller is proven: no such audit record)."""
    from ..methods import names

    return (issuance or {}).get("method") or names()[0]


def prove_caller(*, method, method_name, admission, rate_limits, doc, record, issuance, placeholder_role,
                 scope, limit, window):
    """Verify the body's proof like a login's (chalicelib/pipeline/proving.py: looked up
    beside the cloud's verification, spent once), count the caller's budget for `scope`,
    and refuse unless `issuance` is its own."""
    from ..pipeline.proving import prove, spend

    proof = {k: doc[k] for k in login_fields(method_name) if k in doc}
    login = method.parse(json.dumps(dict(proof, role=placeholder_role)).encode())
    caller, _ = prove(method, login, admission=admission, record=record)
    spend(admission, caller, record)
    if rate_limits is not None:
        rate_limits.take_slot(scope, caller.principal, limit=limit, window=window)
    mismatch = not_the_callers(issuance, caller, record.instance)
    if mismatch:
        raise NotAuthorized("that request ID was not issued to this caller", detail=mismatch)
    return caller


def not_the_callers(issuance, caller, instance):
    """Why the issuance is not the caller's to act on, or None."""
    if issuance is None:
        return "no such audit record"
    if issuance.get("outcome") != "issued":
        return f"the record is not an issuance (outcome {issuance.get('outcome')})"
    if issuance.get("principal") != caller.principal:
        return f"issued to {issuance.get('principal')}, reported by {caller.principal}"
    if issuance.get("instance") and issuance["instance"] != instance:
        return f"issued to instance {issuance['instance']}, reported from {instance}"
    return None
