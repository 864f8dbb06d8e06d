"""The client's `--agent-dir` hand-off and exec mode's signal forwarding, against the
stack's real OpenBao with a stand-in broker (the end-to-end path with the real broker and
`bao agent` is tests/e2e/test_agent_handoff.py).

Secrets are asserted on, never printed; captured output is checked not to carry them.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from broker import cli
from broker.errors import EXIT_INTERCEPTION, EXIT_USAGE
from devstack.vault import ROOT_TOKEN
from tests.e2e.test_client_login import TOKEN_PATTERN
from tests.test_client_unit import FakeBroker, clean_env  # noqa: F401 (clean_env: the same autouse fixture)

REPO = Path(__file__).resolve().parent.parent
SERVER_ID = "broker.test.example"




@pytest.fixture
def fake_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


class Minter:
    """Plays the broker's Vault side on the stack's OpenBao (root token)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr

    def call(self, method: str, path: str, wrap_ttl: str | None = None, **body) -> dict:
        headers = {"X-Vault-Token": ROOT_TOKEN}
        if wrap_ttl:
            headers["X-Vault-Wrap-TTL"] = wrap_ttl
        r = requests.request(method, f"{self.addr}/v1/{path}", json=body or None, headers=headers, timeout=10)
        assert r.status_code in (200, 204), f"{method} {path}: HTTP {r.status_code}"
        return r.json() if r.content else {}

    def mint(self, role: str = "web", *, secret_wrap: dict | None = None) -> dict:
        role_wrap = self.call("GET", f"auth/approle/role/{role}/role-id", wrap_ttl="60s")["wrap_info"]
        secret_wrap = secret_wrap or self.call("POST", f"auth/approle/role/{role}/secret-id",
                                               wrap_ttl="60s")["wrap_info"]

        def shape(w):
            return {k: w[k] for k in ("token", "accessor", "ttl", "creation_time", "creation_path")}

        return {"request_id": f"req-{secret_wrap['accessor'][:8]}", "role": role, "vault_addr": self.addr,
                "role_id_wrap": shape(role_wrap), "secret_id_wrap": shape(secret_wrap)}

    def lookup(self, token: str) -> requests.Response:
        return requests.post(f"{self.addr}/v1/sys/wrapping/lookup", json={"token": token}, timeout=10)


@pytest.fixture(scope="module")
def minter(stack):
    return Minter(stack.vault_addr)


def _login(url: str, *extra: str) -> list[str]:
    return ["login", "--broker-url", url, "--role", "web", "--server-id", SERVER_ID, "--allow-insecure-vault", *extra]


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret was printed"


# ---- --agent-dir ---------------------------------------------------------------------------


def test_agent_dir_holds_the_role_id_and_the_secret_ids_wrapping_token(stack, minter, fake_broker, tmp_path,
                                                                       capsys):
    answer = minter.mint()
    fake_broker.script = [(200, {}, answer)]
    agent_dir = tmp_path / "agent"
    old = os.umask(0)  # even with a permissive umask: 0700 directory, 0600 files
    try:
        rc = cli.main(_login(fake_broker.url, "--agent-dir", str(agent_dir), "--json"))
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in agent_dir.iterdir()) == ["role_id", "secret_id"]
    assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700
    for name in ("role_id", "secret_id"):
        assert stat.S_IMODE((agent_dir / name).stat().st_mode) == 0o600
    role_id = (agent_dir / "role_id").read_text()
    assert role_id == stack.vault_seed.role_ids["web"]
    wrapped = (agent_dir / "secret_id").read_text()
    assert wrapped == answer["secret_id_wrap"]["token"]  # the wrapping token itself, no newline
    lookup = minter.lookup(wrapped)  # not unwrapped: still live
    assert lookup.status_code == 200
    assert lookup.json()["data"]["creation_path"] == "auth/approle/role/web/secret-id"
    assert minter.lookup(answer["role_id_wrap"]["token"]).status_code >= 400  # the role ID was unwrapped
    summary = json.loads(captured.out)
    assert summary["handoff"] == "agent-dir"
    assert summary["secret_id_file"] == str(agent_dir / "secret_id")
    assert summary["secret_id_wrap_accessor"] == answer["secret_id_wrap"]["accessor"]
    assert summary["secret_id_wrap_ttl"] == 60
    assert "start the Agent now" in captured.err
    _assert_clean(captured.out + captured.err, role_id, wrapped, answer["role_id_wrap"]["token"])


