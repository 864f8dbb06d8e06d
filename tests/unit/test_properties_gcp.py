"""Property-based tests (hypothesis) of the GCP proof parsers: the login body, the JWT's
three parts (`oidc.unverified`), its header and claims (`GcpProofVerifier`, with tokens really
signed by a test key so that the claim checks are reached), and Google's certificates
document and Cache-Control.

Only InvalidRequest, InvalidProof and Unavailable may leave; what is accepted holds
the invariants the rules rely on.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from chalicelib.methods.gcp import proof as gcp_proof
from chalicelib.config import Settings
from chalicelib.errors import InvalidProof, InvalidRequest, Unavailable
from chalicelib.methods.gcp.proof import GcpProofVerifier, GoogleCerts, parse_gcp_login
from chalicelib.methods.oidc import unverified
from chalicelib.methods.base import VerifiedCaller as GoogleIdentity

AUDIENCE = "https://broker.test"
NOW = 1_800_000_000


def _key_and_pem(key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


KEY, PEM = _key_and_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_KEY, EC_PEM = _key_and_pem(ec.generate_private_key(ec.SECP256R1()))


class Certs:
    """Google's keys: k1 (RSA, the signer) and ec1 (not RSA)."""

    def key(self, kid):
        return {"k1": KEY.public_key(), "ec1": EC_KEY.public_key()}.get(kid)


def settings():
    return Settings.from_env({"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r",
                              "BROKER_VAULT_SECRET_ID_SECRET": "s", "BROKER_SERVER_ID": "x",
                              "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r", "BROKER_GCP_AUDIENCE": AUDIENCE}).gcp


VERIFIER = GcpProofVerifier(settings(), Certs(), clock=lambda: NOW)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header, claims, *, raw_header=None, raw_claims=None, sign=True):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    c = raw_claims if raw_claims is not None else json.dumps(claims).encode()
    signed = f"{b64url(h)}.{b64url(c)}"
    sig = KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256()) if sign else b"x"
    return f"{signed}.{b64url(sig)}"


json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) | st.floats()
                | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


def verify(jwt):
    try:
        return VERIFIER.verify(gcp_proof.GcpLoginRequest("web", jwt))
    except InvalidProof:
        return None


# ---- the login body and the token's parts ----------------------------------------------------


@given(st.binary(max_size=2048) | st.dictionaries(st.sampled_from(["role", "jwt", "x"]), json_values, max_size=3).map(
    lambda d: json.dumps(d).encode()))
def test_any_body_is_parsed_or_refused_with_400(raw):
    try:
        login = parse_gcp_login(raw)
    except InvalidRequest:
        return
    assert login.jwt.isascii() and len(login.jwt) <= gcp_proof.MAX_TOKEN_BYTES


@given(st.text(max_size=300) | st.lists(st.text(alphabet="AZaz09-_=+/.", max_size=40), max_size=5).map(".".join))
@example("..")
@example("a.b.")
@example("e30.e30.")
@example("W10.e30.c2ln")  # header []
@example(b64url(b"{" * 3000) + ".e30.c2ln")
@example(b64url(b'{"a": 1e999999}') + ".e30.c2ln")
@example(b64url(b"\xff\xfe") + ".e30.c2ln")
@example("\u00e9.e30.c2ln")
def test_any_text_splits_into_a_jwt_or_is_refused(text):
    try:
        parts = unverified(text)
    except InvalidProof:
        return
    assert isinstance(parts.header, dict) and isinstance(parts.claims, dict)
    assert isinstance(parts.signature, bytes)
    verify(text)


# ---- header and claims of tokens really signed by the key --------------------------------------

headers = st.fixed_dictionaries({}, optional={
    "alg": st.sampled_from(["RS256", "none", "HS256", "RS512", "rs256"]) | json_values,
    "kid": st.sampled_from(["k1", "ec1", "k2", ""]) | json_values,
    "typ": st.sampled_from(["JWT", "jwt", "JOSE"]) | json_values,
    "jku": st.just("http://127.0.0.1:1/keys"), "x5u": json_values, "jwk": json_values, "crit": json_values,
    "x5c": json_values,
})
times = st.sampled_from([NOW, NOW - 10, NOW - 299, NOW - 301, NOW - 3600, NOW + 59, NOW + 61, NOW + 3600,
                         NOW + 3601, 0, -1]) | st.integers() | json_values
