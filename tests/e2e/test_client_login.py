"""End to end: the real client (`python -m broker login`, a separate process, as at
boot) against the broker under `chalice local`, with OpenBao and moto (SigV4 on)
behind it. The client's AWS identity is an assumed-role session made in moto,
handed to it through the environment as ECS or IMDS would.

Secrets are asserted on, never printed; every output is checked not to carry them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack import SERVER_ID

REPO = Path(__file__).resolve().parents[2]
TOKEN_PATTERN = re.compile(r"\b(?:hv[sbr]|s|b|r)\.[A-Za-z0-9_-]{20,}")


def run_client(creds: dict, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_"))}
    env.update(
        AWS_ACCESS_KEY_ID=creds["access_key_id"],
        AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
        AWS_SESSION_TOKEN=creds["session_token"],
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(cwd / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(cwd / "no-aws-credentials"),
        PYTHONPATH=str(REPO),
    )
    return subprocess.run([sys.executable, "-m", "broker", "login", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess, *secrets: str) -> None:
    text = proc.stdout + proc.stderr
    assert not TOKEN_PATTERN.search(text), "something shaped like a Vault token was printed"
    for secret in secrets:
        assert secret not in text, "a secret was printed"
    assert "Traceback" not in text


@pytest.fixture
def web_session(local_broker):
    stack = local_broker.stack
    instance_id = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    try:
        yield stack.assume("demo-node", instance_id)
    finally:
        stack.terminate_instance(instance_id)


def _args(local_broker, role: str, *extra: str) -> list[str]:
    # The Vault address is pinned, as at boot: the broker's answer must name the same one.
    return ["--broker-url", local_broker.url, "--role", role, "--server-id", SERVER_ID,
            "--vault-addr", local_broker.stack.vault_addr, *extra]


def test_instance_gets_agent_files_that_log_in(local_broker, web_session, tmp_path):
    stack = local_broker.stack
    out_dir = tmp_path / "agent"
    proc = run_client(web_session, *_args(local_broker, "web", "--out-dir", str(out_dir), "--json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["role"] == "web" and summary["request_id"]
    role_id = (out_dir / "role_id").read_text()
    secret_id = (out_dir / "secret_id").read_text()
    assert role_id == stack.vault_seed.role_ids["web"]
    for name in ("role_id", "secret_id"):
        assert stat.S_IMODE((out_dir / name).stat().st_mode) == 0o600
    assert_clean(proc, role_id, secret_id)

    login = requests.post(f"{stack.vault_addr}/v1/auth/approle/login",
                          json={"role_id": role_id, "secret_id": secret_id}, timeout=10)
    assert login.status_code == 200
    token = login.json()["auth"]["client_token"]
    kv = requests.get(f"{stack.vault_addr}/v1/secret/data/web/config",
                      headers={"X-Vault-Token": token}, timeout=10)
    assert kv.status_code == 200
    assert kv.json()["data"]["data"] == stack.vault_seed.kv["web/config"]
    # single use: the secret ID does not log in twice
    again = requests.post(f"{stack.vault_addr}/v1/auth/approle/login",
                          json={"role_id": role_id, "secret_id": secret_id}, timeout=10)
    assert again.status_code >= 400


def test_batch_job_execs_with_a_vault_token(local_broker, tmp_path):
    stack = local_broker.stack
    creds = stack.assume("demo-batch", "job-42")
    report = tmp_path / "child.json"
    child = (
        "import json, os, sys, urllib.request\n"
        "req = urllib.request.Request(os.environ['VAULT_ADDR'] + '/v1/secret/data/batch/config',\n"
        "                             headers={'X-Vault-Token': os.environ['VAULT_TOKEN']})\n"
        "data = json.load(urllib.request.urlopen(req))['data']['data']\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "os.write(fd, json.dumps(data).encode()); os.close(fd)\n"
        "sys.exit(17)\n"
    )
    proc = run_client(creds, *_args(local_broker, "batch", "--exec", "--", sys.executable, "-c", child,
                                    str(report)), cwd=tmp_path)
    assert proc.returncode == 17, proc.stderr
    assert json.loads(report.read_text()) == stack.vault_seed.kv["batch/config"]
    assert_clean(proc, stack.vault_seed.role_ids["batch"], stack.vault_seed.kv["batch/config"]["db_password"])


def test_batch_job_token_sink(local_broker, tmp_path):
    stack = local_broker.stack
    creds = stack.assume("demo-batch", "job-43")
    sink = tmp_path / "token"
    proc = run_client(creds, *_args(local_broker, "batch", "--sink", str(sink), "--json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(sink.stat().st_mode) == 0o600
    me = requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self",
                      headers={"X-Vault-Token": sink.read_text()}, timeout=10)
    assert me.status_code == 200
    assert "batch" in me.json()["data"]["policies"]
    assert json.loads(proc.stdout)["token_accessor"] == me.json()["data"]["accessor"]
    assert_clean(proc, sink.read_text())


def test_two_processes_with_the_same_credentials_at_once(local_broker, tmp_path):
    """Two services on one machine booting together share its AWS credentials, so they
    may sign the very same proof in the same second; both must still get their role."""
    stack = local_broker.stack
    creds = stack.assume("demo-batch", "shared-host")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_"))}
    env.update(AWS_ACCESS_KEY_ID=creds["access_key_id"], AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
               AWS_SESSION_TOKEN=creds["session_token"], AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "broker", "login", *_args(local_broker, "batch"),
                               "--sink", str(tmp_path / f"token{i}")],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [(p, *p.communicate(timeout=60)) for p in procs]
    for proc, out, err in results:
        assert proc.returncode == 0, err
        assert not TOKEN_PATTERN.search(out + err)
    assert (tmp_path / "token0").read_text() != (tmp_path / "token1").read_text()


def test_caller_without_a_rule_is_refused(local_broker, tmp_path):
    creds = local_broker.stack.assume("demo-other", "someone")
    proc = run_client(creds, *_args(local_broker, "web", "--out-dir", str(tmp_path / "agent"), "--json"),
                      cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "403 not_authorized" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["code"] == "not_authorized" and summary["request_id"]
    assert not (tmp_path / "agent").exists()
    assert_clean(proc)


def test_proof_for_another_server_id_is_refused(local_broker, web_session, tmp_path):
    proc = run_client(web_session, "--broker-url", local_broker.url, "--role", "web",
                      "--server-id", "some-other-deployment", "--out-dir", str(tmp_path / "agent"), cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "401 invalid_proof" in proc.stderr
    assert_clean(proc)


def test_sealed_vault_means_unavailable_after_retries(local_broker, sealed_vault, tmp_path):
    creds = local_broker.stack.assume("demo-batch", "job-44")
    proc = run_client(creds, *_args(local_broker, "batch", "--sink", str(tmp_path / "token"),
                                    "--max-attempts", "2", "--max-wait", "8"), cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "503" in proc.stderr
    assert not (tmp_path / "token").exists()
    assert_clean(proc)


def test_an_exec_does_not_wait_for_the_token_registration_nor_loses_it(local_broker, tmp_path):
    """--exec: the command runs first; the registration (by the issuance's key) follows from a
    detached process, and the broker keeps the token's accessor."""
    import time

    from chalicelib.stores.tokens import TokenRegistry

    stack = local_broker.stack
    creds = stack.assume("demo-batch", "job-44")
    child = "import json, os; print(json.dumps({'pid': os.getpid()}))"
    proc = run_client(creds, *_args(local_broker, "batch", "--json", "--exec", "--", sys.executable, "-c", child),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[0])
    assert summary["token_registration"] == "after exec, in a detached process"
    db = stack.client("dynamodb", stack.admin_keys_for(None))
    registry = TokenRegistry(db, stack.broker_env()["BROKER_QUARANTINE_TABLE"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not registry.get_many([summary["request_id"]]):
        time.sleep(0.1)
    assert registry.get_many([summary["request_id"]]) == {summary["request_id"]: [summary["token_accessor"]]}
    assert "warning" not in proc.stderr.lower(), proc.stderr
