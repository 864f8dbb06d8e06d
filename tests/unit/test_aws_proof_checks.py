"""The offline checks of an AWS proof: each forged variant is refused with a message naming the check."""

import base64
import json
from datetime import datetime, timedelta, timezone

import hvac.aws_utils
import pytest

from chalicelib.methods.aws.proof import AwsProofVerifier
from chalicelib.config import Settings
from chalicelib.errors import InvalidProof, InvalidRequest
from chalicelib.methods.aws.request import parse_aws_login
from tests.sigv4 import login_body, sign, signed_login

SERVER_ID = "broker.test"
CREDS = {"access_key_id": "ASIAEXAMPLEEXAMPLE12", "secret_access_key": "not-a-real-secret", "session_token": "tok"}


class NoNetwork:
    """The offline checks must not touch the network; any call here fails the test."""

    def request(self, *a, **k):
        raise AssertionError("the verifier sent a request during offline checks")


def verifier(**env):
    base = {"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
            "BROKER_SERVER_ID": SERVER_ID, "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r",
            "BROKER_STS_ENDPOINTS": "https://sts.amazonaws.com,https://sts.eu-west-1.amazonaws.com"}
    base.update(env)
    return AwsProofVerifier(Settings.from_env(base).aws, NoNetwork())


def check(body):
    return verifier().check(parse_aws_login(json.dumps(body).encode()))


def test_a_well_formed_proof_passes_and_forwards_only_signed_headers():
    body = signed_login(CREDS, "web", SERVER_ID, unsigned_headers={"User-Agent": "x"})
    proof = check(body)
    names = [n for n, _ in proof.headers]
    assert names == ["content-type", "host", "x-amz-date", "x-amz-security-token", "x-vault-aws-iam-server-id", "authorization"]
    assert proof.endpoint == "https://sts.amazonaws.com/" and proof.host == "sts.amazonaws.com"


def test_hvac_generated_request_is_accepted_as_it_is():
    request = hvac.aws_utils.generate_sigv4_auth_request(header_value=SERVER_ID)
    hvac.aws_utils.SigV4Auth("AKIAEXAMPLEEXAMPLE12", "secret", "token").add_auth(request)
    body = {
        "role": "web",
        "iam_http_request_method": request.method,
        "iam_request_url": base64.b64encode(request.url.encode()).decode(),
        "iam_request_body": base64.b64encode(request.body.encode()).decode(),
        "iam_request_headers": base64.b64encode(json.dumps(dict(request.headers)).encode()).decode(),
    }
    proof = check(body)
    assert "x-vault-aws-iam-server-id" in [n for n, _ in proof.headers]


def test_regional_endpoint_needs_matching_region():
    url = "https://sts.eu-west-1.amazonaws.com/"
    assert check(signed_login(CREDS, "web", SERVER_ID, url=url, region="eu-west-1")).host == "sts.eu-west-1.amazonaws.com"
    with pytest.raises(InvalidProof, match="region"):
        check(signed_login(CREDS, "web", SERVER_ID, url=url, region="us-east-1"))


@pytest.mark.parametrize("url", [
    "https://evil.example.com/", "http://sts.amazonaws.com/", "https://sts.amazonaws.com/?Action=GetCallerIdentity",
    "https://sts.amazonaws.com/other", "https://sts.amazonaws.com:8443/", "https://user@sts.amazonaws.com/",
    "https://sts.us-west-2.amazonaws.com/", "https://sts.amazonaws.com.evil.com/", "https://127.0.0.1/",
])
def test_urls_other_than_the_allowed_sts_endpoints_are_refused(url):
    with pytest.raises(InvalidProof, match="not an allowed STS endpoint"):
        check(signed_login(CREDS, "web", SERVER_ID, url=url))


@pytest.mark.parametrize("body", [
    "Action=GetCallerIdentity&Version=2011-06-15&Extra=1",
    "Action=AssumeRole&Version=2011-06-15",
    "Version=2011-06-15&Action=GetCallerIdentity",
    "",
])
def test_bodies_other_than_exactly_get_caller_identity_are_refused(body):
    with pytest.raises(InvalidProof, match="exactly Action=GetCallerIdentity"):
        check(signed_login(CREDS, "web", SERVER_ID, body=body))


def test_method_must_be_post():
    with pytest.raises(InvalidProof, match="must be POST"):
        check(signed_login(CREDS, "web", SERVER_ID, method="GET"))


def test_missing_server_id_is_refused():
    with pytest.raises(InvalidProof, match="Server-ID"):
        check(signed_login(CREDS, "web", None))


def test_wrong_server_id_is_refused():
    with pytest.raises(InvalidProof, match="does not name this broker"):
        check(signed_login(CREDS, "web", "another-service"))


def test_unsigned_server_id_is_refused():
    with pytest.raises(InvalidProof, match="not in SignedHeaders"):
        check(signed_login(CREDS, "web", SERVER_ID, sign_server_id=False))


