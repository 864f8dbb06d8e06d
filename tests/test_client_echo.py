"""A hostile broker on loopback that echoes the proof back in its error message, for real.

A 500 (retried) or a 400 (final) whose JSON message carries the proof's Authorization header
(the SigV4 ``Signature=``), its session token cut short, the encoded headers field, and
terminal escapes: the real client process must print none of them, on its retry lines, its
final error or its --json summary.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.test_client_trust import client_env, login_args, run
from tests.test_client_unit import FakeBroker

# Shaped like an STS session token: long, base64-ish.
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE" + "".join(f"{i:03d}AbCdEfGhIjKlMnOpQrStUvWxYz+/" for i in range(12))


def _headers_of(body: dict) -> dict:
    return json.loads(base64.b64decode(body["iam_request_headers"]))


def _echo(status: int, first: str):
    """The message echoes ``first`` at its start (within the 300 characters the client keeps)."""
    def answer(body: dict):
        headers = _headers_of(body)
        echoed = {"signature": f"Authorization: {headers['Authorization'][0]}",
                  "session-token": f"X-Amz-Security-Token: {headers['X-Amz-Security-Token'][0][5:105]}",
                  "encoded-headers": f"iam_request_headers={body['iam_request_headers'][:200]}"}
        message = f"\x1b[2J\x1b[31mcould not verify proof:\r\n{echoed.pop(first)} " + " ".join(echoed.values())
        return status, {"X-Request-Id": "req-echo\x1b[0m"}, {"error": {"code": "internal_error\x07", "message": message}}
    return answer


@pytest.fixture
def echoing_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


@pytest.mark.parametrize("first", ["signature", "session-token", "encoded-headers"])
@pytest.mark.parametrize("status, exit_code", [(500, 5), (400, 4)])
def test_an_echoed_proof_is_never_printed(echoing_broker, tmp_path, status, exit_code, first):
    echoing_broker.default = _echo(status, first)
    work = tmp_path / "work"
    work.mkdir()
    env = client_env(tmp_path, AWS_SESSION_TOKEN=SESSION_TOKEN)
    proc = run(login_args(echoing_broker.url, "--json", "--max-attempts", "3", "--max-wait", "20",
                          "--out-dir", str(work / "creds")), env, work)
    assert proc.returncode == exit_code, proc.stderr
    bodies = [r["body"] for r in echoing_broker.requests]
    assert len(bodies) == (3 if status == 500 else 1)
    printed = proc.stdout + proc.stderr
    assert "could not verify proof" in proc.stderr  # the message is shown, what it echoed is not
    for body in bodies:
        headers = _headers_of(body)
        signature = headers["Authorization"][0].rsplit("Signature=", 1)[1]
        assert len(signature) == 64 and signature not in printed and signature[:16] not in printed
        for i in range(0, 200 - 16):
            assert body["iam_request_headers"][i:i + 16] not in printed
    for i in range(0, len(SESSION_TOKEN) - 16):
        assert SESSION_TOKEN[i:i + 16] not in printed, "a piece of the session token was printed"
    assert "\x1b" not in printed and "\x07" not in printed and "\r" not in printed
    for line in proc.stderr.splitlines():
        assert len(line) < 800, "a broker message was printed uncapped"


def test_a_security_command_never_prints_the_proofs_a_broker_echoes(echoing_broker, tmp_path):
    """`broker revoke` signs a proof (X-Broker-Proof) and the request (execute-api SigV4) for
    each attempt: a broker echoing both, and the session token, in its 500s gets none of them
    printed on the retry lines or in the final error."""
    def echo(body):
        request = echoing_broker.requests[-1]
        proof = json.loads(base64.b64decode(request["headers"]["X-Broker-Proof"]))
        signed = _headers_of(proof)
        message = (f"bad proof {request['headers']['X-Broker-Proof'][:120]} "
                   f"{signed['Authorization'][0]} {request['headers']['Authorization']} "
                   f"{request['headers'].get('X-Amz-Security-Token', '')[3:90]}")
        return 500, {}, {"error": {"code": "internal_error", "message": message}}

    echoing_broker.default = echo
    env = client_env(tmp_path, AWS_SESSION_TOKEN=SESSION_TOKEN)
    proc = run(["revoke", "--broker-url", echoing_broker.url, "--server-id", "secret-zero-broker.example.com",
                "--principal", "arn:aws:iam::123456789012:role/demo-node", "--reason", "echo test"], env, tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "bad proof" in proc.stderr and echoing_broker.requests
    printed = proc.stdout + proc.stderr
    for request in echoing_broker.requests:
        header = request["headers"]["X-Broker-Proof"]
        for i in range(0, 120 - 16):
            assert header[i:i + 16] not in printed, "a piece of the proof header was printed"
        for signature in (_headers_of(json.loads(base64.b64decode(header)))["Authorization"][0],
                          request["headers"]["Authorization"]):
            assert signature.rsplit("Signature=", 1)[1][:16] not in printed
    for i in range(0, len(SESSION_TOKEN) - 16):
        assert SESSION_TOKEN[i:i + 16] not in printed, "a piece of the session token was printed"
