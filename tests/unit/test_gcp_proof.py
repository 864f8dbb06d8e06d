"""GCP ID token checks: each attack on the token is refused, keys come only from the certs URL.

A small certificates server on loopback plays Google's certs endpoint (real HTTP,
Cache-Control honoured); the test key is generated here, never committed.
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from chalicelib.config import Settings
from chalicelib.errors import InvalidProof, InvalidRequest, Unavailable
from chalicelib.http_client import HttpClient
from chalicelib.methods.gcp.proof import GcpProofVerifier, GoogleCerts, parse_gcp_login

AUDIENCE = "https://broker.test"


def make_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key, header=None, claims=None, sign=True, alg_sign=None):
    now = int(time.time())
    h = {"alg": "RS256", "kid": "k1", "typ": "JWT", **(header or {})}
    c = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now, "exp": now + 3600,
         "email": "sa@demo-project.iam.gserviceaccount.com", "email_verified": True, "sub": "1", **(claims or {})}
    c = {k: v for k, v in c.items() if v is not None}
    signed = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    if alg_sign is not None:
        sig = alg_sign(signed.encode())
    elif sign:
        sig = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = b""
    return f"{signed}.{b64(sig)}"


class CertsServer:
    def __init__(self):
        self.certs = {}
        self.cache_control = "public, max-age=3600"
        self.status = 200
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps(outer.certs).encode()
                self.send_response(outer.status)
                self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/oauth2/v1/certs"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture(scope="module")
def keys():
    return make_key(), make_key()


@pytest.fixture
def certs(keys):
    (key, pem), _ = keys
    server = CertsServer()
    server.certs = {"k1": pem}
    yield server
    server.server.shutdown()


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def verifier(certs, clock=None):
    settings = Settings.from_env({
        "BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
        "BROKER_SERVER_ID": "x", "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r", "BROKER_GCP_AUDIENCE": AUDIENCE,
    })
    clock = clock or time.time
    return GcpProofVerifier(settings.gcp, GoogleCerts(HttpClient(), certs.url, clock=clock), clock=clock)


def verify(v, jwt):
    return v.verify(parse_gcp_login(json.dumps({"role": "web", "jwt": jwt}).encode()))


def test_a_google_signed_token_verifies(keys, certs):
    (key, _), _ = keys
    identity = verify(verifier(certs), token(key))
    assert identity.principal == "sa@demo-project.iam.gserviceaccount.com"
    assert len(identity.proof_hash) == 64


def test_alg_none_is_refused(keys, certs):
    (key, _), _ = keys
    with pytest.raises(InvalidProof, match="alg must be RS256"):
        verify(verifier(certs), token(key, header={"alg": "none"}, sign=False))


def test_hs256_signed_with_the_public_key_as_secret_is_refused(keys, certs):
    (key, pem), _ = keys
    forged = token(key, header={"alg": "HS256"},
                   alg_sign=lambda data: hmac.new(pem.encode(), data, hashlib.sha256).digest())
    with pytest.raises(InvalidProof, match="alg must be RS256"):
        verify(verifier(certs), forged)


def test_rs256_header_with_an_hmac_signature_is_refused(keys, certs):
    (key, pem), _ = keys
    forged = token(key, alg_sign=lambda data: hmac.new(pem.encode(), data, hashlib.sha256).digest())
    with pytest.raises(InvalidProof, match="signature does not verify"):
        verify(verifier(certs), forged)


def test_a_token_signed_by_another_key_is_refused(keys, certs):
    _, (other, _) = keys
    with pytest.raises(InvalidProof, match="signature does not verify"):
        verify(verifier(certs), token(other))


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_key_urls_in_the_header_are_refused_and_never_fetched(keys, certs, header):
    (key, _), _ = keys
    with pytest.raises(InvalidProof, match=f"must not carry {header}"):
        verify(verifier(certs), token(key, header={header: "http://127.0.0.1:9/evil"}))
    assert certs.fetches == 0


def test_unknown_kid_is_refused_after_one_refetch(keys, certs):
    (key, _), _ = keys
    clock = Clock()
    v = verifier(certs, clock)
    verify(v, token(key))
    assert certs.fetches == 1
    clock.now += 10
    with pytest.raises(InvalidProof, match="kid is not one of Google's"):
        verify(v, token(key, header={"kid": "unknown"}))
    assert certs.fetches == 2
    # A burst of unknown kids does not make the broker hammer Google.
    for _ in range(5):
        with pytest.raises(InvalidProof):
            verify(v, token(key, header={"kid": "unknown"}))
    assert certs.fetches == 2


def test_rotated_key_is_found_by_refetching(keys, certs):
    (key, pem), (new_key, new_pem) = keys
    clock = Clock()
    v = verifier(certs, clock)
    verify(v, token(key))
    certs.certs = {"k1": pem, "k2": new_pem}
    clock.now += 10
    verify(v, token(new_key, header={"kid": "k2"}))
    assert certs.fetches == 2


def test_certs_are_cached_as_cache_control_says(keys, certs):
    (key, _), _ = keys
    certs.cache_control = "public, max-age=120, must-revalidate, no-transform"
    clock = Clock()
    v = verifier(certs, clock)
    for _ in range(3):
        verify(v, token(key))
    assert certs.fetches == 1
    clock.now += 121
    verify(v, token(key, claims={"iat": int(clock.now), "exp": int(clock.now) + 3600}))
    assert certs.fetches == 2


def test_certs_endpoint_down_is_unavailable(keys, certs):
    (key, _), _ = keys
    certs.status = 503
    with pytest.raises(Unavailable):
        verify(verifier(certs), token(key))


# The times below are taken when the module is collected; each test shifts them to its own
# "now", so a long suite run can't turn a future token into a present one.
COLLECTED_AT = int(time.time())


@pytest.mark.parametrize("claims, match", [
    ({"aud": "https://another.service"}, "audience"),
    ({"iss": "https://evil.example.com"}, "not issued by Google"),
    ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "expired"),
    ({"iat": int(time.time()) + 600, "exp": int(time.time()) + 4200}, "in the future"),
    ({"iat": int(time.time()) - 600, "exp": int(time.time()) + 3000}, "older than 300s"),
    ({"iat": int(time.time()), "exp": int(time.time()) + 7200}, "lifetime"),
    ({"iat": "now"}, "must be integers"),
    ({"exp": None}, "must be integers"),
])
def test_claims_are_checked(keys, certs, claims, match):
    (key, _), _ = keys
    shift = int(time.time()) - COLLECTED_AT
    claims = {k: v + shift if k in ("iat", "exp") and isinstance(v, int) else v for k, v in claims.items()}
    with pytest.raises(InvalidProof, match=match):
        verify(verifier(certs), token(key, claims=claims))


@pytest.mark.parametrize("jwt, error", [
    ("", InvalidProof), ("a.b", InvalidProof), ("not-a-jwt", InvalidProof), ("###.###.###", InvalidProof),
    (b64(b"[1]") + "." + b64(b"{}") + ".", InvalidProof), ("x" * 9000, InvalidRequest), ("é.é.é", InvalidRequest),
])
def test_malformed_tokens_are_refused(certs, jwt, error):
    with pytest.raises(error):
        verify(verifier(certs), jwt)
