"""What the client trusts, tried for real with the real client process: a lying broker
that names its own Vault, http off loopback, the config file, 429s, the ECS task
metadata endpoint, broken pipes; and the shape of the package (no import cycle,
no sys.path editing)."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.vault_trust import canonical
from tests.ports import closed_port

REPO = Path(__file__).resolve().parent.parent
SERVER_ID = "broker.test.example"
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/demo-cluster/0123456789abcdef0123456789abcdef"


class JsonServer:
    """A loopback HTTP server answering every request with ``handler(method, path, body)``
    -> (status, headers, JSON payload); records every request."""

    def __init__(self, handler) -> None:
        self.requests: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                server.requests.append({"method": self.command, "path": self.path, "body": body,
                                        "headers": dict(self.headers)})
                status, headers, payload = handler(self.command, self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wrap(kind: str, role: str = "web") -> dict:
    return {"token": f"s.lying{kind.replace('-', '')}tokenAAAAAAAAAAAAAAAA", "accessor": f"acc-{kind}", "ttl": 60,
            "creation_time": "2026-01-01T00:00:00Z", "creation_path": f"auth/approle/role/{role}/{kind}"}


@pytest.fixture
def fake_vault():
    """The attacker's Vault: it "confirms" every wrapping token and hands out a token."""
    def answer(method, path, body):
        if path == "/v1/sys/wrapping/lookup":
            kind = "role-id" if "roleid" in (body or {}).get("token", "") else "secret-id"
            return 200, {}, {"data": {"creation_path": f"auth/approle/role/web/{kind}", "creation_ttl": 60}}
        if path == "/v1/sys/wrapping/unwrap":
            return 200, {}, {"data": {"role_id": "attacker-role-id", "secret_id": "attacker-secret-id",
                                      "secret_id_accessor": "acc"}}
        return 200, {}, {"auth": {"client_token": "s.attackertokenAAAAAAAAAAAAAAAA", "accessor": "a",
                                  "lease_duration": 60, "policies": ["web"]}}
    server = JsonServer(answer)
    yield server
    server.close()


@pytest.fixture
def lying_broker(fake_vault):
    """A broker stand-in on loopback whose (otherwise well-formed) answer names its own Vault."""
    server = JsonServer(lambda method, path, body: (200, {}, {
        "request_id": "req-lie", "role": "web", "vault_addr": fake_vault.url,
        "role_id_wrap": _wrap("role-id"), "secret_id_wrap": _wrap("secret-id")}))
    yield server
    server.close()