@pytest.mark.parametrize("header", ["X-Amz-Target", "X-Amz-Content-Sha256", "X-Amz-Expires"])
def test_extra_amz_headers_are_refused_signed_or_not(header):
    with pytest.raises(InvalidProof, match=f"header {header} is not allowed"):
        check(signed_login(CREDS, "web", SERVER_ID, extra_headers={header: "x"}))
    with pytest.raises(InvalidProof, match=f"header {header} is not allowed"):
        check(signed_login(CREDS, "web", SERVER_ID, unsigned_headers={header: "x"}))


def test_other_signed_headers_are_refused():
    with pytest.raises(InvalidProof, match="signed header x-forwarded-host is not allowed"):
        check(signed_login(CREDS, "web", SERVER_ID, extra_headers={"X-Forwarded-Host": "evil"}))


def test_host_header_must_match_the_url():
    with pytest.raises(InvalidProof, match="Host header"):
        check(signed_login(CREDS, "web", SERVER_ID, host="evil.example.com"))


@pytest.mark.parametrize("delta", [timedelta(minutes=-6), timedelta(minutes=6), timedelta(days=-1)])
def test_stale_or_future_dates_are_refused(delta):
    with pytest.raises(InvalidProof, match="X-Amz-Date"):
        check(signed_login(CREDS, "web", SERVER_ID, when=datetime.now(timezone.utc) + delta))


def test_date_within_skew_passes():
    check(signed_login(CREDS, "web", SERVER_ID, when=datetime.now(timezone.utc) - timedelta(minutes=4)))


def test_signature_for_another_service_is_refused():
    with pytest.raises(InvalidProof, match="AWS4-HMAC-SHA256 signature for sts"):
        check(signed_login(CREDS, "web", SERVER_ID, service="iam"))


def test_missing_authorization_is_refused():
    headers = sign(CREDS, server_id=SERVER_ID)
    del headers["Authorization"]
    with pytest.raises(InvalidProof, match="Authorization header is missing"):
        check(login_body("web", headers))


def test_signed_header_absent_from_request_is_refused():
    headers = sign(CREDS, server_id=SERVER_ID)
    del headers["X-Amz-Security-Token"]
    with pytest.raises(InvalidProof, match="signed header x-amz-security-token is missing"):
        check(login_body("web", headers))


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(role="../sys"), "role must be an AppRole name"),
    (lambda b: b.update(iam_request_url="%%%"), "not valid base64"),
    (lambda b: b.update(iam_request_headers=base64.b64encode(b"[1]").decode()), "JSON object"),
    (lambda b: b.update(extra="x"), "unknown field"),
    (lambda b: b.pop("iam_request_body"), "missing field"),
    (lambda b: b.update(role=5), "must be a string"),
])
def test_malformed_fields_are_invalid_requests(mutate, message):
    body = signed_login(CREDS, "web", SERVER_ID)
    mutate(body)
    with pytest.raises(InvalidRequest, match=message):
        check(body)


def test_header_with_two_values_is_refused():
    body = signed_login(CREDS, "web", SERVER_ID)
    headers = json.loads(base64.b64decode(body["iam_request_headers"]))
    headers["X-Amz-Date"] = ["20240101T000000Z", "20240101T000001Z"]
    body["iam_request_headers"] = base64.b64encode(json.dumps(headers).encode()).decode()
    with pytest.raises(InvalidRequest, match="exactly one value"):
        check(body)


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"), (b"{", "not valid JSON"), (b"[]", "JSON object"), (b"x" * (64 * 1024 + 1), "larger than"),
])
def test_unparseable_bodies_are_invalid_requests(raw, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_aws_login(raw)


@pytest.mark.parametrize("amz_date", [
    "20240230T000000Z", "20241301T000000Z", "20240101T240000Z", "20240101T006000Z", "20240101T000060Z",
    "20240101T000000Z\n", " 20240101T000000Z", "2024O101T000000Z", "\u0662\u0660\u0662\u0664" + "0101T000000Z",
    "20240101T000000z", "20240101000000Z", "",
])
def test_dates_strptime_refused_or_that_are_not_ascii_are_refused(amz_date):
    """X-Amz-Date is parsed by position, not strptime (whose first call costs ~3 ms): whatever
    strptime refused is still refused, and so are non-ASCII digits and a trailing newline."""
    checker = verifier()
    checker._clock = lambda: datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
    with pytest.raises(InvalidProof, match="X-Amz-Date"):
        checker._check_date(amz_date, amz_date[:8])


def test_a_date_parses_as_strptime_parsed_it():
    checker = verifier()
    for text in ("20240101T000000Z", "20241231T235959Z", "20240229T120102Z"):
        checker._clock = lambda t=text: datetime.strptime(t, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        assert checker._check_date(text, text[:8]) == datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=timezone.utc)


@pytest.mark.parametrize("value", ["lean", "botocore", ""])
def test_the_withdrawn_aws_clients_setting_stops_the_start_naming_itself(value):
    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match="BROKER_AWS_CLIENTS is no longer a setting"):
        verifier(BROKER_AWS_CLIENTS=value)
