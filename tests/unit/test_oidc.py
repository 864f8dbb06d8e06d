"""The shared JWT/OIDC module (chalicelib/methods/oidc.py): attacks on the token tried for
real against the GCP verifier, each PyJWT refusal mapped to a clear message with no token
in it, the key sources (Google's v1 PEM document, JWKS) and their cache, and an issuer
shaped like a Kubernetes service-account token's (ES256, nbf) on the same module.
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from chalicelib.config import Settings
from chalicelib.errors import InvalidProof, Unavailable
from chalicelib.http_client import Answer
from chalicelib.methods import oidc
from chalicelib.methods.gcp.proof import GcpLoginRequest, GcpProofVerifier, GoogleCerts

AUDIENCE = "https://broker.test"
NOW = int(time.time())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WEAK_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_certificate(key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


PEM = pem_certificate(RSA_KEY)


class Keys:
    def __init__(self, keys):
        self.keys, self.asked = keys, []

    def key(self, kid):
        self.asked.append(kid)
        return self.keys.get(kid)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over):
    c = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": NOW, "exp": NOW + 3600,
         "email": "sa@demo-project.iam.gserviceaccount.com", "email_verified": True, "sub": "1"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def signed(c=None, kid="k1", key=RSA_KEY, **headers):
    return jwt.encode(claims() if c is None else c, key, algorithm="RS256", headers={"kid": kid, **headers})


def forged(header, c, sign):
    """A token PyJWT will not encode: any header over any claims, `sign`(signing input) or empty."""
    h = {"alg": "RS256", "kid": "k1", "typ": "JWT", **header}
    signing_input = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode())) if sign else ''}"


def RS256(signing_input):
    return jwt.get_algorithm_by_name("RS256").sign(signing_input, RSA_KEY)


def gcp_verifier(keys=None, clock=lambda: NOW):
    settings = Settings.from_env({
        "BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
        "BROKER_SERVER_ID": "x", "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r", "BROKER_GCP_AUDIENCE": AUDIENCE,
    }).gcp
    keys = keys or Keys({"k1": RSA_KEY.public_key(), "ec1": EC_KEY.public_key(), "weak": WEAK_KEY.public_key()})
    return GcpProofVerifier(settings, keys, clock=clock)


def refused(token, match, verifier=None):
    with pytest.raises(InvalidProof, match=match) as caught:
        (verifier or gcp_verifier()).verify(GcpLoginRequest("web", token))
    error = caught.value
    for part in token.split("."):  # no part of the token in what the caller or the audit sees
        if len(part) >= 8:
            assert part not in error.message and part not in error.detail
    return error


def test_a_google_token_minted_with_pyjwt_verifies_in_both_issuer_forms():
    for iss in ("https://accounts.google.com", "accounts.google.com"):
        caller = gcp_verifier().verify(GcpLoginRequest("web", signed(claims(iss=iss))))
        assert caller.principal == "sa@demo-project.iam.gserviceaccount.com"
        assert caller.account == "demo-project" and caller.valid_until == NOW + 3600


# ---- the header: alg, key URLs, crit, typ, kid ---------------------------------------------------


def test_alg_none_is_refused_before_any_key_is_looked_up():
    keys = Keys({"k1": RSA_KEY.public_key()})
    refused(forged({"alg": "none"}, claims(), None), "alg must be RS256", gcp_verifier(keys))
    assert keys.asked == []


def test_an_rs256_header_with_no_signature_is_refused():
    refused(forged({}, claims(), None), "signature does not verify with Google's key")


def test_hs256_keyed_with_the_published_certificate_is_refused():
    refused(forged({"alg": "HS256"}, claims(), lambda d: hmac.new(PEM.encode(), d, hashlib.sha256).digest()),
            "alg must be RS256")


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "rs256", "HS256"])
def test_algs_other_than_rs256_are_refused_even_when_really_signed(alg):
    if alg == "rs256":  # PyJWT won't encode an alg it does not know
        token = forged({"alg": alg}, claims(), RS256)
    else:
        key = {"ES256": EC_KEY, "HS256": "a-secret-that-is-long-enough-for-hs256-0123456789"}.get(alg, RSA_KEY)
        token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "k1"})
    refused(token, "alg must be RS256")


@pytest.mark.parametrize("name, value", [("jku", "http://127.0.0.1:1/keys"), ("x5u", "http://127.0.0.1:1/c"),
                                         ("jwk", {"kty": "RSA"}), ("x5c", ["MIIB"]), ("crit", ["b64"])])
def test_key_urls_embedded_keys_and_crit_are_refused(name, value):
    keys = Keys({"k1": RSA_KEY.public_key()})
    # crit ["b64"] with b64 true is a header PyJWT accepts (jwt.encode drops a b64 true): forged
    token = forged({name: value, "b64": True}, claims(), RS256) if name == "crit" else signed(**{name: value})
    refused(token, f"must not carry {name}", gcp_verifier(keys))
    assert keys.asked == []


def test_a_crit_pyjwt_does_not_understand_is_refused():
    refused(forged({"crit": ["exp"]}, claims(), RS256),
            "header is malformed")


@pytest.mark.parametrize("header, match", [({"typ": "JOSE"}, "typ is not JWT"), ({"typ": "jwt"}, "typ is not JWT"),
                                           ({"kid": ""}, "has no kid"), ({"kid": 5}, "header is malformed"),
                                           ({"kid": None}, "has no kid")])
def test_typ_and_kid_are_checked(header, match):
    h = {k: v for k, v in header.items() if v is not None}
    if header.get("kid", "k1") is None:  # no kid at all
        h = {"alg": "RS256", "typ": "JWT"}
        signing_input = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(claims()).encode())}"
        token = f"{signing_input}.{b64(RS256(signing_input.encode()))}"
    else:
        token = forged(h, claims(), RS256)
    refused(token, match)


def test_no_typ_is_accepted():
    gcp_verifier().verify(GcpLoginRequest("web", signed(typ=None)))


# ---- keys --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # minting the weak key's token
def test_an_unknown_kid_a_foreign_key_a_key_of_another_type_and_a_weak_key_are_refused():
    refused(signed(kid="no-such-key"), "kid is not one of Google's signing keys")
    refused(signed(key=OTHER_KEY), "signature does not verify with Google's key")
    refused(signed(kid="ec1"), "names a key that does not fit RS256")
    refused(signed(kid="weak", key=WEAK_KEY), "too weak")


def test_a_reworded_signature_is_refused_so_the_replay_key_cannot_be_varied():
    token = signed()
    head, sig = token.rsplit(".", 1)
    # the last base64url character of a 256-byte signature carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    reworded = f"{head}.{sig[:-1]}{alphabet[last ^ 1]}"
    assert base64.urlsafe_b64decode(reworded.rsplit(".", 1)[1] + "==") == base64.urlsafe_b64decode(sig + "==")
    refused(reworded, "not a JWT")
    verifier = gcp_verifier()
    assert verifier.proof_hash(GcpLoginRequest("web", token)) == verifier.verify(GcpLoginRequest("web", token)).proof_hash


# ---- claims --------------------------------------------------------------------------------------


@pytest.mark.parametrize("over, match", [
    ({"aud": [AUDIENCE]}, "audience"), ({"aud": "https://another.service"}, "audience"), ({"aud": None}, "audience"),
    ({"iss": ["https://accounts.google.com"]}, "not issued by Google"), ({"iss": None}, "not issued by Google"),
    ({"iss": "https://evil.example"}, "not issued by Google"),
    ({"iat": True}, "must be integers"), ({"exp": float(NOW + 60)}, "must be integers"),
    ({"iat": str(NOW)}, "must be integers"), ({"iat": None}, "iat is missing"),
    ({"exp": NOW + 3601}, "lifetime"), ({"exp": NOW - 1}, "lifetime"), ({"iat": NOW - 200, "exp": NOW}, "expired"),
    ({"iat": NOW + 61, "exp": NOW + 600}, "in the future"), ({"iat": NOW - 301, "exp": NOW + 600}, "older than 300s"),
    ({"nbf": NOW + 61}, "not valid yet"), ({"nbf": True}, "not valid yet"),
    ({"sub": 5}, "sub claim is not a string"), ({"jti": 5}, "jti claim is not a string"),
])
def test_claims_are_checked(over, match):
    c = claims(**over)
    refused(forged({}, c, RS256) if not isinstance(c.get("iss", ""), str) else signed(c), match)


def test_the_edges_of_the_time_window_are_accepted():
    for over in ({"iat": NOW + 60, "exp": NOW + 3660}, {"iat": NOW - 300, "exp": NOW + 1}, {"nbf": NOW + 60}):
        gcp_verifier().verify(GcpLoginRequest("web", signed(claims(**over))))


# ---- key sources and their cache -------------------------------------------------------------------


class Pools:
    """The HTTP pools' contract (chalicelib/http_client.py), answering from a script."""

    def __init__(self, body, cache_control="public, max-age=3600", status=200):
        self.body, self.cache_control, self.status, self.fetches = body, cache_control, status, 0

    def request(self, method, url, **kwargs):
        self.fetches += 1
        assert method == "GET" and kwargs["max_bytes"] == oidc.MAX_KEYS_BYTES
        body = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return Answer(self.status, {"Cache-Control": self.cache_control}, body[:kwargs["max_bytes"] + 1])


