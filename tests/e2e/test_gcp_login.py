"""End to end on GCP: the real client (`python -m broker login`, a separate process, as
at boot on a GCE instance) against the broker under `chalice local`. The instance's
metadata server is the simulated Google's (`--metadata-url`); the broker verifies the
token with the simulated Google's certificates and reads the instance with its
Compute API, reaching it with workload identity federation from its own AWS keys.

Secrets are asserted on, never printed; every output is checked not to carry them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
TOKEN_PATTERN = re.compile(r"\b(?:hv[sbr]|s|b|r)\.[A-Za-z0-9_-]{20,}")
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+")


def run_client(*args: str, cwd: Path, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The client as on a GCE instance: no AWS credentials at all, only the metadata server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_", "GOOGLE_", "GCE_METADATA_"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(cwd / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(cwd / "no-aws-credentials"), PYTHONPATH=str(REPO))
    env.update(env_extra or {})
    # a broken broker fails fast (2 attempts) instead of retrying for two minutes
    # Nothing pinned: the local stack's http Vault on loopback, allowed explicitly.
    args = (*args, "--max-attempts", "2", "--max-wait", "10", "--allow-insecure-vault")
    return subprocess.run([sys.executable, "-m", "broker", "login", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess, *secrets: str) -> None:
    text = proc.stdout + proc.stderr
    assert not TOKEN_PATTERN.search(text), "something shaped like a Vault token was printed"
    assert not JWT_PATTERN.search(text), "something shaped like an identity token was printed"
    for secret in secrets:
        assert secret not in text, "a secret was printed"
    assert "Traceback" not in text


def test_seeded_gce_instance_gets_web_credentials(local_broker, tmp_path):
    stack = local_broker.stack
    sink = tmp_path / "token"
    # no --cloud: the client finds the GCE metadata server by itself; the audience is the broker URL
    proc = run_client("--broker-url", local_broker.url, "--role", "web", "--sink", str(sink), "--json",
                      cwd=tmp_path, env_extra={"BROKER_GCP_METADATA_URL": stack.gcp_metadata_url_for("web-gce-1")})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["status"], summary["cloud"], summary["role"]) == ("ok", "gcp", "web")
    assert "cloud: GCP" in proc.stderr
    token = sink.read_text()
    kv = requests.get(f"{stack.vault_addr}/v1/secret/data/web/config", headers={"X-Vault-Token": token},
                      timeout=10)
    assert kv.status_code == 200
    assert kv.json()["data"]["data"] == stack.vault_seed.kv["web/config"]
    assert_clean(proc, token, stack.vault_seed.kv["web/config"]["db_password"])


def test_instance_labelled_for_another_role_is_refused(local_broker, tmp_path):
    stack = local_broker.stack
    stack.gcp_create_instance("batch-gce-e2e", labels={"vault-role": "batch"})
    try:
        proc = run_client("--cloud", "gcp", "--broker-url", local_broker.url, "--role", "web",
                          "--metadata-url", stack.gcp_metadata_url_for("batch-gce-e2e"),
                          "--out-dir", str(tmp_path / "agent"), "--json", cwd=tmp_path)
    finally:
        stack.gcp_delete_instance("batch-gce-e2e")
    assert proc.returncode == 4, proc.stderr
    assert "403 not_authorized" in proc.stderr
    assert json.loads(proc.stdout)["code"] == "not_authorized"
    assert not (tmp_path / "agent").exists()
    assert_clean(proc)


@pytest.mark.parametrize("audience", ["https://another-broker.example"])
def test_token_for_another_audience_is_refused(local_broker, tmp_path, audience):
    stack = local_broker.stack
    proc = run_client("--cloud", "gcp", "--broker-url", local_broker.url, "--role", "web",
                      "--metadata-url", stack.gcp_metadata_url_for("web-gce-1"), "--audience", audience,
                      "--sink", str(tmp_path / "token"), cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "401 invalid_proof" in proc.stderr
    assert_clean(proc)
