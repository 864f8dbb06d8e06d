"""Red team of the lean AWS clients (chalicelib/lean_aws/): hostile or broken answers from
a real local HTTP server (a proxy, a captive portal, a wrong endpoint) must end as a
named connection error (the broker's 503), never as an answer read as a right one,
never as an unexpected exception (a 500), and never with a secret in a message.
"""

import json
import socket
import threading
import time
import zlib

import pytest

from chalicelib import lean_aws
from chalicelib.errors import Unavailable
from chalicelib.http_pool import HttpError, Pools
from chalicelib.lean_aws.credentials import FixedCredentials
from tests.unit.test_lean_aws import SECRET, Script, _answer, _client, _Handler

TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN/+=="


@pytest.fixture
def server():
    s = Script()
    yield s
    s.shutdown()


# ---- a wrong answer read as a right one ----------------------------------------------------

CAPTIVE_PORTAL = b"""<?xml version="1.0"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Sign in to the Wi-Fi</title></head>
<body><p>Please log in</p></body></html>"""


@pytest.mark.parametrize("service,operation,params", [
    ("ec2", "describe_instances", {"InstanceIds": ["i-0123456789abcdef0"]}),  # read as "no such instance"
    ("iam", "get_role", {"RoleName": "demo-node"}),  # read as "the role no longer exists" or "has no tags"
    ("iam", "get_instance_profile", {"InstanceProfileName": "demo-node"}),  # read as "holds no role"
    ("sts", "assume_role", {"RoleArn": "arn:aws:iam::210987654321:role/r", "RoleSessionName": "s"}),
    ("sts", "get_caller_identity", {}),
])
def test_a_200_xml_page_that_is_not_the_operations_answer_is_unreadable(server, service, operation, params):
    client, _ = _client(server, service)
    _answer(server, 200, CAPTIVE_PORTAL)
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        getattr(client, operation)(**params)


def test_an_assume_role_answer_without_its_keys_is_unreadable_not_a_500(server):
    """AccountReaders reads creds["AccessKeyId"] outside aws_calls: a KeyError there was a 500."""
    from chalicelib.methods.aws.readers import AccountReaders
    from chalicelib.methods.aws.settings import Reader

    class Settings:
        readers = {"210987654321": Reader("210987654321", "arn:aws:iam::210987654321:role/secret-zero-reader",
                                          "secret-zero-local")}
        own_account = "123456789012"
        own_partition = "aws"

    readers = AccountReaders(Settings(), lambda service, region=None, **kw: _client(server, service)[0])
    _answer(server, 200, b'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                         b'<AssumeRoleResult><Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId></Credentials>'
                         b'</AssumeRoleResult></AssumeRoleResponse>')
    with pytest.raises(Unavailable) as unavailable:
        readers.for_account("210987654321")
    assert unavailable.value.status == 503 and "unreadable" in unavailable.value.detail


def test_a_malformed_field_in_a_200_is_unreadable_not_a_stray_exception(server):
    client, _ = _client(server, "ec2")
    _answer(server, 200, b'<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                         b'<reservationSet><item><instancesSet><item><instanceId>i-1</instanceId>'
                         b'<instanceState><code>sixteen</code><name>running</name></instanceState>'
                         b'</item></instancesSet></item></reservationSet></DescribeInstancesResponse>')
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        client.describe_instances(InstanceIds=["i-1"])
    iam, _ = _client(server, "iam")
    _answer(server, 200, b'<GetRoleResponse><GetRoleResult><Role><RoleName>r</RoleName>'
                         b'<AssumeRolePolicyDocument>%7B%22Statement%22%3A</AssumeRolePolicyDocument>'
                         b'</Role></GetRoleResult></GetRoleResponse>')
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        iam.get_role(RoleName="r")


def test_an_empty_200_is_not_an_empty_answer(server):
    """An empty 200 read as `{}` is a GetItem without Item: a quarantine read as clear."""
    client, _ = _client(server)
    _answer(server, 200, b"")
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        client.get_item(TableName="quarantine", Key={"pk": {"S": "quarantine#instance#i-1"}})
    secrets, _ = _client(server, "secretsmanager")
    _answer(server, 200, b"")
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        secrets.get_secret_value(SecretId="x")