def client_env(tmp_path: Path, **extra: str) -> dict:
    empty = tmp_path / "empty.conf"  # never the machine's /etc/secret-zero-broker/client.conf
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_", "ECS_"))}
    env.update(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), BROKER_CONFIG=str(empty),
               PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def run(args: list, env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def login_args(broker_url: str, *extra: str) -> list:
    return ["login", "--broker-url", broker_url, "--role", "web", "--server-id", SERVER_ID, "--cloud", "aws",
            "--max-attempts", "2", "--max-wait", "10", *extra]


def _touches(tmp_path: Path, work: Path) -> list:
    return sorted(str(p.relative_to(tmp_path)) for p in work.rglob("*"))


# ---- a lying broker -------------------------------------------------------------------------------


@pytest.mark.parametrize("handoff", ["exec", "out-dir", "sink", "agent-dir"])
def test_a_lying_broker_is_refused_when_the_vault_is_pinned(lying_broker, fake_vault, tmp_path, handoff):
    work = tmp_path / "work"
    work.mkdir()
    marker = work / "workload-ran"
    flags = {"exec": ["--exec", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
             "out-dir": ["--out-dir", str(work / "creds")], "sink": ["--sink", str(work / "token")],
             "agent-dir": ["--agent-dir", str(work / "agent")]}[handoff]
    args = login_args(lying_broker.url, "--json", *flags)
    # Pinned through the environment, as a boot script would: the real Vault is elsewhere.
    env = client_env(tmp_path, VAULT_ADDR="https://vault.example.internal:8200")
    proc = run(args, env, work)
    assert proc.returncode == 6, proc.stderr
    assert "POSSIBLE INTERCEPTION" in proc.stderr and fake_vault.url in proc.stderr
    assert "pinned to 'https://vault.example.internal:8200'" in proc.stderr
    assert fake_vault.requests == [], "the lying broker's Vault was contacted"
    assert _touches(tmp_path, work) == [], "a file was written or the workload ran"
    assert [r["path"] for r in lying_broker.requests] == ["/v1/credentials/aws"]  # no incident sent there either
    summary = json.loads(proc.stdout)
    assert summary["exit_code"] == 6 and summary["error"] == "UntrustedVaultError"
    assert summary["accessors"] == ["acc-role-id", "acc-secret-id"] and summary["request_id"] == "req-lie"
    assert "s.lying" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_a_lying_broker_naming_an_http_vault_is_refused_when_nothing_is_pinned(lying_broker, fake_vault, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = run(login_args(lying_broker.url, "--sink", str(work / "token")), client_env(tmp_path), work)
    assert proc.returncode == 6, proc.stderr
    assert "not https" in proc.stderr and "--allow-insecure-vault" in proc.stderr
    assert fake_vault.requests == [] and _touches(tmp_path, work) == []


def test_the_config_file_pins_the_vault(lying_broker, fake_vault, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    config = tmp_path / "client.conf"
    config.write_text("# written at image build\nVAULT_ADDR=https://vault.example.internal:8200\n"
                      f"BROKER_URL={lying_broker.url}\n")
    config.chmod(0o644)
    env = client_env(tmp_path, BROKER_CONFIG=str(config))
    proc = run(["login", "--role", "web", "--server-id", SERVER_ID, "--cloud", "aws", "--allow-insecure-vault",
                "--sink", str(work / "token")], env, work)
    assert proc.returncode == 6, proc.stderr  # --allow-insecure-vault does not unpin a pinned Vault
    assert "pinned to 'https://vault.example.internal:8200'" in proc.stderr
    assert fake_vault.requests == [] and _touches(tmp_path, work) == []

    config.chmod(0o666)  # whoever may write it would choose the Vault: refused
    proc = run(["login", "--role", "web", "--sink", str(work / "token")], env, work)
    assert proc.returncode == 2 and "writable by its group or others" in proc.stderr
    assert len(lying_broker.requests) == 1


def test_http_off_loopback_is_refused_before_anything_is_signed(tmp_path):
    for flags, what in ((["--broker-url", "http://broker.example.com"], "broker URL"),
                        (["--broker-url", "https://broker.example.com", "--vault-addr", "http://vault.example.com"],
                         "Vault address")):
        proc = run(["login", "--role", "web", "--server-id", SERVER_ID, "--cloud", "aws", *flags,
                    "--sink", str(tmp_path / "t")], client_env(tmp_path), tmp_path, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert what in proc.stderr and "not https" in proc.stderr


def test_the_pinned_address_is_compared_canonically():
    assert canonical("HTTPS://Vault.Example.com:443/") == canonical("https://vault.example.com")
    assert canonical("http://127.0.0.1:8200") != canonical("http://127.0.0.1:8201")
    assert canonical("https://vault.example.com") != canonical("https://vault.example.com.evil.test")
    assert canonical("https://vault.example.com") != canonical("http://vault.example.com")


# ---- 429 ----------------------------------------------------------------------------------------------


def test_429_is_its_own_exit_code_and_says_when_to_retry(tmp_path):
    broker = JsonServer(lambda m, p, b: (429, {"Retry-After": "1122"},
                                         {"error": {"code": "rate_limited", "message": "too many requests"},
                                          "request_id": "req-429"}))
    try:
        started = time.monotonic()
        proc = run(login_args(broker.url, "--json", "--max-wait", "120", "--sink", str(tmp_path / "t")),
                   client_env(tmp_path), tmp_path)
        elapsed = time.monotonic() - started
    finally:
        broker.close()
    assert proc.returncode == 10, proc.stderr
    assert len(broker.requests) == 1 and elapsed < 20  # stopped at once: 1122 s do not fit in 120 s
    assert "rate limited" in proc.stderr and "1122 s (at " in proc.stderr and "unavailable" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["exit_code"] == 10 and summary["retry_after"] == 1122 and summary["request_id"] == "req-429"


# ---- ECS --------------------------------------------------------------------------------------------------


@pytest.fixture
def task_endpoints():
    """A container credentials endpoint (as the ECS agent serves the task role's keys) and a
    task metadata endpoint v4."""
    state = {"task": {"TaskARN": TASK_ARN, "Family": "demo-web", "Containers": []}, "status": 200}
    creds = JsonServer(lambda m, p, b: (200, {}, {
        "AccessKeyId": "ASIATASKROLEEXAMPLE1", "SecretAccessKey": "task-role-secret-key-example",
        "Token": "task-role-session-token", "Expiration": "2099-01-01T00:00:00Z"}))
    metadata = JsonServer(lambda m, p, b: (state["status"], {}, state["task"]) if p == "/v4/abc/task"
                          else (404, {}, {}))
    yield state, creds, metadata
    creds.close()
    metadata.close()


def _task_env(tmp_path, creds, metadata) -> dict:
    env = client_env(tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{creds.url}/creds",
                     AWS_CONTAINER_AUTHORIZATION_TOKEN="ecs-agent-token",
                     ECS_CONTAINER_METADATA_URI_V4=f"{metadata.url}/v4/abc",
                     BROKER_GCP_METADATA_URL=f"http://127.0.0.1:{closed_port()}")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


@pytest.mark.parametrize("cloud", ["aws", "auto"])
def test_in_an_ecs_task_the_login_names_the_task_and_signs_with_the_task_role(task_endpoints, tmp_path, cloud):
    state, creds, metadata = task_endpoints
    broker = JsonServer(lambda m, p, b: (403, {}, {"error": {"code": "not_authorized", "message": "test"}}))
    try:
        args = ["login", "--broker-url", broker.url, "--role", "web", "--server-id", SERVER_ID, "--cloud", cloud,
                "--sink", str(tmp_path / "t")]
        proc = run(args, _task_env(tmp_path, creds, metadata), tmp_path)
    finally:
        broker.close()
    assert proc.returncode == 4, proc.stderr  # the stand-in refuses; what matters is what it received
    (request,) = broker.requests
    assert request["path"] == "/v1/credentials/aws"
    assert request["body"]["ecs_task_arn"] == TASK_ARN
    headers = json.loads(base64.b64decode(request["body"]["iam_request_headers"]))
    assert "Credential=ASIATASKROLEEXAMPLE1/" in headers["Authorization"][0]  # botocore's container provider
    assert headers["X-Amz-Security-Token"] == ["task-role-session-token"]
    assert creds.requests[0]["headers"]["Authorization"] == "ecs-agent-token"
    assert f"ECS task: {TASK_ARN}" in proc.stderr


@pytest.mark.parametrize("case", ["500", "not-an-arn", "not-json", "unreachable"])
def test_a_failing_task_metadata_endpoint_is_a_clear_error(task_endpoints, tmp_path, case):
    state, creds, metadata = task_endpoints
    env = _task_env(tmp_path, creds, metadata)
    if case == "500":
        state["status"] = 500
    elif case == "not-an-arn":
        state["task"] = {"TaskARN": "arn:aws:iam::123456789012:role/evil"}
    elif case == "not-json":
        state["task"] = b"<html>"
    else:
        env["ECS_CONTAINER_METADATA_URI_V4"] = f"http://127.0.0.1:{closed_port()}/v4/abc"
    broker = JsonServer(lambda m, p, b: (500, {}, {}))
    try:
        proc = run(["login", "--broker-url", broker.url, "--role", "web", "--server-id", SERVER_ID, "--cloud", "aws",
                    "--sink", str(tmp_path / "t")], env, tmp_path)
    finally:
        broker.close()
    assert proc.returncode == 3, proc.stderr
    assert "ECS task metadata endpoint" in proc.stderr and "ECS_CONTAINER_METADATA_URI_V4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert broker.requests == []  # nothing was asked of the broker


def test_task_arn_shapes():
    from broker.clouds.ecs import TASK_ARN as pattern

    assert pattern.match(TASK_ARN)
    assert pattern.match("arn:aws-us-gov:ecs:us-gov-west-1:123456789012:task/c/8f1e2d3c-4b5a-4697-8877-665544332211")
    assert pattern.match("arn:aws-cn:ecs:cn-north-1:123456789012:task/my_cluster-1/0123456789abcdef0123456789abcdef")
    for bad in ("arn:aws:ecs:eu-west-1:123456789012:task/0123456789abcdef0123456789abcdef",  # old format, no cluster
                "arn:aws:ecs:eu-west-1:12345678901:task/c/0123456789abcdef0123456789abcdef",
                "arn:aws:ecs:eu-west-1:123456789012:task/c/0123456789abcdef0123456789abcdef/x",
                "arn:aws:ecs:eu-west-1:123456789012:container-instance/c/0123456789abcdef0123456789abcdef",
                TASK_ARN + "\n"):
        assert not pattern.match(bad), bad


# ---- output and shape -----------------------------------------------------------------------------------


def test_a_closed_stdout_is_no_traceback(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (say `head`) is gone
    try:
        proc = subprocess.run([sys.executable, "-m", "broker", "policy", "check", "policies/rules.toml"],
                              cwd=REPO, env=client_env(tmp_path), stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_revoke_usage_shows_the_reason_as_required(tmp_path):
    proc = run(["revoke", "--help"], client_env(tmp_path), tmp_path)
    assert proc.returncode == 0
    usage = proc.stdout.split("\n\n")[0]
    assert "--reason TEXT" in usage and "[--reason TEXT]" not in usage.splitlines()[0]


def _broker_imports(path: Path) -> set:
    """The broker modules ``path`` imports, at any level (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("broker"):
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (REPO / (candidate.replace(".", "/") + ".py")).exists() or \
                        (REPO / candidate.replace(".", "/") / "__init__.py").exists():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("broker"))
    return found


def test_the_client_has_no_import_cycle_and_never_edits_sys_path():
    modules = {}
    for path in (REPO / "broker").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        name = name[: -len(".__init__")] if name.endswith(".__init__") else name
        modules[name] = path
        text = path.read_text()
        assert not re.search(r"sys\.path\s*(\.|\[|=|\+)", text), f"{name} edits sys.path"
    graph = {name: {m for m in _broker_imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package importing its own submodules (broker.cli -> broker.cli.login) is how a package is built.
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}

    def visit(node, stack):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        for dep in sorted(graph[node]):
            visit(dep, stack + [node])

    for name in sorted(graph):
        visit(name, [])
    for name, path in modules.items():
        if name != "broker.policy_engine":
            assert not re.search(r"(from|import)\s+chalicelib|import_module\(", path.read_text()), \
                f"{name}: only broker/policy_engine.py may reach the server's rules engine"


def test_a_container_signing_with_other_credentials_does_not_claim_its_task(task_endpoints, tmp_path):
    """On an ECS-on-EC2 host without a task role (or with keys in the environment) the
    session is not the task's: naming the task would only get the container refused."""
    state, creds, metadata = task_endpoints
    env = _task_env(tmp_path, creds, metadata)
    del env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEYSONLY1", AWS_SECRET_ACCESS_KEY="env-keys-secret-example")
    broker = JsonServer(lambda m, p, b: (403, {}, {"error": {"code": "not_authorized", "message": "test"}}))
    try:
        proc = run(["login", "--broker-url", broker.url, "--role", "web", "--server-id", SERVER_ID, "--cloud", "aws",
                    "--sink", str(tmp_path / "t")], env, tmp_path)
    finally:
        broker.close()
    (request,) = broker.requests
    assert "ecs_task_arn" not in request["body"], proc.stderr
    assert metadata.requests == []  # not even asked
