"""The local stack is real: moto verifies signatures and IAM policies, OpenBao
seals, AppRole secret IDs are single-use, the broker's Vault identity works."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import hvac
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from devstack import ACCOUNT_ID, SERVER_ID
from devstack.aws import MOTO_WORKAROUND_POLICY_NAME, VAULT_SECRET_ID_SECRET
from devstack.procs import pid_alive

PROJECT = Path(__file__).resolve().parent.parent
GCI_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def _signed_gci(creds: dict, secret: str | None = None) -> dict:
    """Headers of a GetCallerIdentity signed for https://sts.amazonaws.com/, as a
    client builds its proof (server-ID header signed)."""
    req = AWSRequest(method="POST", url="https://sts.amazonaws.com/", data=GCI_BODY, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Vault-AWS-IAM-Server-ID": SERVER_ID})
    SigV4Auth(Credentials(creds["access_key_id"], secret or creds["secret_access_key"],
                          creds.get("session_token")), "sts", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def _forward(stack, headers: dict) -> requests.Response:
    """What the broker does with BROKER_STS_FORWARD_URL: same bytes, signed Host kept."""
    return requests.post(stack.aws_endpoint_url + "/", data=GCI_BODY,
                         headers={**headers, "Host": "sts.amazonaws.com"}, timeout=5)


def test_moto_verifies_sigv4_and_returns_assumed_role_arn(stack):
    creds = stack.assume("demo-node", "i-0123456789abcdef0")

    forged = _forward(stack, _signed_gci(creds, secret="x" * 40))
    assert forged.status_code == 403
    assert "SignatureDoesNotMatch" in forged.text

    ok = _forward(stack, _signed_gci(creds))
    assert ok.status_code == 200, ok.text
    arn = re.search(r"<Arn>(.*?)</Arn>", ok.text).group(1)
    assert arn == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-node/i-0123456789abcdef0"

    # and through boto3, with the admin keys but a wrong secret
    bad = dict(access_key_id=stack.admin_keys.access_key_id, secret_access_key="wrong")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("sts", bad).get_caller_identity()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_broker_iam_user_is_least_privilege(stack):
    iam = stack.client("iam")
    attached = json.loads(json.dumps(iam.get_user_policy(
        UserName="secret-zero-broker", PolicyName="secret-zero-broker-dev")["PolicyDocument"]))
    assert attached == json.loads((PROJECT / ".chalice" / "policy-dev.json").read_text())
    names = iam.list_user_policies(UserName="secret-zero-broker")["PolicyNames"]
    assert sorted(names) == sorted(["secret-zero-broker-dev", MOTO_WORKAROUND_POLICY_NAME])

    ddb = stack.client("dynamodb")
    for table in ("secret-zero-audit", "secret-zero-replay"):
        ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}

    broker = stack.broker_keys
    stack.client("ec2", broker).describe_instances()
    stack.client("iam", broker).get_instance_profile(InstanceProfileName="demo-node")
    stack.client("dynamodb", broker).describe_table(TableName="secret-zero-audit")
    secret_id = stack.client("secretsmanager", broker).get_secret_value(
        SecretId=VAULT_SECRET_ID_SECRET)["SecretString"]
    assert secret_id == stack.vault_seed.broker_secret_id
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("iam", broker).create_user(UserName="mallory")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("sts", broker).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/demo-node", RoleSessionName="mallory")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_launch_instance_running_with_profile_and_tags(stack):
    iid = stack.launch_instance({"vault-role": "web"})
    inst = stack.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"
    assert inst["IamInstanceProfile"]["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/demo-node"
    assert {"Key": "vault-role", "Value": "web"} in inst["Tags"]
    stack.stop_instance(iid)
    assert stack.instance_state(iid) == "stopped"


def test_openbao_seals_and_unseals(stack):
    stack.seal_vault()
    try:
        assert stack.vault().sys.is_sealed()
        assert requests.get(stack.vault_addr + "/v1/sys/health", timeout=2).status_code == 503
    finally:
        stack.unseal_vault()
    assert not stack.vault().sys.is_sealed()
    assert stack.vault().secrets.kv.v2.read_secret_version(
        path="web/config", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["api_url"]


def test_web_secret_ids_are_single_use(stack):
    root = stack.vault()
    web = root.auth.approle.read_role("web")["data"]
    assert (web["secret_id_num_uses"], web["secret_id_ttl"], web["token_ttl"]) == (1, 300, 3600)
    assert web["token_policies"] == ["web"]
    own = root.auth.approle.read_role("secret-zero-broker")["data"]
    assert (own["secret_id_num_uses"], own["token_ttl"], own["token_max_ttl"]) == (0, 3600, 14400)
    role_id = root.auth.approle.read_role_id("web")["data"]["role_id"]
    secret_id = root.write_data("auth/approle/role/web/secret-id")["data"]["secret_id"]
    client = hvac.Client(url=stack.vault_addr)
    login = client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=True)
    assert login["auth"]["token_policies"] == ["default", "web"]
    assert client.secrets.kv.v2.read_secret_version(
        path="web/config", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["db_password"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path="batch/config", mount_point="secret",
                                                 raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.VaultError):
        hvac.Client(url=stack.vault_addr).auth.approle.login(role_id=role_id, secret_id=secret_id)


def test_broker_approle_survives_vault_restart(stack):
    def broker_login() -> hvac.Client:
        env = stack.broker_env()
        sid = stack.client("secretsmanager", stack.broker_keys).get_secret_value(
            SecretId=env["BROKER_VAULT_SECRET_ID_SECRET"])["SecretString"]
        c = hvac.Client(url=env["BROKER_VAULT_ADDR"])
        c.auth.approle.login(role_id=env["BROKER_VAULT_ROLE_ID"], secret_id=sid, use_token=True)
        return c

    wrapped = broker_login().write_data("auth/approle/role/web/secret-id", wrap_ttl="60s")
    assert wrapped["wrap_info"]["creation_path"] == "auth/approle/role/web/secret-id"

    stack.stop_vault()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(stack.vault_addr + "/v1/sys/health", timeout=1)
    finally:
        changed = stack.start_vault()
    assert changed == {}  # same port, same role ID, same secret ID
    c = broker_login()
    with pytest.raises(hvac.exceptions.Forbidden):  # its policy: wrapped only
        c.write_data("auth/approle/role/web/secret-id")
    with pytest.raises(hvac.exceptions.Forbidden):
        c.secrets.kv.v2.read_secret_version(path="web/config", mount_point="secret",
                                            raise_on_deleted_version=True)


def test_chalice_local_runner(stack, tmp_path, monkeypatch):
    """The runner behind ``local_broker``, on a stub app (the real one is tested elsewhere)."""
    project = tmp_path / "proj"
    shutil.copytree(PROJECT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployed", "deployments"))
    (project / "app.py").write_text(
        "import os\nfrom chalice import Chalice, Response\n"
        "app = Chalice(app_name='secret-zero-broker')\n"
        "@app.route('/v1/health')\n"
        "def health():\n"
        "    env = {k: v for k, v in os.environ.items() if k.startswith(('AWS_', 'BROKER_', 'GOOGLE_'))}\n"
        "    return Response(status_code=503, body=env)\n")
    monkeypatch.setenv("AWS_PROFILE", "someone-elses")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stale")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "someone-elses")
    from devstack.broker import ChaliceLocal

    broker = ChaliceLocal(tmp_path, stack.broker_env(), project_dir=project).start()
    try:
        broker.wait_ready(timeout=20)
        r = requests.get(broker.url + "/v1/health", timeout=5)
        assert r.status_code == 503
        env = r.json()
        for k, v in stack.broker_env().items():
            assert env[k] == v
        assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
        assert "GOOGLE_CLOUD_PROJECT" not in env
        pid = broker.pid
    finally:
        broker.stop()
    assert not pid_alive(pid)


def test_cli_up_status_down(tmp_path):
    state = tmp_path / "state"
    run = lambda *a: subprocess.run([sys.executable, "-m", "devstack", *a, "--dir", str(state)],
                                    cwd=PROJECT, capture_output=True, text=True, timeout=60)
    up = run("up", "--no-broker")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "OpenBao dev server on http://127.0.0.1:" in up.stdout
        endpoints = json.loads((state / "endpoints.json").read_text())
        assert (state / "endpoints.json").stat().st_mode & 0o077 == 0
        for secret in (endpoints["aws_admin_secret_access_key"], endpoints["vault_unseal_key"]):
            assert secret not in up.stdout + up.stderr
        status = run("status")
        assert status.returncode == 0 and "OpenBao: running" in status.stdout, status.stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in endpoints["pids"].values():
        assert pid is None or not pid_alive(pid)
    assert not state.exists()
    assert run("down").returncode == 0  # idempotent
