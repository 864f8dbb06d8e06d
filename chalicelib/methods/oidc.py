"""Signed JWTs from an OIDC-style issuer, verified with PyJWT: shared by the methods whose
proof is such a token (GCP today; a Kubernetes service-account token next).

A method gives an `Issuer` (who signs, for which audience, with which algorithms, how
long a token may live and how old it may be) and a key source (`RemoteKeys`: a keys
document fetched with the broker's HTTP client, or anything with `key(kid)`). PyJWT parses
the token, checks the signature with the key we chose by kid, and checks `iss`, `aud`
(strictly: one string, equal), the presence of `iss`/`aud`/`iat`/`exp` and the type of
`sub`/`jti`. On top, checks PyJWT does not make:

- the header: `alg` in the issuer's list, checked before any key is fetched; no
  `jku`/`x5u`/`jwk`/`x5c`/`crit` (keys come from our key source only); `typ` "JWT" if
  present; a non-empty `kid`; the key must fit the alg;
- the times, read from our clock (PyJWT's read the system clock and take `true` or
  `1.5` for an integer): `iat`/`exp` integers, not booleans; a lifetime of at most
  `max_lifetime`; `iat` at most `future_skew` ahead; not expired (no leeway); `iat` at
  most `max_age` old; `nbf`, if present, an integer not later than now + `future_skew`.

Messages name the failed check, never the token. PyJWKClient is not used: it reads JWKS
only (Google's v1 endpoint answers PEM certificates), keeps keys for a fixed time instead
of by Cache-Control, puts no cap on the answer's size and opens its own connections
(docs/gcp.md).
"""

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass

import jwt
from jwt import exceptions as jwterr

