"""End to end: the real client (`python -m broker login`, a separate process) inside an
ECS task of the local stack: credentials from botocore's container provider (the
task's simulated agent, AWS_CONTAINER_CREDENTIALS_FULL_URI), its task ARN from the
task metadata endpoint v4, against the broker under `chalice local`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from devstack import machines
from tests.e2e.test_client_login import assert_clean

REPO = Path(__file__).resolve().parents[2]


def run_in_task(stack, task_arn: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = machines.process_env(machines.task_env(stack, task_arn))
    env["PYTHONPATH"] = str(REPO)
    env["BROKER_CONFIG"] = "/dev/null"
    return subprocess.run([sys.executable, "-m", "broker", "login", "--json", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_task_tagged_for_web_gets_web_naming_its_task(local_broker, tmp_path):
    stack = local_broker.stack
    task = stack.run_task({"vault-role": "web"})
    try:
        sink = tmp_path / "token"
        proc = run_in_task(stack, task, "--broker-url", local_broker.url, "--role", "web", "--cloud", "aws",
                           "--sink", str(sink), cwd=tmp_path)
    finally:
        stack.stop_task(task)
    assert proc.returncode == 0, proc.stderr
    assert f"ECS task: {task}" in proc.stderr
    summary = json.loads(proc.stdout)
    me = requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self",
                      headers={"X-Vault-Token": sink.read_text()}, timeout=10)
    assert me.status_code == 200 and me.json()["data"]["accessor"] == summary["token_accessor"]
    assert_clean(proc, sink.read_text())


def test_a_task_of_the_same_role_tagged_for_another_role_is_refused(local_broker, tmp_path):
    stack = local_broker.stack
    task = stack.run_task({"vault-role": "batch"})
    try:
        proc = run_in_task(stack, task, "--broker-url", local_broker.url, "--role", "web", "--cloud", "aws",
                           "--sink", str(tmp_path / "token"), cwd=tmp_path)
    finally:
        stack.stop_task(task)
    assert proc.returncode == 4, proc.stderr
    assert json.loads(proc.stdout)["code"] == "not_authorized"
    assert not (tmp_path / "token").exists()
