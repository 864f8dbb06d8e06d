"""Prove a caller: the one way a proof is verified, for a login (chalicelib/pipeline/issuance.py),
a client acting on its own issuance (incidents, token registrations:
chalicelib/security/own_issuance.py) and the security team's admin check
(chalicelib/admin_auth.py).

The proof is checked offline (its replay key), then, at once, looked up in the replay store
and verified with its method's cloud. A replay of a proof this process saw spent is refused
before any call; a replay the store knows is refused whatever the cloud said of it. The
record learns who the caller is (VerifiedCaller: principal, account, claimed machine, the
principal its index keys on) as soon as it is proven.
"""

from ..concurrency import settle


def prove(method, login, *, admission, record, offline_check=None):
    """(VerifiedCaller, the replay lookup). `offline_check(login)` runs before the cloud is
    asked (the admin check's request binding). The proof is not spent here: `spend` it, or
    the issuance's admission transaction does (with the caller's quarantine keys and budgets)."""
    lookup_call = admission.lookup_call(method.proof_hash(login))
    if offline_check is not None:
        try:
            offline_check(login)
        except Exception:
            lookup_call()  # a replay is a replay, whatever else is wrong with it
            raise
    # the cloud first, in this thread: the slower call goes out before the lookup is signed
    (caller, proof_error), (lookup, lookup_error) = settle(lambda: method.verify(login), lookup_call)
    if lookup_error or proof_error:
        raise lookup_error or proof_error  # a replay is a replay, whatever the cloud said of it
    record.proven(caller)
    return caller, lookup


def spend(admission, caller, record):
    """Spend a proven caller's proof (once: ProofReplayed if it was spent meanwhile)."""
    admission.admit(caller.proof_hash, request_id=record.request_id, method=caller.method,
                    valid_until=caller.valid_until)
