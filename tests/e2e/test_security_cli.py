"""End to end, the security team's side: `broker audit search|show` and `broker revoke` as
separate processes signing with the engineer's own AWS identity, against the broker under
`chalice local`; and `broker login` reporting a real interception (a thief in the middle
unwraps the secret ID first) before it exits with code 6."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from devstack import SERVER_ID
from tests.e2e.test_client_login import TOKEN_PATTERN, assert_clean, run_client

REPO = Path(__file__).resolve().parents[2]


def run_broker(creds: dict, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_"))}
    env.update(AWS_ACCESS_KEY_ID=creds["access_key_id"], AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
               AWS_SESSION_TOKEN=creds["session_token"], AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(cwd / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(cwd / "no-aws-credentials"),
               PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def conn(local_broker) -> list[str]:
    return ["--broker-url", local_broker.url, "--server-id", SERVER_ID]


@pytest.fixture(scope="module")
def engineer(local_broker):
    return local_broker.stack.assume("security-team", f"carol-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def refused_instance(local_broker, tmp_path_factory):
    """An instance tagged for batch that asked for web with the real client: one denied record."""
    stack = local_broker.stack
    instance = stack.launch_instance({"vault-role": "batch"}, profile="demo-node")
    cwd = tmp_path_factory.mktemp("refused")
    proc = run_client(stack.assume("demo-node", instance), "--broker-url", local_broker.url, "--role", "web",
                      "--server-id", SERVER_ID, "--out-dir", str(cwd / "agent"), "--json", cwd=cwd)
    assert proc.returncode == 4, proc.stderr
    return instance, json.loads(proc.stdout)["request_id"]


def test_audit_search_as_a_table_json_and_csv(local_broker, engineer, refused_instance, tmp_path):
    instance, request_id = refused_instance
    table = run_broker(engineer, "audit", "search", "--instance", instance, "--since", "1h", *conn(local_broker),
                       cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "OUTCOME", "CODE"]
    row = next(line for line in lines if request_id in line)
    assert "denied" in row and "not_authorized" in row and instance in row and "demo-node/" in row
    assert "1 record(s)" in table.stderr

    as_json = run_broker(engineer, "audit", "search", "--instance", instance, "--outcome", "denied", "--json",
                         *conn(local_broker), cwd=tmp_path)
    doc = json.loads(as_json.stdout)
    assert [e["request_id"] for e in doc["events"]] == [request_id] and doc["next"] is None
    assert "vault-role" in json.dumps(doc["events"][0]["facts"])

    as_csv = run_broker(engineer, "audit", "search", "--role", "web", "--outcome", "denied", "--limit", "5",
                        "--all", "--csv", *conn(local_broker), cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert request_id in [r["request_id"] for r in rows]
    assert all(r["outcome"] == "denied" and r["role"] == "web" for r in rows)

    shown = run_broker(engineer, "audit", "show", request_id, *conn(local_broker), cwd=tmp_path)
    assert shown.returncode == 0 and f"instance                 {instance}" in shown.stdout
    for proc in (table, as_json, as_csv, shown):
        assert_clean(proc, engineer["secret_access_key"], engineer["session_token"])


def test_an_outsider_cannot_search(local_broker, tmp_path):
    outsider = local_broker.stack.assume("demo-other", "nosy")
    proc = run_broker(outsider, "audit", "search", *conn(local_broker), cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "403 not_authorized" in proc.stderr and "security team" in proc.stderr


def test_revoke_an_instance_then_its_login_is_refused_until_lifted(local_broker, engineer, tmp_path):
    stack = local_broker.stack
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    creds = stack.assume("demo-node", instance)
    login = ["--broker-url", local_broker.url, "--role", "web", "--server-id", SERVER_ID,
             "--vault-addr", stack.vault_addr]
    first = run_client(creds, *login, "--out-dir", str(tmp_path / "agent"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    secret_id = (tmp_path / "agent" / "secret_id").read_text()

    revoked = run_broker(engineer, "revoke", "--instance", instance, "--reason", "IDS alert", "--quarantine", "2h",
                         "--json", *conn(local_broker), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    doc = json.loads(revoked.stdout)
    assert [d["result"] for d in doc["destroyed"]] == ["destroyed"]
    login_with = requests.post(f"{stack.vault_addr}/v1/auth/approle/login", timeout=10,
                               json={"role_id": stack.vault_seed.role_ids["web"], "secret_id": secret_id})
    assert login_with.status_code == 400  # the Agent's secret ID is dead

    again = run_client(creds, *login, "--out-dir", str(tmp_path / "agent2"), cwd=tmp_path)
    assert again.returncode == 4 and "403 quarantined" in again.stderr

    lifted = run_broker(engineer, "revoke", "lift", doc["revocation_id"], "--reason", "reimaged",
                        *conn(local_broker), cwd=tmp_path)
    assert lifted.returncode == 0 and f"lifted: instance {instance}" in lifted.stdout
    assert run_client(creds, *login, "--out-dir", str(tmp_path / "agent3"), cwd=tmp_path).returncode == 0
    assert_clean(revoked, secret_id)


# ---- an interception, for real --------------------------------------------------------------------


class Thief:
    """An HTTP proxy in front of the broker that unwraps the secret ID's wrapping token of
    every issuance before passing the (unchanged) answer on."""

    def __init__(self, broker_url: str, vault_addr: str):
        self.stolen: list[str] = []
        thief = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = requests.post(broker_url + self.path, data=body, timeout=30,
                                         headers={"Content-Type": "application/json"})
                if self.path == "/v1/credentials/aws" and upstream.status_code == 200:
                    token = upstream.json()["secret_id_wrap"]["token"]
                    got = requests.post(f"{vault_addr}/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": token},
                                        timeout=10)
                    thief.stolen.append(got.json()["data"]["secret_id"])
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_login_reports_an_interception_and_the_thiefs_secret_id_dies(local_broker, engineer, tmp_path):
    stack = local_broker.stack
    thief = Thief(local_broker.url, stack.vault_addr)
    try:
        creds = stack.assume("demo-batch", f"victim-{uuid.uuid4().hex[:6]}")
        proc = run_client(creds, "--broker-url", thief.url, "--role", "batch", "--server-id", SERVER_ID,
                          "--vault-addr", stack.vault_addr, "--sink", str(tmp_path / "token"), "--json",
                          cwd=tmp_path)
    finally:
        thief.close()
    assert proc.returncode == 6, proc.stderr
    assert "POSSIBLE INTERCEPTION" in proc.stderr and "reported to the broker as incident" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["incident"]["reported"] is True and summary["incident"]["secret_id"] == "destroyed"
    assert not (tmp_path / "token").exists()

    # the thief's secret ID no longer logs in
    assert len(thief.stolen) == 1
    login = requests.post(f"{stack.vault_addr}/v1/auth/approle/login", timeout=10,
                          json={"role_id": stack.vault_seed.role_ids["batch"], "secret_id": thief.stolen[0]})
    assert login.status_code == 400

    # the security team sees the incident, linked to the issuance
    shown = run_broker(engineer, "audit", "show", summary["incident"]["request_id"], "--json", *conn(local_broker),
                       cwd=tmp_path)
    incident = json.loads(shown.stdout)
    assert incident["outcome"] == "incident" and incident["related_request_id"] == summary["request_id"]
    assert incident["destroyed"][0]["result"] == "destroyed"
    assert_clean(proc, thief.stolen[0])
    assert not TOKEN_PATTERN.search(shown.stdout)


# ---- tokens, replays, targets ------------------------------------------------------------------


def test_a_revocation_stops_the_token_in_the_machines_sink(local_broker, engineer, tmp_path):
    stack = local_broker.stack
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    creds = stack.assume("demo-node", instance)
    sink = tmp_path / "vault-token"
    logged_in = run_client(creds, "--broker-url", local_broker.url, "--role", "web", "--server-id", SERVER_ID,
                           "--vault-addr", stack.vault_addr, "--sink", str(sink), cwd=tmp_path)
    assert logged_in.returncode == 0, logged_in.stderr
    token = sink.read_text().strip()

    def read_config():
        return requests.get(f"{stack.vault_addr}/v1/secret/data/web/config", headers={"X-Vault-Token": token},
                            timeout=10).status_code

    assert read_config() == 200
    revoked = run_broker(engineer, "revoke", "--instance", instance, "--reason", "IDS alert 4712",
                         "--quarantine", "1h", *conn(local_broker), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert "1 revoked" in revoked.stdout  # the table's TOKENS column
    assert "registered with the broker" in logged_in.stderr
    assert read_config() == 403
    assert requests.post(f"{stack.vault_addr}/v1/auth/token/renew-self", headers={"X-Vault-Token": token},
                         timeout=10).status_code == 403
    assert_clean(revoked, token)
    doc_id = next(line.split()[1].rstrip(":") for line in revoked.stdout.splitlines() if line.startswith("revocation "))
    assert run_broker(engineer, "revoke", "lift", doc_id, *conn(local_broker), cwd=tmp_path).returncode == 0


def test_two_searches_in_the_same_second_are_no_replay(local_broker, engineer, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "broker", "audit", "search", "--since", "5m", "--limit", "1",
                               "--json", *conn(local_broker)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(engineer, tmp_path)) for _ in range(3)]
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0, 0], [err for _, err, _ in results]
    ids = {json.loads(out)["request_id"] if "request_id" in json.loads(out) else None for out, _, _ in results}
    assert all(err.count("proof_replayed") == 0 for _, err, _ in results)
    del ids
    search = run_broker(engineer, "audit", "search", "--since", "2m", "--outcome", "denied", "--json",
                        *conn(local_broker), cwd=tmp_path)
    replays = [e for e in json.loads(search.stdout)["events"] if e.get("code") == "proof_replayed"
               and "security-team" in (e.get("principal") or "")]
    assert replays == []


def _env(creds, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_"))}
    env.update(AWS_ACCESS_KEY_ID=creds["access_key_id"], AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
               AWS_SESSION_TOKEN=creds["session_token"], AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(cwd / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(cwd / "no-aws-credentials"),
               PYTHONPATH=str(REPO))
    return env


def test_a_misspelt_target_is_refused_unless_forced(local_broker, engineer, tmp_path):
    never_seen = "i-0fedcba9876543210"
    refused = run_broker(engineer, "revoke", "--instance", never_seen, "--reason", "typo?", *conn(local_broker),
                         cwd=tmp_path)
    assert refused.returncode == 4 and "404 not_found" in refused.stderr and "--force" in refused.stderr
    forced = run_broker(engineer, "revoke", "--instance", never_seen, "--reason", "preventive", "--force",
                        "--quarantine", "10m", "--json", *conn(local_broker), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["quarantine"][0]["target"] == {"instance": never_seen} and doc["destroyed"] == []
    assert run_broker(engineer, "revoke", "lift", doc["revocation_id"], *conn(local_broker),
                      cwd=tmp_path).returncode == 0