def test_agent_dir_refuses_a_secret_id_token_wrapped_elsewhere(minter, fake_broker, tmp_path, capsys):
    """A token made with sys/wrapping/wrap around a value of an attacker's choosing, presented
    with the expected creation path: the lookup shows where it really came from."""
    forged = minter.call("POST", "sys/wrapping/wrap", wrap_ttl="60s", secret_id="attacker-chosen")["wrap_info"]
    forged["creation_path"] = "auth/approle/role/web/secret-id"  # what the answer claims
    answer = minter.mint(secret_wrap=forged)
    fake_broker.script = [(200, {}, answer)]
    agent_dir = tmp_path / "agent"
    rc = cli.main(_login(fake_broker.url, "--agent-dir", str(agent_dir), "--json"))
    captured = capsys.readouterr()
    assert rc == EXIT_INTERCEPTION
    assert "SECURITY ALERT" in captured.err and "'sys/wrapping/wrap'" in captured.err
    assert json.loads(captured.out)["accessor"] == forged["accessor"]
    assert not agent_dir.exists() or not any(agent_dir.iterdir())
    # checked before anything was unwrapped: the role ID's wrapping token is still live
    assert minter.lookup(answer["role_id_wrap"]["token"]).status_code == 200
    _assert_clean(captured.out + captured.err, forged["token"], answer["role_id_wrap"]["token"])


def test_agent_dir_refuses_a_secret_id_token_someone_unwrapped(minter, fake_broker, tmp_path, capsys):
    answer = minter.mint()
    requests.post(f"{minter.addr}/v1/sys/wrapping/unwrap",  # the thief got there first
                  headers={"X-Vault-Token": answer["secret_id_wrap"]["token"]}, timeout=10)
    fake_broker.script = [(200, {}, answer)]
    agent_dir = tmp_path / "agent"
    rc = cli.main(_login(fake_broker.url, "--agent-dir", str(agent_dir)))
    err = capsys.readouterr().err
    assert rc == EXIT_INTERCEPTION
    assert answer["secret_id_wrap"]["accessor"] in err
    assert not (agent_dir / "secret_id").exists()
    _assert_clean(err, *(answer[k]["token"] for k in ("role_id_wrap", "secret_id_wrap")))


@pytest.mark.parametrize("extra", [
    ["--out-dir", "x"],   # two hand-offs
    ["--sink", "y"],
    ["--exec", "--", "true"],
])
def test_agent_dir_is_one_hand_off_among_the_others(fake_broker, tmp_path, extra, capsys):
    rc = cli.main(_login(fake_broker.url, "--agent-dir", str(tmp_path / "a"), *extra))
    assert rc == EXIT_USAGE
    assert fake_broker.requests == []


def test_agent_dir_that_is_a_file_is_refused_before_asking(fake_broker, tmp_path, capsys):
    target = tmp_path / "not-a-dir"
    target.write_text("")
    rc = cli.main(_login(fake_broker.url, "--agent-dir", str(target)))
    assert rc == EXIT_USAGE
    assert "--agent-dir" in capsys.readouterr().err
    assert fake_broker.requests == []


# ---- exec: signals reach the command ----------------------------------------------------


def test_exec_signals_reach_the_command(minter, fake_broker, tmp_path):
    """execvpe keeps the PID: a SIGTERM sent to the client's PID (as `docker stop` sends to
    PID 1) is the command's to handle, and its exit code is the process's."""
    fake_broker.script = [(200, {}, minter.mint())]
    ready, report = tmp_path / "ready", tmp_path / "report.json"
    child = (
        "import json, os, signal, sys, time\n"
        "def term(signum, frame):\n"
        "    json.dump({'signal': signum, 'pid': os.getpid(), 'has_token': bool(os.environ.get('VAULT_TOKEN'))},\n"
        "              open(sys.argv[2], 'w'))\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(30)\n"
        "sys.exit(0)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "login", "--broker-url", fake_broker.url, "--role", "web",
         "--server-id", SERVER_ID, "--allow-insecure-vault", "-q", "--exec", "--", sys.executable, "-c", child, str(ready), str(report)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        assert int(ready.read_text()) == proc.pid  # the client's PID is the command's
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert json.loads(report.read_text()) == {"signal": signal.SIGTERM, "pid": proc.pid, "has_token": True}
    assert not TOKEN_PATTERN.search(out + err)
