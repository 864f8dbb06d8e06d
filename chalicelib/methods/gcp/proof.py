"""Verify a GCP proof: a Google-signed RS256 ID token, through the shared OIDC module
(chalicelib/methods/oidc.py, on PyJWT).

Only RS256, only keys from the configured Google certificates URL (found by
`kid`; never a `jku`/`x5u`/`jwk` the token names), our audience, Google's
issuer, and a short age. The certificates are cached as their Cache-Control says
and fetched again, at most once per 5 seconds, when a token names an unknown kid.
"""

import re
import time
from dataclasses import dataclass, field

from ...bodies import parse_json_object, parse_role
from ...errors import InvalidProof, InvalidRequest
from .. import oidc
from ..base import PRINCIPAL_BUDGET, Entity, VerifiedCaller

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
MAX_TOKEN_BYTES = 8 * 1024
MAX_LIFETIME = 3600  # Google's ID tokens live one hour; a longer one is not Google's
FUTURE_SKEW = 60


@dataclass(frozen=True)
class GcpLoginRequest:
    role: str
    jwt: str = field(repr=False)  # a bearer token: never in a repr


def parse_gcp_login(raw):
    doc = parse_json_object(raw, ("role", "jwt"))
    role = parse_role(doc["role"])
    token = doc["jwt"]
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidRequest(f"field jwt is longer than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise InvalidRequest("field jwt must be ASCII")
    return GcpLoginRequest(role, token)


class GoogleCerts(oidc.RemoteKeys):
    """Google's signing keys by kid: the v1 document ({kid: PEM certificate}) or the v3 JWKS."""

    def __init__(self, pools, url, clock=time.time):
        super().__init__(pools, url, parse=oidc.jwks_or_pem_certificate_keys, label="Google's certificates",
                         backend="google certs", endpoint="certs", clock=clock)


class GcpProofVerifier:
    def __init__(self, settings, certs, clock=time.time):
        """`settings`: the method's GcpSettings (chalicelib/methods/gcp/settings.py)."""
        issuer = oidc.Issuer(name="Google", issuers=GOOGLE_ISSUERS, audience=settings.audience,
                             max_lifetime=MAX_LIFETIME, max_age=settings.max_token_age, algorithms=("RS256",),
                             future_skew=FUTURE_SKEW)
        self._tokens = oidc.TokenVerifier(issuer, certs, clock=clock)

    def proof_hash(self, login):
        """The replay key, known before Google's certificates are fetched."""
        return self._tokens.proof_hash(login.jwt)

    def verify(self, login):
        token = self._tokens.verify(login.jwt)
        return caller_from_claims(token.claims, token.proof_hash)


def verified_claims(login):
    """The claims of a token `verify` accepted (read again by the facts step)."""
    return oidc.unverified(login.jwt).claims


def caller_from_claims(claims, proof_hash):
    """The VerifiedCaller of checked claims. A signed token can still carry claims of an
    unexpected JSON type; each is refused here, by name, so nothing downstream meets one."""
    email, sub = claims.get("email"), claims.get("sub")
    if email is not None and (not isinstance(email, str) or not email):
        raise InvalidProof("the token's email claim is not a string")
    if not isinstance(sub, str) or not sub:
        raise InvalidProof("the token's sub claim is not a string")
    if "email_verified" in claims and not isinstance(claims["email_verified"], bool):
        raise InvalidProof("the token's email_verified claim is not a boolean")
    google = claims.get("google", {})
    if not isinstance(google, dict):
        raise InvalidProof("the token's google claim is not an object")
    gce = google.get("compute_engine")
    claimed, project = None, None
    if gce is not None:
        if not isinstance(gce, dict):
            raise InvalidProof("the token's google.compute_engine claim is not an object")
        for name, kind in (("project_id", str), ("zone", str), ("instance_id", str), ("instance_name", str),
                           ("instance_creation_timestamp", int), ("project_number", int)):
            value = gce.get(name)
            if value is None or not isinstance(value, kind) or isinstance(value, bool) or value == "":
                raise InvalidProof(f"the token's google.compute_engine.{name} claim is missing or not a "
                                   f"{'string' if kind is str else 'number'}")
        claimed, project = Entity("gce-instance", gce["instance_id"]), gce["project_id"]
    principal = email or sub
    # The budgets: a GCE instance token names its instance, which counts its own budget
    # (the default, VerifiedCaller.identity_key). A service-account ID token names only the
    # account: every workload that runs as it (Cloud Run jobs and services, functions,
    # anything holding its key) sends the same claims, so nothing in the token tells them
    # apart, and they share the principal's budget (per_principal, sized apart from the
    # per-machine one). docs/gcp.md says so.
    budget_keys = () if claimed is not None else ((PRINCIPAL_BUDGET, f"service-account:{principal}"),)
    from .identity import quarantine_keys

    own, shared = quarantine_keys(principal, claimed.id if claimed else None)
    return VerifiedCaller(method="gcp", principal=principal, canonical_principal=principal,
                          account=project or service_account_project(email), proof_hash=proof_hash,
                          valid_until=float(claims["exp"]), claimed=claimed, budget_keys=budget_keys,
                          quarantine_own=own, quarantine_shared=shared)


_SA_PROJECT = re.compile(r"^[^@]+@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$")
_APPSPOT = re.compile(r"^([a-z][a-z0-9-]{4,28}[a-z0-9])@appspot\.gserviceaccount\.com$")


def service_account_project(email):
    """The project a service account email belongs to, when its form says so."""
    for pattern in (_SA_PROJECT, _APPSPOT):
        m = pattern.match(email or "")
        if m:
            return m.group(1)
    return None
