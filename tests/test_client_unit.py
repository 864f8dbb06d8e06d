"""Tests of the client (`broker/`): signing against a real SigV4-verifying moto
server, retries against a tiny local HTTP server, and the interception checks and
hand-offs against a real OpenBao dev server.

Secrets (wrapping tokens, role/secret IDs, Vault tokens) are asserted on, never
printed, and every captured output is checked not to contain them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from broker import cli
from broker.api import BrokerClient, RetryPolicy, parse_retry_after
from broker.clouds.aws import SERVER_ID_HEADER, STS_BODY, ProofSigner, region_for_sts_url
from broker.errors import (
    EXIT_HANDOFF,
    EXIT_INTERCEPTION,
    EXIT_NO_AWS_CREDENTIALS,
    EXIT_RATE_LIMITED,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    InterceptionError,
    RateLimitedError,
    RefusedError,
    UnavailableError,
)
from broker.vault import VaultClient, unwrap_credentials
from tests.ports import closed_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVER_ID = "broker.test.example"
ACCOUNT = "123456789012"


# ---- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assert_no_secrets(text: str, secrets) -> None:
    for secret in secrets:
        if secret:
            assert secret not in text, "a secret leaked into the output"


def decode_fields(fields: dict) -> tuple[str, str, str, dict]:
    url = base64.b64decode(fields["iam_request_url"]).decode()
    body = base64.b64decode(fields["iam_request_body"]).decode()
    headers = json.loads(base64.b64decode(fields["iam_request_headers"]))
    return fields["iam_http_request_method"], url, body, headers


@pytest.fixture(scope="module", autouse=True)
def loopback_without_proxy():
    """On a machine with HTTP(S)_PROXY set, keep this file's loopback traffic (requests, boto3,
    child processes) off the proxy."""
    with pytest.MonkeyPatch.context() as mp:
        if any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")):
            extra = "127.0.0.1,localhost"
            for name in ("NO_PROXY", "no_proxy"):
                mp.setenv(name, ",".join(filter(None, [os.environ.get(name), extra])))
        yield


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Dummy AWS keys, no AWS config files, no IMDS, no stray BROKER_*/VAULT_* settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BROKER_GCP_METADATA_URL", "http://127.0.0.1:9")  # no GCE metadata server either


# ---- a tiny broker stand-in ---------------------------------------------------------------


class FakeBroker:
    """Answers POST /v1/credentials/aws from a script of responses; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list = []  # items: (status, headers, body) or callable(request) -> tuple
        self.default = (500, {}, {"error": {"code": "internal_error", "message": "no script"}})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                item = fake.script.pop(0) if fake.script else fake.default
                if callable(item):
                    item = item(body)
                status, headers, payload = item
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


def error_body(code: str, message: str, request_id: str = "req-err") -> dict:
    return {"error": {"code": code, "message": message}, "request_id": request_id}


def fake_wrap(kind: str, role: str = "web") -> dict:
    return {"token": f"hvs.fake-{kind}-token", "accessor": f"acc-{kind}", "ttl": 60,
            "creation_time": "2026-01-01T00:00:00Z", "creation_path": f"auth/approle/role/{role}/{kind}"}


# ---- signing ------------------------------------------------------------------------------


def test_signed_fields_are_what_vault_iam_login_takes():
    fields = ProofSigner(SERVER_ID).sign().login_fields()
    assert set(fields) == {"iam_http_request_method", "iam_request_url", "iam_request_body", "iam_request_headers"}
    method, url, body, headers = decode_fields(fields)
    assert method == "POST"
    assert url == "https://sts.amazonaws.com/"
    assert body == STS_BODY == "Action=GetCallerIdentity&Version=2011-06-15"
    assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in headers.values())
    assert headers["Host"] == ["sts.amazonaws.com"]
    assert headers["Content-Type"] == ["application/x-www-form-urlencoded; charset=utf-8"]
    assert headers[SERVER_ID_HEADER] == [SERVER_ID]
    (auth,) = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/")
    assert "/us-east-1/sts/aws4_request" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-vault-aws-iam-server-id" in signed
    assert "host" in signed and "x-amz-date" in signed and "content-type" in signed
    assert "X-Amz-Security-Token" not in headers


