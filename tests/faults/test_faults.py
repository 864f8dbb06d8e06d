"""Faults of each backend, with the broker under ``chalice local`` (see conftest.py).

For each: 503 with Retry-After well inside API Gateway's 29 s (measured), an error
audit record when the audit store is up, nothing usable left behind in OpenBao,
and the broker recovers by itself once the fault clears. Vault sealed/down and the
audit table missing are also covered in process by tests/service/test_aws_issuance.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack import SERVER_ID
from devstack.faultproxy import STS_INTERNAL_ERROR, THROTTLED, Fault, dynamodb, sts
from tests.faults.helpers import FIGURES, assert_unavailable, record

REPO = Path(__file__).resolve().parents[2]


def error_record(faulty, answer):
    rec = faulty.audit.get(answer.request_id)
    assert rec is not None, "no audit record for a failed request while the audit store is up"
    assert rec["outcome"] == "error" and rec["code"] == "unavailable"
    return rec


def recovered(faulty, login=None):
    answer = (login or faulty.login_batch)()
    assert answer.status == 200, f"the broker did not recover: {answer.doc}"
    return answer


def test_vault_sealed(clean_faults):
    faulty, stack = clean_faults, clean_faults.stack
    recovered(faulty)  # the broker has its Vault token
    before = faulty.live_secret_ids()
    stack.seal_vault()
    answer = faulty.login_batch()
    assert_unavailable(answer, within=5)
    assert "sealed" in error_record(faulty, answer)["reason"]
    stack.unseal_vault()
    assert faulty.live_secret_ids() == before
    record("vault sealed", answer, recovery_status=recovered(faulty).status)


def test_vault_stopped(clean_faults):
    faulty, stack = clean_faults, clean_faults.stack
    stack.stop_vault()
    try:
        answer = faulty.login_batch()
        assert_unavailable(answer, within=10)
        assert "unreachable" in error_record(faulty, answer)["reason"].lower()
    finally:
        stack.start_vault()
    record("vault stopped", answer, recovery_status=recovered(faulty).status)  # it logs in again by itself


def test_vault_slower_than_the_broker_timeout(clean_faults):
    faulty = clean_faults
    recovered(faulty)
    before = faulty.live_secret_ids()
    delay = 7.0  # BROKER_VAULT_TIMEOUT is 5 s
    faulty.vault.set(Fault("delay", seconds=delay))
    answer = faulty.login_batch()
    faulty.vault.clear()
    assert_unavailable(answer, within=12)
    assert "vault" in error_record(faulty, answer)["reason"].lower()
    # The delayed requests still reach OpenBao after the broker gave up. A secret ID
    # created that late is wrapped in a response nobody receives: its wrapping token
    # never leaves the proxy, so it cannot be unwrapped. Find such orphans by their
    # metadata (the failed request's ID).
    assert faulty.vault.wait_idle(timeout=30), "delayed requests still in flight"
    orphans = faulty.live_secret_ids() - before
    for accessor in orphans:
        assert faulty.secret_id_metadata(accessor).get("request_id") == answer.request_id
    record("vault slow (7 s > 5 s timeout)", answer, late_orphan_secret_ids=len(orphans),
           recovery_status=recovered(faulty).status)


def test_dynamodb_unreachable(clean_faults):
    faulty = clean_faults
    recovered(faulty)
    before = faulty.live_secret_ids()
    faulty.aws.set(Fault("reset", match=dynamodb()))
    answer = faulty.login_batch()
    faulty.aws.clear()
    assert_unavailable(answer, within=10)
    assert faulty.audit.get(answer.request_id) is None  # the store was down: nothing could be written...
    assert faulty.live_secret_ids() == before  # ...so nothing was issued
    record("dynamodb unreachable (connections reset)", answer, recovery_status=recovered(faulty).status)


def test_dynamodb_throttling(clean_faults):
    faulty = clean_faults
    before = faulty.live_secret_ids()
    faulty.aws.set(Fault("status", match=dynamodb(), status=400, body=THROTTLED,
                         headers={"Content-Type": "application/x-amz-json-1.0",
                                  "x-amzn-ErrorType": "ProvisionedThroughputExceededException"}))
    answer = faulty.login_batch()
    faulty.aws.clear()
    assert_unavailable(answer, within=10)
    assert faulty.live_secret_ids() == before
    record("dynamodb throttling (400 ProvisionedThroughputExceeded)", answer,
           recovery_status=recovered(faulty).status)


def test_audit_write_fails_after_minting(clean_faults):
    """Only the audit PutItem fails: the credentials already minted are taken back."""
    from devstack import aws as stack_aws

    faulty = clean_faults
    before = faulty.live_secret_ids()
    faulty.aws.set(Fault("reset", match=dynamodb("PutItem", table=stack_aws.AUDIT_TABLE)))
    answer = faulty.login_batch()
    faulty.aws.clear()
    assert_unavailable(answer, within=10)
    assert "audit" in answer.doc["error"]["message"]
    assert faulty.live_secret_ids() == before, "a minted secret ID survived the failed audit write"
    record("audit write fails after minting", answer, recovery_status=recovered(faulty).status)


@pytest.mark.parametrize("name, fault, within", [
    ("sts unreachable (connections reset)", Fault("reset", match=sts()), 5),
    ("sts answers 500", Fault("status", match=sts(), status=500, body=STS_INTERNAL_ERROR,
                              headers={"Content-Type": "text/xml"}), 5),
    ("sts hangs (read timeout)", Fault("hang", match=sts(), seconds=8), 8),
])
def test_sts_faults(clean_faults, name, fault, within):
    faulty = clean_faults
    before = faulty.live_secret_ids()
    faulty.sts.set(fault)
    answer = faulty.login_batch()
    faulty.sts.clear()
    assert_unavailable(answer, within=within)
    assert "sts" in error_record(faulty, answer)["reason"].lower()
    assert faulty.live_secret_ids() == before
    record(name, answer, recovery_status=recovered(faulty).status)


def test_google_certs_down(clean_faults):
    faulty, stack = clean_faults, clean_faults.stack
    # Only a broker without the certificates in its cache needs the endpoint: this one
    # has not verified a GCP token yet (this test runs before any other GCP request to it).
    before = faulty.live_secret_ids("web")
    stack.gcp_outage("certs", down=True)
    try:
        answer = faulty.login_gcp()
    finally:
        stack.gcp_outage("certs", down=False)
    assert_unavailable(answer, within=8)
    assert "certs" in error_record(faulty, answer)["reason"].lower()
    assert faulty.live_secret_ids("web") == before
    record("google certs endpoint down (503)", answer,
           recovery_status=recovered(faulty, faulty.login_gcp).status)


def test_the_client_rides_through_a_short_vault_outage(clean_faults, tmp_path):
    """The real client against the faulty broker while Vault is sealed; it is unsealed
    after a few seconds and the client's retries (Retry-After as a floor) get through."""
    faulty, stack = clean_faults, clean_faults.stack
    creds = stack.assume("demo-batch", "ride-through")
    stack.seal_vault()
    outage = 3.0
    timer = threading.Timer(outage, stack.unseal_vault)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_"))}
    env.update(AWS_ACCESS_KEY_ID=creds["access_key_id"], AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
               AWS_SESSION_TOKEN=creds["session_token"], AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               PYTHONPATH=str(REPO))
    started = time.monotonic()
    timer.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "broker", "login", "--broker-url", faulty.url, "--role", "batch",
             "--server-id", SERVER_ID, "--cloud", "aws", "--vault-addr", stack.vault_addr,
             "--out-dir", str(tmp_path / "out"), "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    finally:
        timer.cancel()
        timer.join()
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["attempts"] >= 2
    assert (tmp_path / "out" / "secret_id").read_text()
    FIGURES["client rides through a 3 s Vault seal"] = {"status": 0, "seconds": round(seconds, 2),
                                                        "attempts": summary["attempts"]}


@pytest.mark.skipif(os.environ.get("RELIABILITY_SLOW") != "1", reason="~10 s: run by `make faults`")
def test_dynamodb_hangs(clean_faults):
    """The worst case of the DynamoDB budget: every call times out (2 s read timeout,
    2 attempts), for the replay record and then for the audit record. It took ~30 s,
    past API Gateway's 29 s, with the 5 s timeouts of the other AWS clients."""
    faulty = clean_faults
    before = faulty.live_secret_ids()
    faulty.aws.set(Fault("hang", match=dynamodb(), seconds=40))
    answer = faulty.login_batch()
    faulty.aws.clear()
    record("dynamodb hangs (read timeouts)", answer)
    assert faulty.live_secret_ids() == before
    assert recovered(faulty).status == 200
    assert_unavailable(answer, within=20)  # the Lambda timeout of .chalice/config.json
