"""`broker vault rotate-broker-secret`: against a fresh OpenBao set up by `broker vault setup`
(one per test) and the stack's moto; then against the running broker under `chalice local`,
which must keep issuing through the rotation and recover with the new secret ID when its
token is revoked. Secrets are asserted on, never printed."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker import cli
from broker.errors import EXIT_INTERRUPTED, EXIT_USAGE
from devstack.aws import VAULT_SECRET_ID_SECRET
from tests.secret_scan import register_secret
from tests.sigv4 import signed_login
from tests import test_vault_setup
from tests.test_vault_setup import run_setup, stored_secret_id

bao = test_vault_setup.bao  # the fixtures: a fresh OpenBao per test, the CLI's environment
env = test_vault_setup.env

BROKER_ROLE = "secret-zero-broker"


def run_rotate(addr: str, secret: str, endpoint: str, capsys, *extra: str) -> tuple[int, dict | None, str]:
    rc = cli.main(["vault", "rotate-broker-secret", "--vault-addr", addr, "--secret", secret, "--aws-region",
                   "us-east-1", "--aws-endpoint-url", endpoint, "--json", *extra])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else None
    return rc, summary, captured.out + captured.err


def login_status(addr: str, role_id: str, secret_id: str) -> int:
    r = requests.post(f"{addr}/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id}, timeout=10)
    if r.status_code == 200:  # don't leave tokens behind
        requests.post(f"{addr}/v1/auth/token/revoke-self", headers={"X-Vault-Token": r.json()["auth"]["client_token"]},
                      timeout=10)
    return r.status_code


def accessor_of(bao, secret_id: str) -> str | None:
    r = bao.call("POST", f"auth/approle/role/{BROKER_ROLE}/secret-id/lookup", secret_id=secret_id)
    return r.json()["data"]["secret_id_accessor"] if r.status_code == 200 else None


@pytest.fixture
def set_up(bao, env, capsys):
    rc, _, output = run_setup(bao, env, capsys)
    assert rc == 0, output
    old = stored_secret_id(env)
    role_id = bao.data(f"auth/approle/role/{BROKER_ROLE}/role-id")["role_id"]
    return {"old": old, "old_accessor": accessor_of(bao, old), "role_id": role_id}


def rotate(bao, env, capsys, *extra):
    return run_rotate(bao.addr, env["secret"], env["endpoint"], capsys, *extra)


def test_dry_run_says_what_it_would_do_and_changes_nothing(bao, env, set_up, capsys):
    versions = env["sm"].describe_secret(SecretId=env["secret"])["VersionIdsToStages"]
    rc, summary, output = rotate(bao, env, capsys, "--dry-run")
    assert rc == 0, output
    assert summary["dry_run"] is True and summary["old_accessor"] == set_up["old_accessor"]
    assert summary["new_accessor"] is None and summary["old_destroyed"] is False
    assert "would: wait 15m, then destroy the old one" in output
    assert env["sm"].describe_secret(SecretId=env["secret"])["VersionIdsToStages"] == versions
    assert bao.call("LIST", f"auth/approle/role/{BROKER_ROLE}/secret-id").json()["data"]["keys"] == [
        set_up["old_accessor"]]
    assert set_up["old"] not in output


def test_rotation_without_grace_stores_the_new_one_and_destroys_the_old(bao, env, set_up, capsys):
    rc, summary, output = rotate(bao, env, capsys, "--grace", "0")
    assert rc == 0, output
    new = stored_secret_id(env)
    register_secret(new, "the broker's secret ID (rotated, fresh OpenBao)")
    assert new != set_up["old"]
    assert summary["old_accessor"] == set_up["old_accessor"] and summary["old_destroyed"] is True
    assert summary["new_accessor"] == accessor_of(bao, new) != set_up["old_accessor"]
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 400
    assert login_status(bao.addr, set_up["role_id"], new) == 200
    # Secrets Manager keeps the old value as AWSPREVIOUS (the roll-back during a grace period)
    previous = env["sm"].get_secret_value(SecretId=env["secret"], VersionStage="AWSPREVIOUS")["SecretString"]
    assert previous == set_up["old"]
    # the new secret ID says where it came from (Vault copies this onto the broker's tokens)
    meta = bao.call("POST", f"auth/approle/role/{BROKER_ROLE}/secret-id-accessor/lookup",
                    secret_id_accessor=summary["new_accessor"]).json()["data"]["metadata"]
    assert meta == {"created_by": "broker vault rotate-broker-secret", "replaces": set_up["old_accessor"]}
    # the check login's token was revoked: no token of the broker's role is left
    assert not [a for a in _role_token_accessors(bao.addr, "root", BROKER_ROLE)]
    for secret in (set_up["old"], new, set_up["role_id"]):
        assert secret not in output
    assert bao.call("LIST", f"auth/approle/role/{BROKER_ROLE}/secret-id").json()["data"]["keys"] == [
        summary["new_accessor"]]


def test_two_phases_keep_old_then_finish(bao, env, set_up, capsys):
    rc, summary, output = rotate(bao, env, capsys, "--keep-old")
    assert rc == 0, output
    new = stored_secret_id(env)
    register_secret(new, "the broker's secret ID (rotated, fresh OpenBao)")
    old_accessor = set_up["old_accessor"]
    assert summary["old_destroyed"] is False
    assert summary["finish_command"] == (f"broker vault rotate-broker-secret --secret {env['secret']} "
                                         f"--finish {old_accessor}")
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 200  # both work during the grace
    assert login_status(bao.addr, set_up["role_id"], new) == 200

    rc, _, output = rotate(bao, env, capsys, "--finish", old_accessor)  # the default grace: 15 min
    assert rc == EXIT_USAGE and "wait 1" in output and "more before destroying the old one" in output
    rc, _, output = rotate(bao, env, capsys, "--finish", summary["new_accessor"], "--grace", "0")
    assert rc == EXIT_USAGE and "is the secret ID stored in" in output
    rc, dry, output = rotate(bao, env, capsys, "--finish", old_accessor, "--grace", "0", "--dry-run")
    assert rc == 0 and dry["old_destroyed"] is False and "would: destroy the old secret ID" in output
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 200

    rc, done, output = rotate(bao, env, capsys, "--finish", old_accessor, "--grace", "0")
    assert rc == 0, output
    assert done["old_destroyed"] is True and done["new_accessor"] == summary["new_accessor"]
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 400
    assert login_status(bao.addr, set_up["role_id"], new) == 200
    rc, again, output = rotate(bao, env, capsys, "--finish", old_accessor, "--grace", "0")
    assert rc == 0 and "nothing to do" in output


def test_finish_refuses_when_the_stored_value_is_not_a_valid_secret_id(bao, env, set_up, capsys):
    env["sm"].put_secret_value(SecretId=env["secret"], SecretString="not-a-secret-id")
    rc, _, output = rotate(bao, env, capsys, "--finish", set_up["old_accessor"], "--grace", "0")
    assert rc == EXIT_USAGE and "would leave the broker without any" in output
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 200


def test_interrupted_wait_keeps_the_old_one_and_says_how_to_finish(bao, env, set_up, capsys, monkeypatch):
    waited = []

    def interrupted(seconds):
        waited.append(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    rc, _, output = rotate(bao, env, capsys, "--grace", "20m")
    monkeypatch.undo()
    assert rc == EXIT_INTERRUPTED and waited == [1200]
    assert f"--finish {set_up['old_accessor']}" in output
    new = stored_secret_id(env)
    register_secret(new, "the broker's secret ID (rotated, fresh OpenBao)")
    assert new != set_up["old"]
    assert login_status(bao.addr, set_up["role_id"], set_up["old"]) == 200
    assert login_status(bao.addr, set_up["role_id"], new) == 200


def test_a_failed_store_takes_the_new_secret_id_back(bao, env, set_up, capsys, monkeypatch):
    # Secrets Manager refuses the write (here: AWS keys that may not write): nothing changes
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    rc, _, output = rotate(bao, env, capsys, "--grace", "0")
    assert rc != 0 and "cannot" in output
    monkeypatch.undo()
    assert bao.call("LIST", f"auth/approle/role/{BROKER_ROLE}/secret-id").json()["data"]["keys"] == [
        set_up["old_accessor"]]


# ---- the running broker --------------------------------------------------------------------------


def _role_token_accessors(addr: str, root: str, role: str) -> list[str]:
    """Accessors of the live tokens logged in with ``role`` (AppRole sets meta.role_name)."""
    headers = {"X-Vault-Token": root}
    listed = requests.request("LIST", f"{addr}/v1/auth/token/accessors", headers=headers, timeout=10)
    accessors = listed.json()["data"]["keys"] if listed.status_code == 200 else []

    def meta(accessor):
        r = requests.post(f"{addr}/v1/auth/token/lookup-accessor", json={"accessor": accessor}, headers=headers,
                          timeout=10)
        return accessor, ((r.json().get("data") or {}).get("meta") or {}) if r.status_code == 200 else {}

    with ThreadPoolExecutor(8) as pool:
        return [a for a, m in pool.map(meta, accessors) if m.get("role_name") == role]


def _role_tokens_meta(addr: str, root: str, role: str) -> list[dict]:
    headers = {"X-Vault-Token": root}
    out = []
    for accessor in _role_token_accessors(addr, root, role):
        r = requests.post(f"{addr}/v1/auth/token/lookup-accessor", json={"accessor": accessor}, headers=headers,
                          timeout=10)
        if r.status_code == 200:
            out.append({"accessor": accessor, **(r.json()["data"].get("meta") or {})})
    return out


def issue_batch(local_broker) -> int:
    stack = local_broker.stack
    creds = stack.assume("demo-batch", f"rotation-{time.monotonic_ns() % 10**9}")
    body = signed_login(creds, "batch", stack.broker_env()["BROKER_SERVER_ID"])
    r = requests.post(f"{local_broker.url}/v1/credentials/aws", json=body, timeout=60, proxies={"http": None})
    if r.status_code == 200:  # spend what was issued
        for wrap in ("role_id_wrap", "secret_id_wrap"):
            requests.post(f"{stack.vault_addr}/v1/sys/wrapping/unwrap",
                          headers={"X-Vault-Token": r.json()[wrap]["token"]}, timeout=10)
    return r.status_code


def test_the_running_broker_rides_through_a_rotation(local_broker, capsys, monkeypatch):
    stack = local_broker.stack
    addr, root = stack.vault_addr, "root"
    for name in list(os.environ):
        if name.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_TOKEN", root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.admin_keys.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.admin_keys.secret_access_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    sm = stack.client("secretsmanager")
    role_id = stack.vault_seed.broker_role_id
    old = sm.get_secret_value(SecretId=VAULT_SECRET_ID_SECRET)["SecretString"]

    assert issue_batch(local_broker) == 200  # the broker holds a token from the old secret ID
    try:
        rc, summary, output = run_rotate(addr, VAULT_SECRET_ID_SECRET, stack.aws_endpoint_url, capsys,
                                         "--grace", "1s")
        assert rc == 0, output
    finally:
        # the stack's seed follows what is stored (a Vault restart puts the same secret ID back)
        current = sm.get_secret_value(SecretId=VAULT_SECRET_ID_SECRET)["SecretString"]
        register_secret(current, "the broker's secret ID (rotated)")
        stack.vault_seed.broker_secret_id = current
    new = current
    assert new != old and summary["old_destroyed"] is True
    assert "waiting 1s" in output
    for secret in (old, new, role_id):
        assert secret not in output

    assert login_status(addr, role_id, old) == 400
    assert login_status(addr, role_id, new) == 200
    assert issue_batch(local_broker) == 200  # its token still works

    # force a re-login: revoke the broker's tokens; it is refused with the old secret ID it holds,
    # reads Secrets Manager again, logs in with the new one, within the same request
    before = _role_tokens_meta(addr, root, BROKER_ROLE)
    assert before and not [m for m in before if m.get("created_by")]
    for token in before:
        requests.post(f"{addr}/v1/auth/token/revoke-accessor", json={"accessor": token["accessor"]},
                      headers={"X-Vault-Token": root}, timeout=10)
    assert issue_batch(local_broker) == 200
    after = _role_tokens_meta(addr, root, BROKER_ROLE)
    assert after and all(m.get("created_by") == "broker vault rotate-broker-secret"
                         and m.get("replaces") == summary["old_accessor"] for m in after)
    assert issue_batch(local_broker) == 200