def test_a_dynamodb_200_without_its_crc32_is_read_as_botocore_reads_it(server):
    """Accepted, not refused: AWS documents x-amz-crc32 as a header DynamoDB answers "can"
    carry, and every SDK checks it only when present. Requiring it would stake the whole
    broker on an undocumented guarantee (a 503 on every call the day an answer comes
    without it), against a forged `{}` that over TLS only AWS itself could send."""
    client, _ = _client(server)
    _answer(server, 200, {"Item": {"pk": {"S": "q"}}}, {"x-amz-crc32": None})
    assert client.get_item(TableName="quarantine", Key={"pk": {"S": "q"}})["Item"] == {"pk": {"S": "q"}}


def test_deeply_nested_json_is_unreadable_not_a_recursion_error(server):
    client, _ = _client(server)
    data = b"[" * 100000 + b"]" * 100000
    _answer(server, 200, data, {"x-amz-crc32": str(zlib.crc32(data))})
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        client.get_item(TableName="t", Key={})
    deep_error = b'{"__type":"x","m":' + b"[" * 100000 + b"]" * 100000 + b"}"
    _answer(server, 400, deep_error)
    with pytest.raises((lean_aws.AwsError, lean_aws.AwsConnectionError)):
        client.get_item(TableName="t", Key={})


def test_deeply_nested_xml_is_read_without_a_crash(server):
    client, _ = _client(server, "iam")
    _answer(server, 200, b"<a>" * 200000 + b"</a>" * 200000)
    with pytest.raises(lean_aws.AwsConnectionError, match="unreadable"):
        client.get_role(RoleName="r")
    _answer(server, 400, b"<a>" * 200000 + b"</a>" * 200000)
    with pytest.raises(lean_aws.AwsError) as error:
        client.get_role(RoleName="r")
    assert error.value.response["Error"]["Code"] == "400"


def test_an_error_type_that_is_not_text_is_still_a_named_error(server):
    client, _ = _client(server)
    _answer(server, 400, {"__type": 7, "message": ["not", "text"]})
    with pytest.raises(lean_aws.AwsError) as error:
        client.get_item(TableName="t", Key={})
    assert error.value.response["Error"]["Code"] == "400"


@pytest.mark.parametrize("service,operation,params", [
    ("dynamodb", "get_item", {"TableName": "t", "Key": {}}),
    ("iam", "get_role", {"RoleName": "r"}),
])
def test_a_redirect_is_not_followed_and_is_a_named_error(server, service, operation, params):
    client, _ = _client(server, service)
    _answer(server, 302, b"<html>moved</html>", {"location": "http://127.0.0.1:1/"})
    with pytest.raises(lean_aws.AwsError) as error:
        getattr(client, operation)(**params)
    assert error.value.response["Error"]["Code"] == "302" and len(server.requests) == 1


# ---- truncated, slow -------------------------------------------------------------------------

class RawServer:
    """A TCP server that answers each connection with `script(conn)` (a hand-written HTTP answer)."""

    def __init__(self, script):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._script = script
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.recv(65536)
            self._script(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._sock.close()


def _raw_client(raw, service="dynamodb"):
    client = lean_aws.make_client(service, "us-east-1", endpoint_url=raw.url, pools=Pools(),
                                  own_credentials=FixedCredentials("AKIDEXAMPLE", SECRET))
    client._sleep = lambda s: None
    return client


def test_a_truncated_answer_is_a_connection_error_not_a_short_answer():
    body = json.dumps({"Item": {"pk": {"S": "quarantine#instance#i-1"}}}).encode()

    def truncated(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n"
                     b"content-length: %d\r\nx-amz-crc32: %d\r\n\r\n" % (len(body), zlib.crc32(body)) + body[:10])

    raw = RawServer(truncated)
    try:
        with pytest.raises(lean_aws.AwsConnectionError) as cut:
            _raw_client(raw).get_item(TableName="t", Key={})
        assert raw.connections == 2  # a read: sent once more, as botocore would
        assert "Incomplete" in str(cut.value) or "Protocol" in str(cut.value)
    finally:
        raw.close()


def test_an_answer_dripped_slowly_ends_at_a_deadline_not_never():
    """The read timeout bounds each wait for a byte; a body sent one byte at a time under it
    must still not hold the call past its deadline (Lambda's and API Gateway's 29 s)."""
    body = json.dumps({"Item": {"pk": {"S": "x" * 200}}}).encode()
    stop = threading.Event()

    def drip(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-amz-crc32: %d\r\n\r\n" % (len(body),
                                                                                          zlib.crc32(body)))
        for i in range(len(body)):
            if stop.is_set():
                return
            conn.sendall(body[i:i + 1])
            time.sleep(0.05)

    raw = RawServer(drip)
    try:
        client = _raw_client(raw)
        client._timeouts = (0.5, 0.3)  # each byte comes well within the read timeout
        started = time.monotonic()
        with pytest.raises(lean_aws.AwsConnectionError, match="deadline|Timeout"):
            client.get_item(TableName="t", Key={})
        # 2 attempts, each bounded by connect + read timeouts (a few reads' slack), not 2 x 10 s of drip
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        raw.close()


