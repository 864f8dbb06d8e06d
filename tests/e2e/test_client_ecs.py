"""End to end: the real client (`python -m broker login`, a separate process) inside an
ECS task of the local stack: credentials from botocore's container provider (the
task's simulated agent, AWS_CONTAINER_CREDENTIALS_FULL_URI), its task ARN from the
task metadata endpoint v4, against the broker under `chalice local`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import uuid

import requests

from devstack import machines
from devstack.aws import ACCOUNT_ID, TASK_ROLE
from tests.e2e.test_client_login import assert_clean
from tests.e2e.test_security_cli import conn, run_broker

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
    # The token is registered (its body carries the ecs_task_arn claim, as the login's does): the client
    # warns of nothing, and the audit trail holds the registration of this issuance's token.
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert f"token accessor {summary['token_accessor']} registered with the broker" in proc.stderr
    engineer = stack.assume("security-team", f"erin-{uuid.uuid4().hex[:6]}")
    principal = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{TASK_ROLE}/{task.rsplit('/', 1)[1]}"
    search = run_broker(engineer, "audit", "search", "--principal", principal, "--since", "15m", "--json",
                        *conn(local_broker), cwd=tmp_path)
    assert search.returncode == 0, search.stderr
    records = json.loads(search.stdout)["events"]
    assert [r["request_id"] for r in records if r["outcome"] == "issued"] == [summary["request_id"]], records
    # registered by the issuance's key (no second proof): its record names the issuance, not a principal
    from chalicelib.audit import item_to_record

    db = stack.client("dynamodb", stack.admin_keys_for(None))
    items = [item for page in db.get_paginator("scan").paginate(  # every page: the table outgrows one
                 TableName=stack.broker_env()["BROKER_AUDIT_TABLE"], FilterExpression="related_request_id = :r",
                 ExpressionAttributeValues={":r": {"S": summary["request_id"]}}, ConsistentRead=True)
             for item in page["Items"]]
    registrations = [item_to_record(i) for i in items]
    assert [(r["outcome"], r.get("code")) for r in registrations] == [("registration", "token_registered")]
    assert summary["token_accessor"] in registrations[0]["reason"]


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
