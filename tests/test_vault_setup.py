"""`broker vault setup` against a fresh OpenBao dev server (one per test) and the stack's
moto (Secrets Manager, SigV4 verified): dry run, set-up, idempotence, drift repair, the
stored secret ID, refusals. Secrets are asserted on, never printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from broker import cli
from broker.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent
BAO = Path(sys.executable).parent / "bao"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bao:
    def __init__(self, addr: str) -> None:
        self.addr = addr

    def call(self, method: str, path: str, token: str = "root", **body) -> requests.Response:
        return requests.request(method, f"{self.addr}/v1/{path}", json=body or None,
                                headers={"X-Vault-Token": token}, timeout=10)

    def data(self, path: str) -> dict:
        r = self.call("GET", path)
        assert r.status_code == 200, (path, r.status_code)
        return r.json()["data"]


@pytest.fixture
def bao(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(tmp_path)
    log = open(tmp_path / "bao.log", "w")
    proc = subprocess.Popen([str(BAO), "server", "-dev", "-dev-root-token-id=root", "-dev-no-store-token",
                             f"-dev-listen-address=127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    addr = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "OpenBao did not start"
            time.sleep(0.05)
        yield Bao(addr)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def env(stack, monkeypatch, bao):
    """The CLI's environment: the bao root token, the stack's admin AWS keys; a fresh secret name."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_TOKEN", "root")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.admin_keys.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.admin_keys.secret_access_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.chdir(REPO)
    return {"secret": f"secret-zero-broker/test-{uuid.uuid4().hex[:8]}/vault-secret-id",
            "sm": stack.client("secretsmanager"), "endpoint": stack.aws_endpoint_url}


def run_setup(bao, env, capsys, *extra: str) -> tuple[int, dict | None, str]:
    rc = cli.main(["vault", "setup", "--vault-addr", bao.addr, "--secret", env["secret"], "--aws-region",
                   "us-east-1", "--aws-endpoint-url", env["endpoint"], "--json", *extra])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if captured.out.strip() else None
    return rc, summary, captured.out + captured.err


def stored_secret_id(env) -> str:
    return env["sm"].get_secret_value(SecretId=env["secret"])["SecretString"]


def test_dry_run_on_a_fresh_vault_says_everything_and_changes_nothing(bao, env, capsys):
    rc, summary, output = run_setup(bao, env, capsys, "--dry-run")
    assert rc == 0, output
    assert summary["dry_run"] is True
    assert summary["changes"][0] == "enable the approle auth method at approle/"
    assert {c.split(" (")[0] for c in summary["changes"][1:]} >= {
        "create policy secret-zero-broker", "create policy web", "create policy batch",
        "create AppRole secret-zero-broker", "create AppRole batch", "create AppRole web",
        "create policy secret-zero-revoker", "create AppRole secret-zero-revoker", "turn off user lockout on approle/"}
    assert summary["changes"][-2].startswith("create a secret ID for AppRole secret-zero-broker")
    assert summary["changes"][-1].startswith("create a secret ID for AppRole secret-zero-revoker and store it in "
                                             f"{env['secret']}-revoker")
    assert "approle/" not in bao.data("sys/auth")
    with pytest.raises(env["sm"].exceptions.ResourceNotFoundException):
        env["sm"].get_secret_value(SecretId=env["secret"])