def test_session_token_is_sent_and_signed(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    proof = ProofSigner(SERVER_ID).sign()
    assert proof.headers["X-Amz-Security-Token"] == ["session-token-value"]
    assert "x-amz-security-token" in proof.signed_headers
    assert "session-token-value" not in repr(proof)  # headers are kept out of repr


def test_regional_sts_url_signs_for_its_region_and_host():
    signer = ProofSigner(SERVER_ID, sts_url="https://sts.eu-west-1.amazonaws.com")
    _, url, _, headers = decode_fields(signer.sign().login_fields())
    assert url == "https://sts.eu-west-1.amazonaws.com/"
    assert headers["Host"] == ["sts.eu-west-1.amazonaws.com"]
    assert "/eu-west-1/sts/aws4_request" in headers["Authorization"][0]
    assert region_for_sts_url("https://sts.amazonaws.com/") == "us-east-1"
    explicit = ProofSigner(SERVER_ID, sts_url="https://sts.amazonaws.com/", region="us-west-2").sign()
    assert "/us-west-2/sts/aws4_request" in explicit.headers["Authorization"][0]


def test_every_proof_is_fresh():
    signer = ProofSigner(SERVER_ID)
    first, second = signer.sign(), signer.sign()
    assert first.amz_date != second.amz_date
    assert first.headers["Authorization"] != second.headers["Authorization"]


def test_no_aws_credentials_exit_code_3(monkeypatch, fake_broker, capsys, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code = cli.main(["login", "--broker-url", fake_broker.url, "--role", "web", "--server-id", SERVER_ID,
                     "--out-dir", str(tmp_path / "creds")])
    assert code == EXIT_NO_AWS_CREDENTIALS
    assert fake_broker.requests == []
    assert "no AWS credentials" in capsys.readouterr().err


def test_botocore_is_imported_lazily():
    code = (
        "import sys, broker.cli\n"
        "rc = broker.cli.main(['login', '--role', 'web'])\n"  # a usage error, before any signing
        "assert rc == 2, rc\n"
        "assert 'botocore' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# ---- the proof against a real SigV4-verifying STS (moto) ------------------------------------


@pytest.fixture(scope="module")
def moto_sts(tmp_path_factory):
    """moto_server with signature verification on after the first 3 requests, and an
    assumed-role session (keys) made with the admin user's keys."""
    import boto3

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(INITIAL_NO_AUTH_ACTION_COUNT="3", AWS_EC2_METADATA_DISABLED="true")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"

        def client(service, **keys):
            return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id=keys.get("ak", "AKIAIOSFODNN7EXAMPLE"),
                                aws_secret_access_key=keys.get("sk", "bootstrap-secret"),
                                aws_session_token=keys.get("token"))

        iam = client("iam")  # the 3 unauthenticated requests:
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        admin = {"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"]}
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                 "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/admin"}}]}
        client("iam", **admin).create_role(RoleName="demo-node", AssumeRolePolicyDocument=json.dumps(trust))
        creds = client("sts", **admin).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/demo-node", RoleSessionName="i-0123456789abcdef0")["Credentials"]
        yield {"endpoint": endpoint, "port": port, "admin": admin, "session": creds}
    finally:
        stop(proc)
        log.close()