def jwk(key, kid, alg):
    return {**(RSAAlgorithm if alg.startswith("RS") else ECAlgorithm).to_jwk(key.public_key(), as_dict=True),
            "kid": kid, "alg": alg, "use": "sig"}


def test_google_certs_read_the_v1_pem_document_and_the_v3_jwks():
    for doc in ({"k1": PEM}, {"keys": [jwk(RSA_KEY, "k1", "RS256")]}):
        clock = [float(NOW)]
        certs = GoogleCerts(Pools(doc), "https://certs.invalid/", clock=lambda: clock[0])
        assert certs.key("k1").public_numbers() == RSA_KEY.public_key().public_numbers()
        gcp_verifier(certs).verify(GcpLoginRequest("web", signed()))


@pytest.mark.parametrize("cache_control, cached_for", [
    ("public, max-age=120, must-revalidate", 120), ("no-store", 0), ("no-cache, max-age=600", 0),
    ("max-age=" + "9" * 20, oidc.MAX_KEYS_MAX_AGE), ("", oidc.DEFAULT_KEYS_MAX_AGE)])
def test_keys_are_cached_as_cache_control_says_at_most_a_day(cache_control, cached_for):
    clock = [float(NOW)]
    pools = Pools({"k1": PEM}, cache_control)
    certs = GoogleCerts(pools, "https://certs.invalid/", clock=lambda: clock[0])
    certs.key("k1")
    clock[0] += max(cached_for - 1, 0)
    certs.key("k1")
    assert pools.fetches == (2 if cached_for == 0 else 1)
    clock[0] += 1
    certs.key("k1")
    assert pools.fetches == (3 if cached_for == 0 else 2)


