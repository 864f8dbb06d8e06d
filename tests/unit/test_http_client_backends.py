"""The broker's own HTTP clients (chalicelib/http_client.py) against real HTTP servers that
misbehave on cue (tests/scripted_http.py): the STS forward and Google's certificates. (Vault's
calls go through hvac: tests/unit/test_vault_client_answers.py.)

No token or secret ID ever appears in an error, its detail or the test output.
"""

from __future__ import annotations

import pytest

from chalicelib.errors import InvalidProof, Unavailable
from chalicelib.http_client import HttpClient
from tests.scripted_http import ScriptedServer, closed_port_url


# ---- the STS forward ------------------------------------------------------------------------


def sts_verifier(forward_url):
    from chalicelib.config import Settings
    from chalicelib.methods.aws.proof import AwsProofVerifier

    settings = Settings.from_env({
        "BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
        "BROKER_SERVER_ID": "broker.test", "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r",
        "BROKER_STS_ENDPOINTS": "https://sts.amazonaws.com", "BROKER_STS_FORWARD_URL": forward_url})
    return AwsProofVerifier(settings.aws, HttpClient())


def sts_proof():
    from datetime import datetime, timezone

    from chalicelib.methods.aws.proof import SignedProof

    auth = ("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE12/20261127/us-east-1/sts/aws4_request, "
            "SignedHeaders=host;x-amz-date;x-vault-aws-iam-server-id, Signature=" + "ab" * 32)
    headers = (("host", "sts.amazonaws.com"), ("x-amz-date", "20261127T190000Z"),
               ("x-vault-aws-iam-server-id", "broker.test"), ("authorization", auth))
    return SignedProof("https://sts.amazonaws.com/", "sts.amazonaws.com", headers, "ab" * 32,
                       datetime(2026, 11, 27, 19, tzinfo=timezone.utc))


GCI = (b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
       b"<Arn>arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0</Arn>"
       b"<UserId>AROAEXAMPLE:i-0123456789abcdef0</UserId><Account>123456789012</Account>"
       b"</GetCallerIdentityResult></GetCallerIdentityResponse>")


def test_sts_forward_sends_the_signed_headers_exactly_and_the_body():
    with ScriptedServer() as sts:
        sts.on("POST", "/", (200, GCI, {"Content-Type": "text/xml"}))
        caller = sts_verifier(sts.url).ask_sts(sts_proof())
        assert caller.principal == "arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0"
        (_, _, headers, body), = sts.seen
    assert body == b"Action=GetCallerIdentity&Version=2011-06-15"
    for name, value in sts_proof().headers:
        assert headers[name] == value  # Host included: the signed one, not the forward URL's
    assert headers["content-length"] == str(len(body))


def test_sts_redirects_are_not_followed():
    with ScriptedServer() as elsewhere, ScriptedServer() as sts:
        elsewhere.on("POST", "/", (200, GCI))
        sts.on("POST", "/", (307, b"", {"Location": elsewhere.url + "/"}))
        with pytest.raises(Unavailable) as caught:
            sts_verifier(sts.url).ask_sts(sts_proof())
        assert caught.value.detail == "STS answered HTTP 307"
        assert elsewhere.seen == []


def test_sts_oversized_and_refusals():
    with ScriptedServer() as sts:
        sts.on("POST", "/", (200, GCI + b"<!--" + b"x" * (1 << 20) + b"-->"))
        with pytest.raises(Unavailable, match="oversized"):
            sts_verifier(sts.url).ask_sts(sts_proof())
        sts.on("POST", "/", (403, b"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>"))
        with pytest.raises(InvalidProof, match="SignatureDoesNotMatch"):
            sts_verifier(sts.url).ask_sts(sts_proof())


def test_sts_unreachable():
    with pytest.raises(Unavailable) as caught:
        sts_verifier(closed_port_url()).ask_sts(sts_proof())
    assert caught.value.message == "STS could not be reached"
    assert caught.value.detail.startswith("STS request failed: ")


# ---- Google's certificates (the GCP method) ---------------------------------------------------


def google_certs(url):
    from chalicelib.methods.gcp.proof import GoogleCerts

    return GoogleCerts(HttpClient(), url + "/oauth2/v1/certs")


def test_google_certs_redirects_are_not_followed_and_answers_are_bounded():
    with ScriptedServer() as elsewhere, ScriptedServer() as google:
        elsewhere.on("GET", "/oauth2/v1/certs", (200, {}))
        google.on("GET", "/oauth2/v1/certs", (302, b"", {"Location": elsewhere.url + "/oauth2/v1/certs"}))
        with pytest.raises(Unavailable) as caught:
            google_certs(google.url).key("k1")
        assert caught.value.detail == "certs endpoint answered HTTP 302"
        assert elsewhere.seen == []
        google.on("GET", "/oauth2/v1/certs", (200, b'{"k1": "' + b"A" * (300 * 1024) + b'"}'))
        with pytest.raises(Unavailable, match="could not be fetched"):
            google_certs(google.url).key("k1")
        google.on("GET", "/oauth2/v1/certs", (200, b"not json"))
        with pytest.raises(Unavailable, match="unreadable"):
            google_certs(google.url).key("k1")


def test_google_certs_unreachable():
    with pytest.raises(Unavailable) as caught:
        google_certs(closed_port_url()).key("k1")
    assert caught.value.detail.startswith("certs fetch failed: ")