def _moto_credentials(session: dict):
    from botocore.credentials import Credentials

    return Credentials(session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"])


def _send_like_the_broker(fields: dict, endpoint: str) -> requests.Response:
    """Rebuild the request from the login fields and send it to moto, keeping the signed Host."""
    method, url, body, headers = decode_fields(fields)
    flat = {k: ",".join(v) for k, v in headers.items()}
    return requests.request(method, endpoint + "/", data=body.encode(), headers=flat, timeout=10)


def test_signed_proof_is_accepted_by_sigv4_verifying_sts(moto_sts):
    signer = ProofSigner(SERVER_ID, credentials=_moto_credentials(moto_sts["session"]))
    response = _send_like_the_broker(signer.sign().login_fields(), moto_sts["endpoint"])
    assert response.status_code == 200, response.text
    assert f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/demo-node/i-0123456789abcdef0</Arn>" in response.text
    assert f"<Account>{ACCOUNT}</Account>" in response.text


def test_tampered_proof_is_refused_by_sts(moto_sts):
    signer = ProofSigner(SERVER_ID, credentials=_moto_credentials(moto_sts["session"]))
    fields = signer.sign().login_fields()
    headers = json.loads(base64.b64decode(fields["iam_request_headers"]))
    headers[SERVER_ID_HEADER] = ["another-server"]  # a signed header changed after signing
    fields["iam_request_headers"] = base64.b64encode(json.dumps(headers).encode()).decode()
    response = _send_like_the_broker(fields, moto_sts["endpoint"])
    assert response.status_code == 403
    assert "SignatureDoesNotMatch" in response.text


def test_proof_signed_for_a_custom_sts_url(moto_sts):
    signer = ProofSigner(SERVER_ID, sts_url=moto_sts["endpoint"], region="us-east-1",
                         credentials=_moto_credentials(moto_sts["session"]))
    _, url, _, headers = decode_fields(signer.sign().login_fields())
    assert url == moto_sts["endpoint"] + "/"
    assert headers["Host"] == [f"127.0.0.1:{moto_sts['port']}"]
    response = _send_like_the_broker(signer.sign().login_fields(), moto_sts["endpoint"])
    assert response.status_code == 200, response.text
    assert "assumed-role/demo-node/i-0123456789abcdef0" in response.text


# ---- retries ---------------------------------------------------------------------------------


def _ok_response(role="web"):
    return (200, {}, {"request_id": "req-ok", "role": role, "vault_addr": "http://127.0.0.1:1",
                      "role_id_wrap": fake_wrap("role-id", role), "secret_id_wrap": fake_wrap("secret-id", role)})


def test_retries_503_with_retry_after_and_a_fresh_proof_each_time(fake_broker):
    fake_broker.script = [
        (503, {"Retry-After": "1"}, error_body("unavailable", "vault sealed", "req-1")),
        (503, {"Retry-After": "1"}, error_body("unavailable", "vault sealed", "req-2")),
        _ok_response(),
    ]
    delays = []

    def sleep(seconds):
        delays.append(seconds)
        time.sleep(seconds)

    signer = ProofSigner(SERVER_ID)
    client = BrokerClient(fake_broker.url, sleep=sleep, retry=RetryPolicy(max_attempts=6, max_wait=30))
    issued = client.request_credentials("web", lambda: signer.sign().login_fields())
    assert issued.attempts == 3 and issued.request_id == "req-ok"
    assert len(fake_broker.requests) == 3
    assert len(delays) == 2 and all(d >= 1.0 for d in delays)  # Retry-After is a floor
    assert all(r["path"] == "/v1/credentials/aws" and r["body"]["role"] == "web" for r in fake_broker.requests)
    auths = [decode_fields(r["body"])[3]["Authorization"][0] for r in fake_broker.requests]
    dates = [decode_fields(r["body"])[3]["X-Amz-Date"][0] for r in fake_broker.requests]
    assert len(set(auths)) == 3 and len(set(dates)) == 3


@pytest.mark.parametrize("status,code", [(400, "invalid_request"), (401, "invalid_proof"),
                                         (403, "not_authorized"), (404, "http_404")])
def test_refusals_are_not_retried(fake_broker, capsys, tmp_path, status, code):
    fake_broker.script = [(status, {}, error_body(code, f"because {code}", "req-refused"))] + [_ok_response()] * 3
    rc = cli.main(["login", "--broker-url", fake_broker.url, "--role", "web", "--server-id", SERVER_ID,
                   "--out-dir", str(tmp_path / "creds")])
    assert rc == EXIT_REFUSED
    assert len(fake_broker.requests) == 1
    err = capsys.readouterr().err
    assert f"HTTP {status} {code}: because {code}" in err and "req-refused" in err


def test_replayed_proof_is_retried_with_a_proof_from_a_later_second(fake_broker):
    """Another process with the same credentials that signed in the same second sent the
    same proof first: a new proof (a later X-Amz-Date) is a different one."""
    fake_broker.script = [(401, {}, error_body("proof_replayed", "this proof was already used")), _ok_response()]
    signer = ProofSigner(SERVER_ID)
    client = BrokerClient(fake_broker.url, sleep=lambda s: None)
    assert client.request_credentials("web", lambda: signer.sign().login_fields()).attempts == 2
    first, second = (decode_fields(r["body"])[3] for r in fake_broker.requests)
    assert first["X-Amz-Date"] != second["X-Amz-Date"]

    # Still a refusal (exit 4) when it never stops.
    fake_broker.default = (401, {}, error_body("proof_replayed", "this proof was already used", "req-r"))
    client = BrokerClient(fake_broker.url, sleep=lambda s: None, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(RefusedError) as info:
        client.request_credentials("web", lambda: {})
    assert info.value.exit_code == EXIT_REFUSED and info.value.code == "proof_replayed"


def test_loopback_is_never_sent_through_a_proxy(fake_broker, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")  # a dead proxy
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fake_broker.script = [_ok_response()]
    assert BrokerClient(fake_broker.url).request_credentials("web", lambda: {}).attempts == 1


def test_429_is_retried_then_gives_up_with_its_own_exit_code(fake_broker):
    fake_broker.default = (429, {"Retry-After": "0"}, error_body("rate_limited", "slow down"))
    proofs = []
    client = BrokerClient(fake_broker.url, sleep=lambda s: None, retry=RetryPolicy(max_attempts=3, max_wait=30))
    with pytest.raises(RateLimitedError) as info:
        client.request_credentials("web", lambda: proofs.append(1) or {"iam_http_request_method": "POST"})
    assert info.value.exit_code == EXIT_RATE_LIMITED != EXIT_UNAVAILABLE
    assert len(fake_broker.requests) == 3 and len(proofs) == 3  # a fresh proof each time
    assert "429" in str(info.value) and "unavailable" not in str(info.value)


def test_429_waits_what_retry_after_says_when_it_fits(fake_broker):
    fake_broker.script = [(429, {"Retry-After": "7"}, error_body("rate_limited", "slow down")), _ok_response()]
    delays = []
    client = BrokerClient(fake_broker.url, sleep=delays.append, rng=lambda: 0.0,
                          retry=RetryPolicy(max_attempts=3, max_wait=30))
    assert client.request_credentials("web", lambda: {}).attempts == 2
    assert delays == [7.0]  # not capped, not shortened


def test_429_whose_retry_after_does_not_fit_stops_at_once_saying_when(fake_broker):
    fake_broker.default = (429, {"Retry-After": "1122"}, error_body("rate_limited", "slow down", "req-429"))
    delays = []
    client = BrokerClient(fake_broker.url, sleep=delays.append, retry=RetryPolicy(max_attempts=6, max_wait=120))
    with pytest.raises(RateLimitedError) as info:
        client.request_credentials("web", lambda: {})
    assert delays == [] and len(fake_broker.requests) == 1  # no 30 s retries for 90 s
    assert info.value.retry_after == 1122
    assert "1122 s (at " in str(info.value) and "--max-wait" in str(info.value)
    assert "req-429" in str(info.value)


def test_max_wait_bounds_the_total_time(fake_broker):
    fake_broker.default = (503, {"Retry-After": "1000"}, error_body("unavailable", "down"))
    client = BrokerClient(fake_broker.url, retry=RetryPolicy(max_attempts=6, max_wait=5))
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="max-wait"):
        client.request_credentials("web", lambda: {})
    assert time.monotonic() - started < 2  # a Retry-After of 1000 s does not fit in 5 s: stop now
    assert len(fake_broker.requests) == 1


def test_connection_errors_and_timeouts_are_retried(fake_broker):
    # Nothing listens on this port: connection refused, retried.
    closed = f"http://127.0.0.1:{closed_port()}"
    calls = []
    client = BrokerClient(closed, sleep=lambda s: None, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(UnavailableError, match="cannot reach the broker"):
        client.request_credentials("web", lambda: calls.append(1) or {})
    assert len(calls) == 3

    # A first answer slower than the timeout, then a good one.
    fake_broker.script = [lambda body: (time.sleep(1.5), _ok_response())[1], _ok_response()]
    client = BrokerClient(fake_broker.url, timeout=0.5, sleep=lambda s: None)
    assert client.request_credentials("web", lambda: {}).attempts == 2


def test_backoff_is_full_jitter_and_capped():
    policy = RetryPolicy(base_delay=0.5, max_delay=20)
    assert policy.backoff(1, None, lambda: 1.0) == 0.5
    assert policy.backoff(4, None, lambda: 1.0) == 4.0
    assert policy.backoff(10, None, lambda: 1.0) == 20
    assert policy.backoff(10, None, lambda: 0.0) == 0.0
    assert policy.backoff(1, 3, lambda: 0.0) == 3  # floor
    assert policy.backoff(1, 999, lambda: 0.0) == 999  # whole: the caller checks it fits in --max-wait
    assert parse_retry_after("7") == 7 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_malformed_success_is_not_retried(fake_broker):
    fake_broker.script = [(200, {}, {"request_id": "req-x", "role": "web"})]
    client = BrokerClient(fake_broker.url, sleep=lambda s: None)
    with pytest.raises(UnavailableError, match="unusable"):
        client.request_credentials("web", lambda: {})
    assert len(fake_broker.requests) == 1


# ---- interception checks and hand-off against a real OpenBao ----------------------------------


class Bao:
    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.session = requests.Session()
        self.session.headers["X-Vault-Token"] = "root"

    def call(self, method: str, path: str, wrap_ttl: str | None = None, token: str | None = None, **body):
        headers = {"X-Vault-Wrap-TTL": wrap_ttl} if wrap_ttl else {}
        if token:
            headers["X-Vault-Token"] = token
        r = self.session.request(method, f"{self.addr}/v1/{path}", json=body or None, headers=headers, timeout=10)
        assert r.status_code in (200, 204), f"{method} {path}: HTTP {r.status_code}"
        return r.json() if r.content else {}

    def mint(self, role: str = "web") -> dict:
        """What the broker would return: a wrapped role ID and a wrapped secret ID."""
        role_wrap = self.call("GET", f"auth/approle/role/{role}/role-id", wrap_ttl="60s")["wrap_info"]
        secret_wrap = self.call("POST", f"auth/approle/role/{role}/secret-id", wrap_ttl="60s")["wrap_info"]

        def shape(w):
            return {k: w[k] for k in ("token", "accessor", "ttl", "creation_time", "creation_path")}

        return {"request_id": f"req-{secret_wrap['accessor'][:8]}", "role": role, "vault_addr": self.addr,
                "role_id_wrap": shape(role_wrap), "secret_id_wrap": shape(secret_wrap)}

    def role_id(self, role: str = "web") -> str:
        return self.call("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("bao-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)
    log = open(home / "bao.log", "w")
    proc = subprocess.Popen([str(BIN / "bao"), "server", "-dev", "-dev-root-token-id=root", "-dev-no-store-token",
                             f"-dev-listen-address=127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        addr = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while requests.get(f"{addr}/v1/sys/health", timeout=2).status_code != 200:
            assert time.monotonic() < deadline, "OpenBao did not become healthy"
            time.sleep(0.1)
        server = Bao(addr)
        server.call("POST", "sys/auth/approle", type="approle")
        server.call("POST", "sys/policies/acl/web-read", policy='path "secret/data/web/*" { capabilities = ["read"] }')
        for role in ("web", "other"):
            server.call("POST", f"auth/approle/role/{role}", token_policies=["web-read"], secret_id_num_uses=1,
                        secret_id_ttl="5m", token_ttl="10m", token_num_uses=0)
        yield server
    finally:
        stop(proc)
        log.close()


def _login_args(broker_url: str, *extra: str) -> list[str]:
    return ["login", "--broker-url", broker_url, "--role", "web", "--server-id", SERVER_ID, "--allow-insecure-vault",
            *extra]


def _secrets_of(answer: dict) -> list[str]:
    return [answer["role_id_wrap"]["token"], answer["secret_id_wrap"]["token"]]


def test_good_tokens_unwrap_to_files_with_mode_0600(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    fake_broker.script = [(200, {}, answer)]
    out_dir = tmp_path / "creds"
    old = os.umask(0)  # even with a permissive umask the files are 0600
    try:
        rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(out_dir), "--json"))
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    role_id = (out_dir / "role_id").read_text()
    secret_id = (out_dir / "secret_id").read_text()
    assert role_id == bao.role_id()
    assert stat.S_IMODE((out_dir / "role_id").stat().st_mode) == 0o600
    assert stat.S_IMODE((out_dir / "secret_id").stat().st_mode) == 0o600
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in out_dir.iterdir()) == ["role_id", "secret_id"]  # no temp files left
    summary = json.loads(captured.out)
    assert summary["request_id"] == answer["request_id"]
    assert summary["secret_id_wrap_accessor"] == answer["secret_id_wrap"]["accessor"]
    assert summary["handoff"] == "out-dir"
    assert_no_secrets(captured.out + captured.err, _secrets_of(answer) + [role_id, secret_id])
    # The secret ID is real and single-use: it logs in once.
    login = requests.post(f"{bao.addr}/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id})
    assert login.status_code == 200
    # And both wrapping tokens are spent.
    for wrap in (answer["role_id_wrap"], answer["secret_id_wrap"]):
        r = requests.post(f"{bao.addr}/v1/sys/wrapping/lookup", json={"token": wrap["token"]})
        assert r.status_code == 400


def test_already_unwrapped_token_is_an_interception(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    stolen = requests.post(f"{bao.addr}/v1/sys/wrapping/unwrap",
                           headers={"X-Vault-Token": answer["secret_id_wrap"]["token"]})
    assert stolen.status_code == 200
    fake_broker.script = [(200, {}, answer)]
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(tmp_path / "creds"), "--json"))
    captured = capsys.readouterr()
    assert rc == EXIT_INTERCEPTION
    assert "POSSIBLE INTERCEPTION" in captured.err
    assert answer["request_id"] in captured.err
    assert answer["secret_id_wrap"]["accessor"] in captured.err
    assert json.loads(captured.out)["exit_code"] == EXIT_INTERCEPTION
    assert not (tmp_path / "creds").exists()
    assert_no_secrets(captured.out + captured.err,
                      _secrets_of(answer) + [stolen.json()["data"]["secret_id"], bao.role_id()])


def test_token_wrapped_at_another_path_is_an_interception_and_is_not_unwrapped(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    # An attacker's token: wraps a secret ID of their choosing, but at sys/wrapping/wrap.
    forged = bao.call("POST", "sys/wrapping/wrap", wrap_ttl="60s", secret_id="attacker-chosen")["wrap_info"]
    answer["secret_id_wrap"] = dict(answer["secret_id_wrap"], token=forged["token"], accessor=forged["accessor"])
    fake_broker.script = [(200, {}, answer)]
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(tmp_path / "creds")))
    captured = capsys.readouterr()
    assert rc == EXIT_INTERCEPTION
    assert "'sys/wrapping/wrap'" in captured.err and forged["accessor"] in captured.err
    assert_no_secrets(captured.err, _secrets_of(answer))
    # Checked before unwrapping: the forged token was not consumed.
    lookup = requests.post(f"{bao.addr}/v1/sys/wrapping/lookup", json={"token": forged["token"]})
    assert lookup.status_code == 200


def test_token_for_another_role_is_an_interception(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    other = bao.mint("other")
    answer["secret_id_wrap"] = dict(other["secret_id_wrap"], creation_path="auth/approle/role/web/secret-id")
    fake_broker.script = [(200, {}, answer)]
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(tmp_path / "creds")))
    err = capsys.readouterr().err
    assert rc == EXIT_INTERCEPTION
    assert "'auth/approle/role/other/secret-id'" in err


def test_wrong_creation_path_reported_by_the_broker_is_an_interception(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    answer["role_id_wrap"]["creation_path"] = "sys/wrapping/wrap"
    fake_broker.script = [(200, {}, answer)]
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(tmp_path / "creds")))
    assert rc == EXIT_INTERCEPTION
    assert answer["role_id_wrap"]["accessor"] in capsys.readouterr().err