def test_setup_is_complete_and_idempotent(bao, env, capsys):
    rc, summary, output = run_setup(bao, env, capsys)
    assert rc == 0, output
    assert len(summary["changes"]) == 1 + 1 + 4 + 4 + 2 and summary["unchanged"] == []

    for role in ("web", "batch"):
        settings = bao.data(f"auth/approle/role/{role}")
        assert settings["secret_id_num_uses"] == 1
        assert settings["secret_id_ttl"] == 300  # the rules' 5m
        assert settings["token_policies"] == [role]
        assert bao.data(f"sys/policies/acl/{role}")["policy"] == (REPO / "policies/vault" / f"{role}.hcl").read_text()
    broker = bao.data("auth/approle/role/secret-zero-broker")
    assert broker["secret_id_num_uses"] == 0 and broker["token_policies"] == ["secret-zero-broker"]

    # the stored secret ID logs the broker in, and the broker can do its job (wrapped only)
    secret_id = stored_secret_id(env)
    assert secret_id not in output
    role_id = bao.data("auth/approle/role/secret-zero-broker/role-id")["role_id"]
    login = requests.post(f"{bao.addr}/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id},
                          timeout=10)
    assert login.status_code == 200
    token = login.json()["auth"]["client_token"]
    wrapped = requests.post(f"{bao.addr}/v1/auth/approle/role/web/secret-id", json={},
                            headers={"X-Vault-Token": token, "X-Vault-Wrap-TTL": "60s"}, timeout=10)
    assert wrapped.status_code == 200 and wrapped.json()["wrap_info"]["creation_path"].endswith("web/secret-id")
    bare = requests.post(f"{bao.addr}/v1/auth/approle/role/web/secret-id", json={},
                         headers={"X-Vault-Token": token}, timeout=10)
    assert bare.status_code == 403  # min_wrapping_ttl: never unwrapped

    # the revoking identity: its own secret, and the powers of its policy (and no others)
    revoker_role_id = bao.data("auth/approle/role/secret-zero-revoker/role-id")["role_id"]
    revoker_secret = env["sm"].get_secret_value(SecretId=env["secret"] + "-revoker")["SecretString"]
    revoker = requests.post(f"{bao.addr}/v1/auth/approle/login", timeout=10,
                            json={"role_id": revoker_role_id, "secret_id": revoker_secret}).json()["auth"]
    assert revoker["token_policies"] == ["default", "secret-zero-revoker"]
    as_revoker = {"X-Vault-Token": revoker["client_token"]}
    assert requests.request("LIST", f"{bao.addr}/v1/auth/token/accessors", headers=as_revoker,
                            timeout=10).status_code == 200
    assert requests.post(f"{bao.addr}/v1/auth/approle/role/web/secret-id", json={}, timeout=10,
                         headers=dict(as_revoker, **{"X-Vault-Wrap-TTL": "60s"})).status_code == 403  # never issues
    assert requests.request("LIST", f"{bao.addr}/v1/auth/token/accessors", headers={"X-Vault-Token": token},
                            timeout=10).status_code == 403  # and the issuing identity never lists tokens
    # no lockout: eight failed logins with web's role ID, then a valid secret ID of web logs in
    web_role_id = bao.data("auth/approle/role/web/role-id")["role_id"]
    assert bao.data("sys/auth/approle/tune")["user_lockout_disable"] is True
    for _ in range(8):
        assert requests.post(f"{bao.addr}/v1/auth/approle/login", timeout=10,
                             json={"role_id": web_role_id, "secret_id": str(uuid.uuid4())}).status_code == 400
    fresh = bao.call("POST", "auth/approle/role/web/secret-id").json()["data"]["secret_id"]
    assert requests.post(f"{bao.addr}/v1/auth/approle/login", timeout=10,
                         json={"role_id": web_role_id, "secret_id": fresh}).status_code == 200

    version = env["sm"].describe_secret(SecretId=env["secret"])["VersionIdsToStages"]
    rc, again, output = run_setup(bao, env, capsys)
    assert rc == 0, output
    assert again["changes"] == []
    assert len(again["unchanged"]) == 1 + 1 + 4 + 4 + 2
    assert env["sm"].describe_secret(SecretId=env["secret"])["VersionIdsToStages"] == version
    assert "nothing to change" in output
    # the broker's secret ID never expires (secret_id_ttl 0): said so, not as Vault's zero time
    (stored,) = [line for line in again["unchanged"] if line.startswith("the broker's secret ID")]
    assert stored.endswith("(valid; expires never)") and "0001-01-01" not in output


def test_drift_is_repaired_and_only_drift(bao, env, capsys):
    assert run_setup(bao, env, capsys)[0] == 0
    assert bao.call("POST", "auth/approle/role/web", secret_id_num_uses=0, token_ttl=1234).status_code == 204
    assert bao.call("POST", "sys/policies/acl/batch", policy='path "secret/*" { capabilities = ["read"] }'
                    ).status_code == 204
    rc, summary, output = run_setup(bao, env, capsys)
    assert rc == 0, output
    assert summary["changes"] == ["update policy batch", "update AppRole web: secret_id_num_uses=1"]
    assert bao.data("auth/approle/role/web")["secret_id_num_uses"] == 1
    assert bao.data("auth/approle/role/web")["token_ttl"] == 1234  # the operator's choice stays


def test_an_invalid_stored_secret_id_is_replaced(bao, env, capsys):
    assert run_setup(bao, env, capsys)[0] == 0
    env["sm"].put_secret_value(SecretId=env["secret"], SecretString="not-a-secret-id")
    rc, summary, output = run_setup(bao, env, capsys)
    assert rc == 0, output
    assert summary["changes"] == ["create a secret ID for AppRole secret-zero-broker and store it in "
                                  f"{env['secret']} (not a valid secret ID of the broker's AppRole)"]
    looked = bao.call("POST", "auth/approle/role/secret-zero-broker/secret-id/lookup", secret_id=stored_secret_id(env))
    assert looked.status_code == 200


@pytest.mark.parametrize("damage, message", [
    ("missing-web-policy", "no policy file for web"),
    ("broker-policy-without-batch", "does not let the broker read the role ID and create secret IDs of batch"),
])
def test_policy_directory_problems_stop_before_any_change(bao, env, capsys, tmp_path, damage, message):
    policy_dir = tmp_path / "vault-policies"
    shutil.copytree(REPO / "policies" / "vault", policy_dir)
    if damage == "missing-web-policy":
        (policy_dir / "web.hcl").unlink()
    else:
        broker = policy_dir / "secret-zero-broker.hcl"
        broker.write_text(broker.read_text().replace("role/batch/", "role/other/"))
    rc, _, output = run_setup(bao, env, capsys, "--policy-dir", str(policy_dir))
    assert rc == EXIT_USAGE
    assert message in output
    assert "approle/" not in bao.data("sys/auth")


def test_the_seeded_stack_is_what_setup_makes(stack, capsys, monkeypatch):
    """devstack seeds OpenBao with setup's own steps: `broker vault setup` finds nothing to change."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_TOKEN", "root")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.admin_keys.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.admin_keys.secret_access_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.chdir(REPO)
    rc = cli.main(["vault", "setup", "--vault-addr", stack.vault_addr, "--secret", stack.broker_env()[
        "BROKER_VAULT_SECRET_ID_SECRET"], "--aws-region", "us-east-1", "--aws-endpoint-url", stack.aws_endpoint_url,
        "--json", "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["changes"] == []
    assert len(summary["unchanged"]) == 1 + 1 + 4 + 4 + 2
