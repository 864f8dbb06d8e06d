"""The secret scanner itself (tests/secret_scan.py): a planted leak must fail the session."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.secret_scan import SecretScanner

REPO = Path(__file__).resolve().parent.parent


def planted():
    return "s." + secrets.token_hex(12)  # shaped like an OpenBao token


def test_a_secret_in_a_log_line_is_found_with_its_line():
    scanner, secret = SecretScanner(), secrets.token_urlsafe(24)
    scanner.register(secret, "a wrapping token")
    scanner.add_text("broker.log", f"first line\n{{\"event\": \"decision\", \"token\": \"{secret}\"}}\n")
    [hit] = scanner.scan()
    assert (hit.label, hit.where, hit.line) == ("a wrapping token", "broker.log", 2)
    assert secret not in str(hit)


def test_the_answer_that_issued_a_token_may_carry_it_and_no_other():
    scanner = SecretScanner()
    token = secrets.token_urlsafe(24)
    scanner.broker_answer("POST /v1/credentials/aws", 200, f'{{"role_id_wrap": {{"token": "{token}"}}}}'.encode())
    assert scanner.scan() == []
    scanner.broker_answer("GET /v1/audit/events", 200, f'{{"items": [{{"note": "{token}"}}]}}'.encode())
    [hit] = scanner.scan()
    assert "GET /v1/audit/events" in hit.where


def test_a_revocations_wrapping_token_statuses_are_not_secrets_but_its_tokens_are():
    """`wrapping_tokens` maps role_id / secret_id to a status ("failed: ..."): a status in the
    broker's log is no leak (it made a full run fail once); a token elsewhere still is."""
    scanner = SecretScanner()
    status = "failed: the wrapping token lookup timed out"
    token = secrets.token_urlsafe(24)
    scanner.broker_answer("POST /v1/revocations", 200, (
        f'{{"destroyed": [{{"wrapping_tokens": {{"role_id": "{status}", "secret_id": "revoked"}}}}],'
        f' "role_id": "{token}"}}').encode())
    scanner.add_text("broker.log", f'{{"event": "revocation", "wrapping_tokens": {{"role_id": "{status}"}}}}\n')
    assert scanner.scan() == []
    scanner.add_text("other.log", f"role {token}\n")
    [hit] = scanner.scan()
    assert hit.where == "other.log"


def test_proof_material_sent_to_the_broker_must_never_come_back():
    import base64
    import json

    scanner = SecretScanner()
    signature = secrets.token_hex(32)
    headers = {"Authorization": [f"AWS4-HMAC-SHA256 Credential=AKIAX/20240101/us-east-1/sts/aws4_request, "
                                 f"SignedHeaders=host, Signature={signature}"],
               "X-Amz-Security-Token": [secrets.token_urlsafe(40)]}
    body = json.dumps({"role": "web", "iam_request_headers": base64.b64encode(json.dumps(headers).encode()).decode()})
    scanner.register_proof(body.encode(), "POST /v1/credentials/aws")
    scanner.broker_answer("POST /v1/credentials/aws", 401, f'{{"error": {{"message": "bad {signature}"}}}}'.encode())
    assert [h.label for h in scanner.scan()] == ["a SigV4 signature (POST /v1/credentials/aws)"]


def test_shapes_of_secrets_the_test_process_never_saw_are_found_in_logs():
    scanner = SecretScanner()
    scanner.add_text("broker.log", f'{{"token": "{planted()}"}}')
    scanner.add_text("moto.log", "Authorization: AWS4-HMAC-SHA256 ... Signature=" + "ab" * 32)
    scanner.add_text("clean.log", "accessor 4oGdWhmKk0a7ZJ6tyZm7dSpS and request s.short")
    assert sorted(h.where for h in scanner.scan()) == ["broker.log", "moto.log"]


def test_low_entropy_and_short_values_are_not_tracked():
    scanner = SecretScanner()
    for value in ("0" * 64, "root", "web", "abababababababababab"):
        scanner.register(value, "noise")
    assert scanner.secrets == {}


def run_session(tmp_path, test_body):
    (tmp_path / "conftest.py").write_text(
        "from tests.secret_scan import pytest_configure, pytest_runtest_logreport, pytest_sessionfinish  # noqa\n")
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(test_body))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SECRET_SCAN": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_planted_leak_fails_the_session(tmp_path):
    secret = planted()
    proc = run_session(tmp_path, f"""
        import logging
        from pathlib import Path
        from chalicelib.jsonlog import get_logger, log
        from tests.secret_scan import register_log_dir, register_secret

        def test_leaks(tmp_path):
            register_secret("{secret}", "a planted Vault token")
            log(get_logger(), logging.INFO, "oops", token="{secret}")   # the in-process broker's log
            register_log_dir(tmp_path)
            (tmp_path / "vault.log").write_text("ok\\nleaked {secret}\\n")  # a devstack log
    """)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 passed" in out  # the test itself passed: the scan failed the session
    assert "a planted Vault token in the in-process broker's log" in out
    assert "vault.log (line 2)" in out
    assert secret not in out.replace(f'"{secret}"', "")  # never shown (pytest may echo source only on failure)


def test_a_clean_session_passes(tmp_path):
    proc = run_session(tmp_path, """
        import logging
        from chalicelib.jsonlog import get_logger, log
        from tests.secret_scan import register_secret

        def test_clean():
            register_secret("s.NotLeakedAnywhere0123456", "a Vault token kept to itself")
            log(get_logger(), logging.INFO, "decision", accessor="not-a-secret")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no leak" in proc.stdout
