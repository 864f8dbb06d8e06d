"""The lean AWS clients (chalicelib/lean_aws/) against botocore and a scripted HTTP server.

- SigV4: byte for byte botocore's SigV4Auth (moto verifies it for real in
  tests/service/test_lean_aws.py and in every issuance test);
- endpoints: where botocore would send the same call, per partition;
- retries and errors: what botocore's standard mode does, tried against a real local
  HTTP server that answers as scripted (throttling, 5xx, timeouts, a lost answer,
  a corrupted body, an unreadable one).
"""

import datetime
import http.server
import json
import pathlib
import threading
import time
import zlib

import pytest

from chalicelib import lean_aws
from chalicelib.lean_aws import endpoints, query
from chalicelib.lean_aws.client import LeanClient
from chalicelib.lean_aws.credentials import Credentials, FixedCredentials, OwnCredentials
from chalicelib.lean_aws.sigv4 import sign_post
from chalicelib.http_pool import Pools

FIXED = datetime.datetime(2026, 11, 27, 19, 30, 5, tzinfo=datetime.timezone.utc)
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


# ---- SigV4 ----------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLE//token=="])
@pytest.mark.parametrize("service,headers,body", [
    ("dynamodb", {"content-type": "application/x-amz-json-1.0", "x-amz-target": "DynamoDB_20120810.GetItem"},
     b'{"TableName":"t","Key":{"k":{"S":"v"}}}'),
    ("iam", {"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
     b"Action=GetRole&Version=2010-05-08&RoleName=demo-node"),
    ("sts", {"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
     b"Action=GetCallerIdentity&Version=2011-06-15"),
])
def test_the_signature_is_botocores(monkeypatch, service, headers, body, token):
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED.replace(tzinfo=None))
    host = f"{service}.eu-west-1.amazonaws.com"
    request = AWSRequest(method="POST", url=f"https://{host}/", data=body, headers=dict(headers))
    botocore.auth.SigV4Auth(BotoCredentials("AKIDEXAMPLE", SECRET, token), service, "eu-west-1").add_auth(request)

    mine = sign_post(host=host, headers=headers, body=body, service=service, region="eu-west-1",
                     credentials=Credentials("AKIDEXAMPLE", SECRET, token), now=FIXED.timestamp())
    assert mine["authorization"] == request.headers["Authorization"]
    assert mine["x-amz-date"] == request.headers["X-Amz-Date"]
    assert mine.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


def test_credentials_never_show_the_secret_or_token():
    creds = Credentials("AKIDEXAMPLE", SECRET, "the-token")
    assert SECRET not in repr(creds) and "the-token" not in repr(creds) and "AKIDEXAMPLE" in repr(creds)
    assert SECRET not in repr(FixedCredentials("AKIDEXAMPLE", SECRET).get())


def test_own_credentials_follow_the_environment_at_each_call(monkeypatch):
    own = OwnCredentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDONE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "one")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    assert own.get() == ("AKIDONE", "one", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTWO")  # rotated (a SnapStart restore, a new session)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    assert own.get() == ("AKIDTWO", "one", "tok")


# ---- endpoints ------------------------------------------------------------------

class _Stop(Exception):
    pass


_ONE_CALL = {"dynamodb": ("describe_table", {"TableName": "t"}), "secretsmanager": ("get_secret_value", {"SecretId": "s"}),
             "ecs": ("describe_tasks", {"cluster": "c", "tasks": ["t"]}),
             "ec2": ("describe_instances", {"InstanceIds": ["i-0123456789abcdef0"]}),
             "iam": ("get_role", {"RoleName": "r"}), "sts": ("get_caller_identity", {})}


def _botocore_target(service, region):
    """(host, signing region) of a botocore client's request, captured before it is sent."""
    import botocore.session

    client = botocore.session.get_session().create_client(service, region_name=region, aws_access_key_id="AKID",
                                                          aws_secret_access_key="x")
    seen = {}

    def capture(request, **_):
        seen["host"] = request.url.split("/")[2]
        seen["region"] = request.headers["Authorization"].decode().split("/")[2]
        raise _Stop()

    client.meta.events.register("before-send", capture)
    name, params = _ONE_CALL[service]
    with pytest.raises(_Stop):
        getattr(client, name)(**params)
    return seen["host"], seen["region"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"])
@pytest.mark.parametrize("service", sorted(lean_aws.SERVICES))
def test_endpoints_are_where_botocore_sends_the_call(service, region):
    host, signing_region, scheme = endpoints.resolve(service, region, environ={})
    assert (host, signing_region) == _botocore_target(service, region) and scheme == "https"


def test_settings_that_change_botocores_endpoint_leave_the_call_to_botocore():
    assert endpoints.resolve("dynamodb", "us-east-1", environ={"AWS_USE_FIPS_ENDPOINT": "true"}) is None
    assert endpoints.resolve("sts", "us-east-1", environ={"AWS_ENDPOINT_URL_STS": "https://x"}) is None
    assert endpoints.resolve("ec2", "us-iso-east-1", environ={}) is None
    assert endpoints.resolve("dynamodb", "us-east-1", "http://127.0.0.1:5000/prefix", environ={}) is None
    assert endpoints.resolve("dynamodb", "us-east-1", "http://127.0.0.1:5000/", environ={}) == (
        "127.0.0.1:5000", "us-east-1", "http")
    assert lean_aws.make_client("s3", "us-east-1", endpoint_url=None, pools=Pools(), own_credentials=None) is None


# ---- a scripted server: retries and errors -----------------------------------------------

class Script(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers, self.requests = [], []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.requests.append((dict(self.headers), body))
        status, payload, headers, delay = self.server.answers.pop(0)
        time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        # DynamoDB's x-amz-crc32 on every 2xx, unless the script sets it (None: left out)
        crc32 = {"x-amz-crc32": str(zlib.crc32(data))} if status < 300 else {}
        for name, value in {"content-length": str(len(data)), **crc32, **headers}.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    s = Script()
    yield s
    s.shutdown()


def _client(server, service="dynamodb"):
    sleeps = []
    client = lean_aws.make_client(service, "us-east-1", endpoint_url=server.url, pools=Pools(),
                             own_credentials=FixedCredentials("AKIDEXAMPLE", SECRET))
    client._sleep = sleeps.append
    return client, sleeps


def _answer(server, status, payload, headers=None, delay=0.0):
    server.answers.append((status, payload, headers or {}, delay))


def _ddb_error(code, **extra):
    return {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": f"{code} happened", **extra}


def test_an_answer_is_awss_json_and_the_request_is_signed_json(server):
    client, _ = _client(server)
    _answer(server, 200, {"Item": {"k": {"S": "v"}}})
    assert client.get_item(TableName="t", Key={"k": {"S": "v"}})["Item"] == {"k": {"S": "v"}}
    headers, body = server.requests[0]
    assert json.loads(body) == {"TableName": "t", "Key": {"k": {"S": "v"}}}
    assert headers["x-amz-target"] == "DynamoDB_20120810.GetItem"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")


def test_a_5xx_or_throttling_is_sent_once_more_after_a_jittered_wait(server):
    client, sleeps = _client(server)
    _answer(server, 503, b"")
    _answer(server, 200, {})
    client.put_item(TableName="t", Item={})
    _answer(server, 400, _ddb_error("ThrottlingException"))
    _answer(server, 400, _ddb_error("ProvisionedThroughputExceededException"))
    with pytest.raises(lean_aws.AwsError) as throttled:
        client.put_item(TableName="t", Item={})
    assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert len(server.requests) == 4 and len(sleeps) == 2 and all(0 <= s < 1 for s in sleeps)


def test_a_modelled_error_is_raised_at_once_with_botocores_shape(server):
    client, sleeps = _client(server)
    _answer(server, 400, _ddb_error("ConditionalCheckFailedException"))
    with pytest.raises(lean_aws.AwsError) as failed:
        client.put_item(TableName="t", Item={}, ConditionExpression="attribute_not_exists(k)")
    assert failed.value.response["Error"] == {"Code": "ConditionalCheckFailedException",
                                              "Message": "ConditionalCheckFailedException happened"}
    reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}]
    _answer(server, 400, _ddb_error("TransactionCanceledException", CancellationReasons=reasons))
    with pytest.raises(lean_aws.AwsError) as cancelled:
        client.transact_write_items(TransactItems=[])
    assert cancelled.value.response["CancellationReasons"] == reasons
    assert len(server.requests) == 2 and sleeps == []


def test_a_transaction_sent_again_carries_the_same_client_request_token(server):
    """A lost answer: DynamoDB applies the transaction once when the token repeats."""
    client, _ = _client(server)
    client._timeouts = (0.5, 0.3)
    _answer(server, 200, {}, delay=0.6)  # the answer comes too late: the client gives up and sends again
    _answer(server, 200, {})
    client.transact_write_items(TransactItems=[{"ConditionCheck": {}}])
    tokens = [json.loads(body)["ClientRequestToken"] for _, body in server.requests]
    assert len(tokens) == 2 and tokens[0] == tokens[1] and len(tokens[0]) == 36
    _answer(server, 200, {})
    client.transact_write_items(TransactItems=[])
    assert json.loads(server.requests[-1][1])["ClientRequestToken"] != tokens[0]


def test_no_answer_twice_is_a_connection_error_naming_the_failure_not_a_secret(server):
    client, _ = _client(server)
    client._timeouts = (0.5, 0.2)
    _answer(server, 200, {}, delay=0.3)
    _answer(server, 200, {}, delay=0.3)
    with pytest.raises(lean_aws.AwsConnectionError) as gone:
        client.get_item(TableName="t", Key={})
    assert "Timeout" in str(gone.value) and SECRET not in str(gone.value)
    assert "Signature" not in str(gone.value)


def test_a_corrupted_answer_is_sent_again_and_an_unreadable_one_is_not(server):
    client, _ = _client(server)
    good = json.dumps({"Item": {}}).encode()
    _answer(server, 200, good, {"x-amz-crc32": str((zlib.crc32(good) + 1) & 0xFFFFFFFF)})
    _answer(server, 200, good, {"x-amz-crc32": str(zlib.crc32(good))})
    assert client.get_item(TableName="t", Key={})["Item"] == {}
    assert len(server.requests) == 2
    _answer(server, 200, b"<html>proxy error</html>")
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        client.put_item(TableName="t", Item={})  # a write may have landed: not sent twice
    assert len(server.requests) == 3


def test_an_oversized_answer_is_refused(server, monkeypatch):
    monkeypatch.setattr("chalicelib.lean_aws.client.MAX_ANSWER_BYTES", 1000)
    client, _ = _client(server)
    _answer(server, 200, {"Item": {"k": {"S": "x" * 5000}}})
    with pytest.raises(lean_aws.AwsConnectionError, match="oversized"):
        client.get_item(TableName="t", Key={})


EC2_ERROR = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not exist</Message></Error></Errors><RequestID>r-1</RequestID></Response>"""
IAM_ERROR = b"""<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>The role with name x cannot be found.</Message></Error><RequestId>r-2</RequestId></ErrorResponse>"""
EVIL = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>"""


def test_query_errors_keep_their_codes_and_hostile_xml_is_not_read(server):
    ec2, _ = _client(server, "ec2")
    iam, _ = _client(server, "iam")
    _answer(server, 400, EC2_ERROR)
    with pytest.raises(lean_aws.AwsError) as missing:
        ec2.describe_instances(InstanceIds=["i-1"])
    assert missing.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    assert server.requests[-1][1] == b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1"
    _answer(server, 404, IAM_ERROR)
    with pytest.raises(lean_aws.AwsError) as no_role:
        iam.get_role(RoleName="x")
    assert no_role.value.response["Error"]["Code"] == "NoSuchEntity"
    _answer(server, 200, EVIL)
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        iam.get_role(RoleName="x")


def test_every_lean_operation_is_one_the_policy_grants():
    """The lean clients can form no call beyond POLICY.md's (what the trimmed botocore models hold)."""
    from chalicelib.lean_aws.client import JSON_SERVICES
    from deploy import botocore_models

    granted = botocore_models.calls_from_policy()
    for service, (_, _, operations) in JSON_SERVICES.items():
        assert set(operations) <= granted[service], service
    for service, operations in query.SERVICES.items():
        assert set(operations) <= granted[service], service
    client = LeanClient("ec2", host="h", scheme="https", signing_region="us-east-1", credentials=None, pools=None)
    assert not hasattr(client, "run_instances")


def test_the_retried_codes_and_statuses_are_botocores_standard_modes():
    """Drift guard: what botocore's standard mode sends again (its lists, and the errors the
    models of the lean services mark retryable), the lean clients send again too."""
    import gzip

    import botocore
    from botocore.retries import standard

    from chalicelib.lean_aws import client

    assert set(standard.ThrottledRetryableChecker._THROTTLED_ERROR_CODES) <= client._THROTTLED
    assert set(standard.TransientRetryableChecker._TRANSIENT_ERROR_CODES) <= client._TRANSIENT_CODES
    assert set(standard.TransientRetryableChecker._TRANSIENT_STATUS_CODES) <= client._TRANSIENT_STATUS
    data = pathlib.Path(botocore.__file__).parent / "data"
    modelled = set()
    for service in lean_aws.SERVICES:
        for model in (data / service).glob("*/service-2.json*"):
            raw = model.read_bytes()
            shapes = json.loads(gzip.decompress(raw) if model.suffix == ".gz" else raw)["shapes"]
            modelled |= {name for name, shape in shapes.items() if shape.get("retryable")}
    assert modelled <= client._TRANSIENT_CODES | client._THROTTLED