def test_unknown_kids_refetch_at_most_once_per_five_seconds():
    clock = [float(NOW)]
    pools = Pools({"k1": PEM})
    certs = GoogleCerts(pools, "https://certs.invalid/", clock=lambda: clock[0])
    assert certs.key("k1") is not None and pools.fetches == 1
    for _ in range(10):
        assert certs.key("rotated") is None
    assert pools.fetches == 1  # the first fetch was less than 5 s ago
    clock[0] += oidc.MIN_REFETCH_INTERVAL
    for _ in range(10):
        certs.key("rotated")
    assert pools.fetches == 2


@pytest.mark.parametrize("pools, match", [
    (Pools({"k1": PEM}, status=503), "could not be fetched"),
    (Pools(b'{"k1": "' + b"A" * oidc.MAX_KEYS_BYTES + b'"}'), "could not be fetched"),
    (Pools({"keys": [{"kty": "RSA", "kid": "k1"}]}), "unreadable"),
    (Pools({"keys": []}), "unreadable"),
    (Pools(b"[" * 100000), "unreadable"),
])
def test_a_keys_endpoint_that_fails_is_unavailable(pools, match):
    with pytest.raises(Unavailable, match=match) as caught:
        GoogleCerts(pools, "https://certs.invalid/").key("k1")
    assert caught.value.status == 503 and caught.value.backend == "google certs"


# ---- the same module for another issuer ----------------------------------------------------------------


def test_an_issuer_shaped_like_a_kubernetes_service_account_token():
    issuer = oidc.Issuer(name="the cluster", issuers=("https://kubernetes.default.svc.cluster.local",),
                         audience="vault", max_lifetime=48 * 3600, max_age=48 * 3600, algorithms=("ES256", "RS256"))
    keys = oidc.RemoteKeys(Pools({"keys": [jwk(EC_KEY, "e1", "ES256"), jwk(RSA_KEY, "r1", "RS256")]}),
                           "https://cluster.invalid/openid/v1/jwks", parse=oidc.jwks_keys,
                           label="the cluster's keys", backend="kubernetes jwks", clock=lambda: NOW)
    verifier = oidc.TokenVerifier(issuer, keys, clock=lambda: NOW)
    c = {"iss": "https://kubernetes.default.svc.cluster.local", "aud": "vault", "iat": NOW, "nbf": NOW,
         "exp": NOW + 3600, "sub": "system:serviceaccount:team-a:web"}
    for kid, key, alg in (("e1", EC_KEY, "ES256"), ("r1", RSA_KEY, "RS256")):
        got = verifier.verify(jwt.encode(c, key, algorithm=alg, headers={"kid": kid}))
        assert got.claims["sub"] == "system:serviceaccount:team-a:web"
    with pytest.raises(InvalidProof, match="does not fit ES256"):
        verifier.verify(jwt.encode(c, EC_KEY, algorithm="ES256", headers={"kid": "r1"}))
    with pytest.raises(InvalidProof, match="not issued by the cluster"):
        verifier.verify(jwt.encode({**c, "iss": "https://accounts.google.com"}, EC_KEY, algorithm="ES256",
                                   headers={"kid": "e1"}))