def test_unwrap_failing_after_a_good_lookup_is_an_interception(bao):
    from broker.api import HttpResult

    answer = bao.mint()
    issued = BrokerClient._parse_issued(HttpResult(200, {}, json.dumps(answer).encode()), "web", 1)
    vault = VaultClient(bao.addr)
    real_unwrap = vault.unwrap

    def racing_unwrap(token):
        requests.post(f"{bao.addr}/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": token})  # the thief wins
        return real_unwrap(token)

    vault.unwrap = racing_unwrap
    with pytest.raises(InterceptionError) as info:
        unwrap_credentials(vault, issued)
    assert info.value.accessor == answer["role_id_wrap"]["accessor"]
    assert "unwrap failed" in str(info.value)
    assert_no_secrets(str(info.value), _secrets_of(answer))


def test_sink_gets_a_working_token_with_mode_0600(bao, fake_broker, tmp_path, capsys):
    answer = bao.mint()
    fake_broker.script = [(200, {}, answer)]
    sink = tmp_path / "token"
    sink.write_text("old")
    os.chmod(sink, 0o644)
    rc = cli.main(_login_args(fake_broker.url, "--sink", str(sink), "--json"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    token = sink.read_text()
    assert stat.S_IMODE(sink.stat().st_mode) == 0o600
    me = requests.get(f"{bao.addr}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}, timeout=10)
    assert me.status_code == 200
    assert "web-read" in me.json()["data"]["policies"]
    assert me.json()["data"]["meta"]["role_name"] == "web"
    summary = json.loads(captured.out)
    assert summary["handoff"] == "sink" and summary["token_accessor"] == me.json()["data"]["accessor"]
    assert_no_secrets(captured.out + captured.err, _secrets_of(answer) + [token])


def test_exec_passes_vault_token_and_exit_code(bao, fake_broker, tmp_path):
    answer = bao.mint()
    fake_broker.script = [(200, {}, answer)]
    report = tmp_path / "child.json"
    child = (
        "import json, os, sys, urllib.request\n"
        "req = urllib.request.Request(os.environ['VAULT_ADDR'] + '/v1/auth/token/lookup-self',\n"
        "                             headers={'X-Vault-Token': os.environ['VAULT_TOKEN']})\n"
        "data = json.load(urllib.request.urlopen(req))['data']\n"
        "json.dump({'role_name': data['meta']['role_name'], 'pid': os.getpid(), 'arg': sys.argv[1]},\n"
        "          open(sys.argv[2], 'w'))\n"
        "sys.exit(42)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "login", "--broker-url", fake_broker.url, "--role", "web",
         "--server-id", SERVER_ID, "--vault-addr", bao.addr, "--exec", "--", sys.executable, "-c", child, "hello",
         str(report)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err
    result = json.loads(report.read_text())
    assert result == {"role_name": "web", "pid": proc.pid, "arg": "hello"}  # same process: exec'd
    assert_no_secrets(out + err, _secrets_of(answer))


def test_vault_unreachable_is_exit_7(fake_broker, tmp_path, capsys):
    closed = f"http://127.0.0.1:{closed_port()}"
    status, headers, body = _ok_response()
    fake_broker.script = [(status, headers, dict(body, vault_addr=closed))]
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", closed, "--out-dir", str(tmp_path / "creds")))
    assert rc == EXIT_HANDOFF
    err = capsys.readouterr().err
    assert "cannot reach Vault" in err
    assert_no_secrets(err, ["hvs.fake-role-id-token", "hvs.fake-secret-id-token"])


@pytest.mark.parametrize("argv", [
    ["login", "--role", "web", "--server-id", SERVER_ID, "--out-dir", "x"],           # no broker URL
    ["login", "--broker-url", "http://127.0.0.1:1", "--role", "web", "--server-id", SERVER_ID],  # no hand-off
    ["login", "--broker-url", "http://127.0.0.1:1", "--role", "web", "--server-id", SERVER_ID, "--exec"],
    ["login", "--broker-url", "http://127.0.0.1:1", "--role", "web", "--server-id", SERVER_ID,
     "--out-dir", "x", "--sink", "y"],
    ["login", "--broker-url", "http://127.0.0.1:1", "--role", "a/b", "--server-id", SERVER_ID, "--out-dir", "x"],
    ["login", "--broker-url", "ftp://x", "--role", "web", "--server-id", SERVER_ID, "--out-dir", "x"],
    ["login", "--max-attempts", "0"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == EXIT_USAGE


@pytest.mark.parametrize("handoff", [
    ["--out-dir", "/proc/version/creds"],                  # under a file
    ["--sink", "/nonexistent-dir/token"],                  # no such directory
    ["--exec", "--", "no-such-command-for-broker-tests"],  # not in PATH
])
def test_hand_off_is_checked_before_anything_is_issued(fake_broker, capsys, handoff):
    fake_broker.script = [_ok_response()]
    rc = cli.main(["login", "--broker-url", fake_broker.url, "--role", "web", "--server-id", SERVER_ID, *handoff])
    assert rc == EXIT_USAGE
    assert fake_broker.requests == []
    assert handoff[0] in capsys.readouterr().err


def test_flags_come_from_the_environment(monkeypatch, fake_broker, tmp_path):
    fake_broker.script = [(403, {}, error_body("not_authorized", "no rule grants role web"))]
    monkeypatch.setenv("BROKER_URL", fake_broker.url)
    monkeypatch.setenv("BROKER_ROLE", "web")
    monkeypatch.setenv("BROKER_SERVER_ID", SERVER_ID)
    assert cli.main(["login", "--sink", str(tmp_path / "token")]) == EXIT_REFUSED
    (request,) = fake_broker.requests
    assert request["body"]["role"] == "web"
    assert decode_fields(request["body"])[3][SERVER_ID_HEADER] == [SERVER_ID]


def test_refused_error_carries_code_and_message():
    err = RefusedError(403, "not_authorized", "no rule", request_id="r1")
    assert err.exit_code == EXIT_REFUSED and "not_authorized" in str(err) and "r1" in str(err)