def test_the_pool_deadline_applies_to_a_plain_request():
    body = b"x" * 100
    raw = RawServer(lambda conn: [conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")] +
                    [(conn.sendall(body[i:i + 1]), time.sleep(0.05)) for i in range(100)])
    try:
        started = time.monotonic()
        with pytest.raises(HttpError, match="deadline|Timeout"):
            Pools().request("GET", raw.url, connect_timeout=0.2, read_timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        raw.close()


# ---- secrets -------------------------------------------------------------------------------

def test_an_error_message_echoing_the_request_never_carries_a_secret(server):
    """AWS's SignatureDoesNotMatch echoes the canonical request: the session token is in it.
    Neither the exception's text nor its response may carry the token, the key or the signature."""
    client = lean_aws.make_client("sts", "us-east-1", endpoint_url=server.url, pools=Pools(),
                                  own_credentials=FixedCredentials("ASIAEXAMPLE", SECRET, TOKEN))
    client._sleep = lambda s: None

    def echoing():
        headers, _ = server.requests[-1]
        return headers

    class Echo(_Handler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            self.server.requests.append((dict(self.headers), body))
            signature = self.headers["authorization"].rsplit("Signature=", 1)[1]
            message = (f"The request signature we calculated does not match the signature you provided. "
                       f"The Canonical String for this request should have been 'POST / "
                       f"x-amz-security-token:{self.headers['x-amz-security-token']}' signature {signature} "
                       f"secret {SECRET}")
            data = (f'<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>'
                    f'<Message>{message}</Message></Error></ErrorResponse>').encode()
            self.send_response(403)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server.RequestHandlerClass = Echo
    with pytest.raises(lean_aws.AwsError) as refused:
        client.get_caller_identity()
    signature = echoing()["authorization"].rsplit("Signature=", 1)[1]
    shown = str(refused.value) + repr(refused.value.response) + repr(refused.value.args)
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    leaked = [name for name, value in (("token", TOKEN), ("secret key", SECRET), ("signature", signature))
              if value in shown]
    assert leaked == []  # names only: a failing assert must not print the secret itself


# ---- concurrency ---------------------------------------------------------------------------

def test_threads_sharing_one_client_each_get_their_own_answer(server):
    """The pipeline overlaps calls on one client and one pool: no answer crosses to another call."""
    class EchoKey(_Handler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            key = json.loads(body)["Key"]
            time.sleep(0.002)
            data = json.dumps({"Item": key}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.send_header("x-amz-crc32", str(zlib.crc32(data)))
            self.end_headers()
            self.wfile.write(data)

    server.RequestHandlerClass = EchoKey
    client = lean_aws.make_client("dynamodb", "us-east-1", endpoint_url=server.url, pools=Pools(maxsize=4),
                                  own_credentials=FixedCredentials("AKIDEXAMPLE", SECRET))
    wrong = []

    def work(n):
        for i in range(25):
            key = {"pk": {"S": f"{n}-{i}"}}
            if client.get_item(TableName="t", Key=key)["Item"] != key:
                wrong.append(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


# ---- credentials -----------------------------------------------------------------------------

def test_container_credentials_rotating_are_followed_under_threads(monkeypatch, tmp_path):
    """SnapStart's Lambda hands out the role's keys through its container credentials
    endpoint, not the environment: OwnCredentials goes to botocore's chain, built once for
    every thread, and each call gets the keys as they are now (they rotate)."""
    import http.server

    served = {"key": "ASIAFIRST", "calls": 0}

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served["calls"] += 1
            assert self.headers["Authorization"] == "container-token"
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))  # < 10 min: refresh
            data = json.dumps({"AccessKeyId": served["key"], "SecretAccessKey": "s3cr3t-" + served["key"],
                               "Token": "token-" + served["key"], "Expiration": expires}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{endpoint.server_port}/creds")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-token")
    try:
        own = lean_aws.OwnCredentials()
        got, errors = [], []

        def get():
            try:
                got.append(own.get())
            except Exception as e:  # noqa: BLE001 (collected, asserted below)
                errors.append(type(e).__name__)

        threads = [threading.Thread(target=get) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and {c.access_key for c in got} == {"ASIAFIRST"}
        assert got[0].token == "token-ASIAFIRST"
        served["key"] = "ASIASECOND"  # rotated by Lambda
        assert own.get().access_key == "ASIASECOND"
    finally:
        endpoint.shutdown()


def test_the_legacy_security_token_variable_is_read_as_botocore_reads_it(monkeypatch):
    """botocore's environment provider takes AWS_SECURITY_TOKEN when AWS_SESSION_TOKEN is
    unset: signing without it would send temporary keys without their token."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "legacy-token")
    import botocore.session

    assert botocore.session.Session().get_credentials().token == "legacy-token"
    assert lean_aws.OwnCredentials().get().token == "legacy-token"


def test_an_error_code_echoing_the_token_never_reaches_the_audit_detail(server):
    """A wrong endpoint has the token (it was sent there); it must not also land in the
    audit record and the logs through the error code aws_calls puts in the detail."""
    from chalicelib.aws_calls import call

    class EchoCode(_Handler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            token = self.headers["x-amz-security-token"]
            data = json.dumps({"__type": f"Boom{token}" + "x" * 5000, "message": "m"}).encode()
            self.send_response(400)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server.RequestHandlerClass = EchoCode
    client = lean_aws.make_client("dynamodb", "us-east-1", endpoint_url=server.url, pools=Pools(),
                                  own_credentials=FixedCredentials("ASIAEXAMPLE", SECRET, TOKEN))
    with pytest.raises(Unavailable) as unavailable:
        call("quarantine store", client.get_item, TableName="t", Key={})
    detail = unavailable.value.detail
    assert (TOKEN in detail, len(detail) < 300) == (False, True)


@pytest.mark.parametrize("encoding", ["chunked", "gzip"])
def test_the_pool_reads_chunked_bodies_whole_through_its_deadline_and_refuses_compressed_ones(encoding):
    """Pools.request reads through its deadline reader: OpenBao (Go) sends large bodies
    chunked, they must come whole; a compressed answer (never asked for) is refused."""
    import gzip

    body = json.dumps({"data": ["x" * 1000 + str(i) for i in range(200)]}).encode()

    def answer(conn):
        if encoding == "chunked":
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            pieces = [body[i:i + 7000] for i in range(0, len(body), 7000)]
            conn.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
        else:
            packed = gzip.compress(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(packed)
                         + packed)

    raw = RawServer(answer)
    try:
        if encoding == "gzip":
            with pytest.raises(HttpError, match="compressed"):
                Pools().request("GET", raw.url)
        else:
            assert Pools().request("GET", raw.url).data == body
    finally:
        raw.close()


@pytest.mark.parametrize("region", ["us-east-1\n", "us-east-1.evil.example", "us-east-1/x", "", "eusc-de-east-1"])
def test_a_region_that_is_no_region_of_a_known_partition_is_left_to_botocore(region):
    from chalicelib.lean_aws import endpoints

    assert endpoints.resolve("ec2", region, environ={}) is None


@pytest.mark.parametrize("head", [
    b"".join(b"x-h%d: v\r\n" % i for i in range(150)),  # more headers than http.client reads
    b"x-long: " + b"v" * 70000 + b"\r\n",  # a header line past http.client's 64 KiB
])
def test_hostile_headers_are_a_connection_error_not_an_exception_of_http_client(head):
    raw = RawServer(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"content-length: 2\r\n\r\n{}"))
    try:
        with pytest.raises(lean_aws.AwsConnectionError):
            _raw_client(raw).get_item(TableName="t", Key={})
    finally:
        raw.close()


def test_after_a_restore_the_dropped_pools_serve_again(server):
    """SnapStart: Runtime.after_restore closes every client (the shared pools); the next
    call opens a new connection and is answered."""
    client, _ = _client(server)
    _answer(server, 200, {"Item": {"n": {"N": "1"}}})
    assert client.get_item(TableName="t", Key={})["Item"] == {"n": {"N": "1"}}
    client.close()
    _answer(server, 200, {"Item": {"n": {"N": "2"}}})
    assert client.get_item(TableName="t", Key={})["Item"] == {"n": {"N": "2"}}
