"""Verify a GCP proof: a Google-signed RS256 ID token.

Only RS256, only keys from the configured Google certificates URL (found by
`kid`; never a `jku`/`x5u`/`jwk` the token names), our audience, Google's
issuer, and a short age. The certificates are cached as their Cache-Control says
and fetched again, at most once per request, when a token names an unknown kid.
"""

import base64
import binascii
import hashlib
import json
import re
import threading
import time

from ...bodies import parse_json_object, parse_role
from ...errors import InvalidProof, InvalidRequest, Unavailable
from ...http_pool import HttpError
from ...records import Record, field
from ..base import PRINCIPAL_BUDGET, Entity, VerifiedCaller

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
MAX_TOKEN_BYTES = 8 * 1024
MAX_LIFETIME = 3600  # Google's ID tokens live one hour; a longer one is not Google's
FUTURE_SKEW = 60
MAX_CERTS_BYTES = 256 * 1024
DEFAULT_CERTS_MAX_AGE = 300
MAX_CERTS_MAX_AGE = 24 * 3600
MIN_REFETCH_INTERVAL = 5  # unknown kids can't make us hammer the certs endpoint
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*([0-9]+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(no-store|no-cache)\b", re.IGNORECASE)


class GcpLoginRequest(Record, frozen=True):
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


class GoogleCerts:
    """Google's signing certificates by kid, cached as long as Cache-Control allows."""

    def __init__(self, pools, url, clock=time.time):
        """`pools`: the broker's HTTP pools (chalicelib/http_pool.py: no redirects, bounded reads)."""
        self._pools = pools
        self._url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._keys = {}
        self._fresh_until = 0.0
        self._fetched_at = 0.0

    def key(self, kid):
        with self._lock:
            now = self._clock()
            if now >= self._fresh_until:
                self._fetch(now)
            elif kid not in self._keys and now - self._fetched_at >= MIN_REFETCH_INTERVAL:
                self._fetch(now)  # keys rotate: one refetch for an unknown kid
            return self._keys.get(kid)

    def _fetch(self, now):
        from cryptography import x509

        try:
            response = self._pools.request("GET", self._url, connect_timeout=2, read_timeout=5,
                                           max_bytes=MAX_CERTS_BYTES)
        except HttpError as e:
            raise Unavailable("Google's certificates could not be fetched", backend="google certs",
                              detail=f"certs fetch failed: {e.kind}") from None
        body = response.data
        if response.status != 200 or len(body) > MAX_CERTS_BYTES:
            raise Unavailable("Google's certificates could not be fetched", backend="google certs",
                              detail=f"certs endpoint answered HTTP {response.status}")
        try:
            certs = json.loads(body)
            keys = {kid: x509.load_pem_x509_certificate(pem.encode()).public_key() for kid, pem in certs.items()}
        except (ValueError, TypeError, AttributeError):
            raise Unavailable("Google's certificates are unreadable", backend="google certs",
                              detail="certs endpoint answered a document that is not {kid: PEM certificate}") from None
        self._keys = keys
        self._fetched_at = now
        self._fresh_until = now + _max_age(response.headers.get("Cache-Control", ""))


def _max_age(cache_control):
    if _NO_CACHE.search(cache_control):
        return 0
    m = _MAX_AGE.search(cache_control)
    # at most 12 digits reach int(): a longer number is past the cap anyway (and int() refuses > 4300 digits)
    return min(int(m.group(1)[:12]), MAX_CERTS_MAX_AGE) if m else DEFAULT_CERTS_MAX_AGE


class GcpProofVerifier:
    def __init__(self, settings, certs, clock=time.time):
        """`settings`: the method's GcpSettings (chalicelib/methods/gcp/settings.py)."""
        self._audience = settings.audience
        self._max_age = settings.max_token_age
        self._certs = certs
        self._clock = clock

    def proof_hash(self, login):
        """The replay key, known before Google's certificates are fetched."""
        header, _, _, signature = _split(login.jwt)
        self._check_header(header)
        return hashlib.sha256(signature).hexdigest()

    def verify(self, login):
        header, claims, signed, signature = _split(login.jwt)
        self._check_header(header)
        key = self._certs.key(header["kid"])
        if key is None:
            raise InvalidProof("the token's kid is not one of Google's signing keys")
        _verify_rs256(key, signed, signature)
        self._check_claims(claims)
        return caller_from_claims(claims, hashlib.sha256(signature).hexdigest())

    def _check_header(self, header):
        if header.get("alg") != "RS256":
            raise InvalidProof(f"the token's alg must be RS256, not {str(header.get('alg'))[:16]!r}")
        for name in _FORBIDDEN_HEADERS:
            if name in header:
                raise InvalidProof(f"the token's header must not carry {name}: keys come from Google's certificates only")
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise InvalidProof("the token's header has no kid")
        if header.get("typ", "JWT") != "JWT":
            raise InvalidProof("the token's typ is not JWT")

    def _check_claims(self, claims):
        if not isinstance(claims.get("iss"), str) or claims["iss"] not in GOOGLE_ISSUERS:  # a list is unhashable
            raise InvalidProof("the token was not issued by Google (iss)")
        aud = claims.get("aud")
        if aud != self._audience:
            raise InvalidProof("the token's audience (aud) is not this broker")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_int(iat) or not _is_int(exp):
            raise InvalidProof("the token's iat and exp must be integers")
        now = self._clock()
        if exp - iat > MAX_LIFETIME or exp <= iat:
            raise InvalidProof("the token's lifetime (exp - iat) is not that of a Google ID token")
        if iat > now + FUTURE_SKEW:
            raise InvalidProof("the token was issued in the future (iat)")
        if now >= exp:
            raise InvalidProof("the token has expired (exp)")
        if now - iat > self._max_age:
            raise InvalidProof(f"the token is older than {self._max_age}s (iat); fetch a fresh one")


def verified_claims(login):
    """The claims of a token `verify` accepted (read again by the facts step)."""
    return _split(login.jwt)[1]


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
    return VerifiedCaller(method="gcp", principal=principal, canonical_principal=principal,
                          account=project or service_account_project(email), proof_hash=proof_hash,
                          valid_until=float(claims["exp"]), claimed=claimed, budget_keys=budget_keys)


_SA_PROJECT = re.compile(r"^[^@]+@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$")
_APPSPOT = re.compile(r"^([a-z][a-z0-9-]{4,28}[a-z0-9])@appspot\.gserviceaccount\.com$")


def service_account_project(email):
    """The project a service account email belongs to, when its form says so."""
    for pattern in (_SA_PROJECT, _APPSPOT):
        m = pattern.match(email or "")
        if m:
            return m.group(1)
    return None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _b64url(part):
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidProof("the token is not a JWT (bad base64url)") from None


def _split(token):
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise InvalidProof("the token is not a JWT (header.claims.signature)")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
    except (ValueError, RecursionError):
        raise InvalidProof("the token's header or claims are not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidProof("the token's header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url(parts[2])


def _verify_rs256(key, signed, signature):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidProof("the token's kid names a key that is not RSA")
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidProof("the token's signature does not verify with Google's key") from None