claims = st.fixed_dictionaries({}, optional={
    "iss": st.sampled_from(["https://accounts.google.com", "accounts.google.com", "https://evil.example"]) | json_values,
    "aud": st.sampled_from([AUDIENCE, AUDIENCE + "/", "other"]) | json_values,
    "iat": times, "exp": times,
    "email": st.sampled_from(["sa@demo-project.iam.gserviceaccount.com"]) | json_values,
    "sub": json_values, "email_verified": json_values,
    "google": json_values | st.fixed_dictionaries({"compute_engine": json_values | st.fixed_dictionaries(
        {}, optional={"project_id": json_values, "instance_id": json_values, "zone": json_values,
                      "instance_name": json_values})}),
})


@given(headers, claims)
@example({"alg": "RS256", "kid": "k1"}, {"iss": ["https://accounts.google.com"], "aud": AUDIENCE, "iat": NOW, "exp": NOW + 600})
@example({"alg": "RS256", "kid": "k1"}, {"iss": {"x": 1}, "aud": AUDIENCE, "iat": NOW, "exp": NOW + 600})
@example({"alg": "RS256", "kid": "k1"}, {"iss": "accounts.google.com", "aud": [AUDIENCE], "iat": NOW, "exp": NOW + 600})
@example({"alg": "RS256", "kid": "k1"}, {"iss": "accounts.google.com", "aud": AUDIENCE, "iat": 10**400, "exp": 10**400 + 1})
@example({"alg": "RS256", "kid": "ec1"}, {})
@example({"alg": "RS256", "kid": ["k1"]}, {})
@example({"alg": "RS256", "kid": {"k1": 1}}, {})
def test_signed_tokens_with_any_header_and_claims_are_verified_or_refused(header, claim_set):
    got = verify(token(header, claim_set))
    if got is None:
        return
    # Accepted: exactly what the rules and the replay store rely on.
    assert isinstance(got, GoogleIdentity)
    assert header["alg"] == "RS256" and header["kid"] == "k1" and header.get("typ", "JWT") == "JWT"
    assert not set(header) & {"jku", "x5u", "jwk", "x5c", "crit"}
    assert claim_set["iss"] in ("https://accounts.google.com", "accounts.google.com")
    assert claim_set["aud"] == AUDIENCE
    iat, exp = claim_set["iat"], claim_set["exp"]
    assert type(iat) is int and type(exp) is int
    assert iat < exp <= iat + gcp_proof.MAX_LIFETIME and NOW < exp and iat <= NOW + gcp_proof.FUTURE_SKEW
    assert got.valid_until == float(exp) and len(got.proof_hash) == 64
    got.principal, got.account  # noqa: B018 -- must not raise whatever the claims hold


@given(headers, claims)
def test_the_signature_covers_header_and_claims(header, claim_set):
    """A token whose signature does not verify is never accepted, whatever it claims."""
    assert verify(token(header, claim_set, sign=False)) is None


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_signed_tokens_with_random_bytes_as_header_or_claims_are_refused(raw_header, raw_claims):
    assert verify(token({}, {}, raw_header=raw_header, raw_claims=raw_claims)) is None


# ---- Google's certificates ----------------------------------------------------------------------


class FakeGoogle:
    """chalicelib.http_client.HttpClient' contract: an Answer with at most max_bytes + 1 bytes of the
    body (the pools follow no redirect; the real certs endpoint: tests/unit/test_gcp_proof.py)."""

    def __init__(self, status, body, cache_control):
        self.answer = (status, body, cache_control)

    def request(self, method, url, **kwargs):
        from chalicelib.http_client import Answer

        assert method == "GET"
        status, body, cache_control = self.answer
        headers = {"Cache-Control": cache_control} if cache_control is not None else {}
        return Answer(status, headers, body[:kwargs["max_bytes"] + 1])


cert_docs = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8), st.sampled_from([PEM, EC_PEM, PEM[:100], "", "x"]) | json_values,
                    max_size=3).map(lambda d: json.dumps(d).encode()),
)
cache_controls = st.none() | st.text(max_size=60) | st.sampled_from(
    ["max-age=0", "public, max-age=19845, must-revalidate, no-transform", "no-store", "max-age=-1",
     "max-age=" + "9" * 30, "max-age = 5", "no-cache, max-age=600"])


@given(st.sampled_from([200, 200, 200, 304, 404, 500, 503]), cert_docs, cache_controls,
       st.sampled_from(["k1", "kid", ""]))
@example(200, json.dumps({"k1": PEM}).encode(), "max-age=" + "9" * 5000, "k1")
@example(200, json.dumps({"k1": PEM}).encode(), "max-age=\u0663\u0660", "k1")  # Arabic-Indic digits
def test_any_certificates_answer_gives_keys_or_unavailable(status, body, cache_control, kid):
    certs = GoogleCerts(FakeGoogle(status, body, cache_control), "http://certs.invalid/", clock=lambda: NOW)
    try:
        key = certs.key(kid)
    except Unavailable:
        return
    assert status == 200
    assert key is None or hasattr(key, "verify")