from ..errors import InvalidProof, Unavailable
from ..http_client import HttpError

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
MAX_KEYS_BYTES = 256 * 1024
DEFAULT_KEYS_MAX_AGE = 300
MAX_KEYS_MAX_AGE = 24 * 3600
MIN_REFETCH_INTERVAL = 5  # unknown kids can't make us hammer the keys endpoint
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*([0-9]+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(no-store|no-cache)\b", re.IGNORECASE)
_MALFORMED = "the token is not a JWT (three base64url parts: a JSON object header, JSON object claims, a signature)"


@dataclass(frozen=True)
class Issuer:
    """What a method accepts. `name` goes into messages ("not issued by Google")."""

    name: str
    issuers: tuple  # the accepted `iss` values
    audience: str
    max_lifetime: int
    max_age: int
    algorithms: tuple = ("RS256",)
    future_skew: int = 60
    typ: str = "JWT"  # required when the header carries typ


@dataclass(frozen=True)
class Verified:
    """A token that passed every check: its claims and its replay key."""

    claims: dict
    proof_hash: str


@dataclass(frozen=True)
class Unverified:
    """A token's parts, parsed by PyJWT and not yet trusted."""

    header: dict
    claims: dict
    signature: bytes


def unverified(token):
    """The header, claims and signature of `token`, or InvalidProof if it is not a JWT."""
    try:
        doc = jwt.decode_complete(token, options={"verify_signature": False})
    except jwterr.DecodeError:
        raise InvalidProof(_MALFORMED) from None
    except jwterr.InvalidTokenError:  # PyJWT's header checks: a kid that is not a string, crit, b64
        raise InvalidProof("the token's header is malformed (kid, crit or b64)") from None
    return Unverified(doc["header"], doc["payload"], doc["signature"])


class TokenVerifier:
    def __init__(self, issuer, keys, clock=time.time):
        """`keys`: anything with `key(kid)` -> a public key (cryptography) or None."""
        self.issuer = issuer
        self._keys = keys
        self._clock = clock

    def proof_hash(self, token):
        """The replay key (SHA-256 of the signature bytes), known before any key is fetched."""
        parts = unverified(token)
        self._check_header(parts.header)
        return _signature_hash(parts)

    def verify(self, token):
        """A `Verified` token, or InvalidProof naming the check that failed."""
        parts = unverified(token)
        header = parts.header
        self._check_header(header)
        key = self._keys.key(header["kid"])
        if key is None:
            raise InvalidProof(f"the token's kid is not one of {self.issuer.name}'s signing keys")
        self._check_key_fits(key, header["alg"])
        claims = self._decode(token, key)
        self._check_times(claims)
        return Verified(claims, _signature_hash(parts))

    def _check_header(self, header):
        # security-critical: the alg is ours to choose (no none, no HS256 keyed with a public key)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.issuer.algorithms:
            raise InvalidProof(f"the token's alg must be {' or '.join(self.issuer.algorithms)}, "
                               f"not {str(alg)[:16]!r}")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise InvalidProof(f"the token's header must not carry {name}: keys come from "
                                   f"{self.issuer.name}'s published keys only")
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise InvalidProof("the token's header has no kid")
        if header.get("typ", self.issuer.typ) != self.issuer.typ:
            raise InvalidProof(f"the token's typ is not {self.issuer.typ}")

    def _check_key_fits(self, key, alg):
        try:
            jwt.get_algorithm_by_name(alg).prepare_key(key)
        except (TypeError, ValueError, jwterr.InvalidKeyError):
            raise InvalidProof(f"the token's kid names a key that does not fit {alg}") from None

    def _decode(self, token, key):
        issuer = self.issuer
        try:
            return jwt.decode(
                token, key, algorithms=list(issuer.algorithms), audience=issuer.audience,
                issuer=list(issuer.issuers),
                options={"require": ["iss", "aud", "iat", "exp"], "strict_aud": True,
                         "enforce_minimum_key_length": True,
                         # our clock, and integers only: _check_times
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False})
        except jwterr.InvalidSignatureError:
            raise InvalidProof(f"the token's signature does not verify with {issuer.name}'s key") from None
        except jwterr.MissingRequiredClaimError as e:
            raise InvalidProof(_missing(e.claim, issuer.name)) from None
        except jwterr.InvalidIssuerError:
            raise InvalidProof(f"the token was not issued by {issuer.name} (iss)") from None
        except jwterr.InvalidAudienceError:
            raise InvalidProof("the token's audience (aud) is not this broker") from None
        except jwterr.InvalidSubjectError:
            raise InvalidProof("the token's sub claim is not a string") from None
        except jwterr.InvalidJTIError:
            raise InvalidProof("the token's jti claim is not a string") from None
        except jwterr.InvalidKeyError:
            raise InvalidProof(f"the token's kid names a key too weak for {issuer.name}'s tokens") from None
        except jwterr.InvalidTokenError:  # PyJWT's other refusals (the ones above are checked first by us)
            raise InvalidProof(_MALFORMED) from None

    def _check_times(self, claims):
        issuer = self.issuer
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_int(iat) or not _is_int(exp):
            raise InvalidProof("the token's iat and exp must be integers")
        now = self._clock()
        if exp - iat > issuer.max_lifetime or exp <= iat:
            raise InvalidProof(f"the token's lifetime (exp - iat) is not that of a {issuer.name} token")
        if iat > now + issuer.future_skew:
            raise InvalidProof("the token was issued in the future (iat)")
        if now >= exp:
            raise InvalidProof("the token has expired (exp)")
        if now - iat > issuer.max_age:
            raise InvalidProof(f"the token is older than {issuer.max_age}s (iat); fetch a fresh one")
        if "nbf" in claims:
            nbf = claims["nbf"]
            if not _is_int(nbf) or nbf > now + issuer.future_skew:
                raise InvalidProof("the token is not valid yet (nbf)")


def _signature_hash(parts):
    # PyJWT decodes base64url strictly (one encoding per signature): a reworded token can't pass for a new proof
    return hashlib.sha256(parts.signature).hexdigest()


def _missing(claim, name):
    if claim in ("iat", "exp"):
        return f"the token's iat and exp must be integers ({claim} is missing)"
    if claim == "iss":
        return f"the token was not issued by {name} (iss)"
    if claim == "aud":
        return "the token's audience (aud) is not this broker"
    return f"the token has no {claim} claim"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# ---- keys ----------------------------------------------------------------------------------


def jwks_keys(doc):
    """A JWKS document ({"keys": [...]}) -> {kid: public key}. PyJWT reads the keys; keys
    without a kid, or of a type PyJWT can't use, are left out."""
    keys = jwt.PyJWKSet.from_dict(doc).keys
    return {k.key_id: k.key for k in keys if isinstance(k.key_id, str) and k.key_id}


def pem_certificate_keys(doc):
    """Google's v1 document ({kid: PEM certificate}) -> {kid: public key}."""
    from cryptography import x509

    return {kid: x509.load_pem_x509_certificate(pem.encode()).public_key() for kid, pem in doc.items()}


def jwks_or_pem_certificate_keys(doc):
    """Either form, by its shape: Google publishes both (oauth2/v3/certs and oauth2/v1/certs)."""
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        return jwks_keys(doc)
    return pem_certificate_keys(doc)


class RemoteKeys:
    """An issuer's public keys by kid, from a URL, cached as long as Cache-Control allows
    (DEFAULT_KEYS_MAX_AGE without one, none for no-store/no-cache, at most a day) and
    fetched again, at most once per MIN_REFETCH_INTERVAL, for a kid we don't know."""

    def __init__(self, pools, url, *, parse, label, backend, endpoint="keys", clock=time.time):
        """`pools`: the broker's HTTP client (chalicelib/http_client.py: no redirects, bounded
        reads). `parse`: the document (JSON) -> {kid: public key}. `label` ("Google's
        certificates"), `backend` and `endpoint` name the source in errors."""
        self._pools = pools
        self._url = url
        self._parse = parse
        self._label = label
        self._backend = backend
        self._endpoint = endpoint
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
        try:
            response = self._pools.request("GET", self._url, connect_timeout=2, read_timeout=5,
                                           max_bytes=MAX_KEYS_BYTES)
        except HttpError as e:
            raise self._unavailable("could not be fetched", f"{self._endpoint} fetch failed: {e.kind}") from None
        body = response.data
        if response.status != 200 or len(body) > MAX_KEYS_BYTES:
            raise self._unavailable("could not be fetched", f"{self._endpoint} endpoint answered HTTP {response.status}")
        try:
            keys = self._parse(json.loads(body))
        except (ValueError, TypeError, AttributeError, RecursionError, jwterr.PyJWTError):
            raise self._unavailable("are unreadable", f"{self._endpoint} endpoint answered a document that is not "
                                                      "a set of public keys by kid") from None
        self._keys = keys
        self._fetched_at = now
        self._fresh_until = now + cache_max_age(response.headers.get("Cache-Control", ""))

    def _unavailable(self, what, detail):
        return Unavailable(f"{self._label} {what}", backend=self._backend, detail=detail)


def cache_max_age(cache_control):
    """Seconds a keys document may be kept, from its Cache-Control header."""
    if _NO_CACHE.search(cache_control):
        return 0
    m = _MAX_AGE.search(cache_control)
    # at most 12 digits reach int(): a longer number is past the cap anyway (and int() refuses > 4300 digits)
    return min(int(m.group(1)[:12]), MAX_KEYS_MAX_AGE) if m else DEFAULT_KEYS_MAX_AGE
