"""What the GCP method derives from an identity, so that nothing downstream tells an email
from an ARN: its quarantine keys, the principal the audit index stores, how a revocation
target naming a service account parses, what a GCE instance's quarantine also covers."""

import re

PRINCIPAL_FORMS = "a service account email"
# The facts an audit record holds when the facts step verified the caller's instance.
MACHINE_FACTS = ("instance",)
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}$")


def principal_key(principal):
    """A service account email in the quarantine list: lower case (emails are); a token's
    bare `sub` as it is."""
    return principal.lower() if principal and "@" in principal else principal


def quarantine_keys(principal, claimed_id=None, canonical=None):
    """(own, shared) quarantine entries ((kind, value), ...).

    A GCE instance token: its instance is its own; its service account is shared (every GCE
    instance, Cloud Run instance or GKE pod running as it). A service-account token naming no
    instance has no own key: its account's entry and the account's instance-less entry
    (placed with a GCE instance's quarantine: whoever holds the instance can mint such
    tokens from its metadata server)."""
    account = ("principal", principal_key(principal)) if principal else None
    if claimed_id:
        return (("instance", claimed_id),), ((account,) if account else ())
    if account is None:
        return (), ()
    return (), (account, ("instanceless", principal_key(principal)))


def index_principal(principal):
    return principal


def parse_principal(value):
    """A revocation target naming a service account (its email, lower case), or None."""
    return value.lower() if _EMAIL.fullmatch(value) else None


def resolve_principal(email, method):  # method: () -> the built method, unused
    """(canonical spelling, known): the email as it is; the broker can't ask Google."""
    return email, False


def quarantine_covers(records):
    """A GCE instance's quarantine also refuses instance-less tokens of its service
    account(s): whoever holds the instance can mint them from its metadata server.
    [(kind, value, note)] for the records of this method."""
    accounts = sorted({r["principal"] for r in records if r.get("instance") and r.get("principal")})
    return [("instanceless", email,
             f"service account {email}: its tokens that name no instance are refused too "
             f"(whoever holds the instance can mint them from its metadata server)") for email in accounts]
