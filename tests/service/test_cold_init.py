"""app.py in the Lambda runtime builds the service at init (issue 14, item 4), against the
real stack: fresh processes with the runtime's variables, the backends' requests counted
at the latency proxies (devstack/latency.py, no delay).

- init does what the first request did lazily: it logs in to Vault (after reading the
  secret ID from Secrets Manager), so the first issuance makes neither call;
- a misconfiguration at init does not fail the import: it is logged with the variable's
  name and every request answers 503 (Retry-After) until the configuration is fixed;
- outside Lambda (tests, `chalice local`, Chalice's CLI) nothing is built at import.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devstack.latency import LatencyStack
from tests.service.conftest import use_environment
from tests.sigv4 import signed_login

PROJECT = Path(__file__).resolve().parents[2]
LAMBDA_RUNTIME = {"AWS_LAMBDA_FUNCTION_NAME": "secret-zero-broker-test", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
                  "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "LAMBDA_TASK_ROOT": "/var/task"}

# A fresh process: import app, say so and wait; then each line of stdin is a request
# (JSON: method, path, body) answered on stdout ("CHILD " + JSON; the broker's JSON log
# lines go to stdout too) through chalice.test's Client, which calls the handler Lambda calls.
CHILD = r"""
import json, sys
import app
print("CHILD " + json.dumps({"imported": True, "built": app._service is not None}), flush=True)
from chalice.test import Client
client = Client(app.app, stage_name="local")
for line in sys.stdin:
    req = json.loads(line)
    if req["method"] == "GET":
        r = client.http.get(req["path"])
    else:
        r = client.http.post(req["path"], body=req["body"], headers={"Content-Type": "application/json"})
    print("CHILD " + json.dumps({"status": r.status_code, "headers": dict(r.headers), "body": r.body.decode()}), flush=True)
"""


def _env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(extra)
    env["PYTHONPATH"] = str(PROJECT)
    return env


class Child:
    def __init__(self, env):
        self.log = []  # the child's log lines (stdout)
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=PROJECT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.imported = self._read()

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the child died: {self.proc.stderr.read()[-3000:]}")
            if line.startswith("CHILD "):
                return json.loads(line[len("CHILD "):])
            self.log.append(line)

    def ask(self, method, path, body=None):
        self.proc.stdin.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        """The child's log (stdout) and stderr, once it has exited."""
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        return "".join(self.log) + rest + self.proc.stderr.read()


@pytest.fixture(scope="module")
def proxies(stack):
    with LatencyStack(stack) as latency:
        yield latency


def _fresh_login(stack):
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    return signed_login(stack.assume("demo-node", instance), "web", stack.broker_env()["BROKER_SERVER_ID"])


def _vault_logins(counts):
    return sum(n for op, n in counts.items() if "login" in op)


def _secret_reads(counts):
    return sum(n for op, n in counts.items() if "GetSecretValue" in op)


def test_in_lambda_init_logs_in_so_the_first_issuance_does_not(stack, proxies):
    proxies.reset()
    child = Child(_env({**stack.broker_env(), **proxies.env(), **LAMBDA_RUNTIME}))
    try:
        assert child.imported == {"imported": True, "built": True}
        at_init = proxies.counts()
        assert _secret_reads(at_init) == 1 and _vault_logins(at_init) == 1, at_init
        proxies.reset()
        answer = child.ask("POST", "/v1/credentials/aws", json.dumps(_fresh_login(stack)))
        assert answer["status"] == 200, answer["body"]
        first = proxies.counts()
        assert _secret_reads(first) == 0 and _vault_logins(first) == 0, first
        assert any("secret-id" in op for op in first), first  # it did mint
    finally:
        child.close()


def test_outside_lambda_nothing_is_built_at_import(stack, proxies):
    proxies.reset()
    child = Child(_env({**stack.broker_env(), **proxies.env()}))
    try:
        assert child.imported == {"imported": True, "built": False}
        assert sum(proxies.counts().values()) == 0
        answer = child.ask("POST", "/v1/credentials/aws", json.dumps(_fresh_login(stack)))
        assert answer["status"] == 200, answer["body"]
        assert _vault_logins(proxies.counts()) == 1  # the first request logged in
    finally:
        child.close()


def test_chalice_cli_mode_builds_nothing_even_with_the_runtime_variables(stack):
    child = Child(_env({**stack.broker_env(), **LAMBDA_RUNTIME, "AWS_CHALICE_CLI_MODE": "true"}))
    try:
        assert child.imported == {"imported": True, "built": False}
    finally:
        child.close()


@pytest.mark.parametrize("broken, named", [
    ({"BROKER_VAULT_ADDR": ""}, "BROKER_VAULT_ADDR"),
    ({"BROKER_VAULT_TIMEOUT": "forever"}, "BROKER_VAULT_TIMEOUT"),
])
def test_misconfigured_at_init_imports_logs_the_variable_and_answers_503(stack, broken, named):
    env = {**stack.broker_env(), **LAMBDA_RUNTIME, **broken}
    child = Child(_env({k: v for k, v in env.items() if v != ""}))
    try:
        assert child.imported == {"imported": True, "built": False}
        for method, path, body in (("GET", "/v1/health", None),
                                   ("POST", "/v1/credentials/aws", json.dumps(_fresh_login(stack)))):
            answer = child.ask(method, path, body)
            assert answer["status"] == 503, answer
            assert answer["headers"].get("Retry-After") == "60"
            assert json.loads(answer["body"])["error"]["code"] == "unavailable"
    finally:
        log = child.close()
    misconfigured = [json.loads(line) for line in log.splitlines()
                     if line.startswith("{") and "broker misconfigured" in line]
    # once at init, then once per request (each tries to build again)
    assert len(misconfigured) == 3, log[-2000:]
    assert all(named in entry["problem"] and entry["level"] == "CRITICAL" for entry in misconfigured)
    assert "Traceback" not in log


def test_backend_down_at_init_is_retried_by_the_first_request(stack, proxies):
    """Vault unreachable at init: the import still succeeds (the service is built, the
    login left for later), and the first request logs in once Vault is back."""
    proxies.reset()
    proxies.set_faults([{"backend": "vault", "operation": "POST auth/approle/login", "rate": 1.0,
                         "kind": "status", "status": 503, "body": "{\"errors\":[\"sealed\"]}"}])
    try:
        child = Child(_env({**stack.broker_env(), **proxies.env(), **LAMBDA_RUNTIME}))
    finally:
        proxies.set_faults([])
    try:
        assert child.imported == {"imported": True, "built": True}
        proxies.reset()
        answer = child.ask("POST", "/v1/credentials/aws", json.dumps(_fresh_login(stack)))
        assert answer["status"] == 200, answer["body"]
        assert _vault_logins(proxies.counts()) == 1
    finally:
        log = child.close()
    assert "warm-up at init incomplete" in log and "Traceback" not in log


def _idle_in(session):
    """Connections a requests session keeps alive (its adapters' urllib3 pools)."""
    return sum(1 for adapter in session.adapters.values() for pool in adapter.poolmanager.pools._container.values()
               if pool.pool is not None for conn in list(pool.pool.queue) if conn is not None)


def _open_pools(runtime):
    """Connections kept alive, by kind: the broker's own (chalicelib/http_client.py: STS, Google's
    certificates), Vault's (hvac's requests session, chalicelib/vault_client.py) and botocore's
    (its clients)."""
    counts = {"own": runtime._pools.idle_connections(),
              "vault": _idle_in(runtime._minter._session.session)}
    botocore = [c for c in runtime._clients if hasattr(c, "_endpoint")]
    if botocore:
        counts["botocore"] = sum(len(c._endpoint.http_session._manager.pools) for c in botocore)
    return counts


def test_after_restore_drops_connections_and_the_vault_session_and_the_next_issuance_works(stack, proxies):
    """Runtime.after_restore, the hook a SnapStart restore runs (chalicelib/snapstart.py), on
    a service that has served: its pooled connections are gone, the next issuance logs in to
    Vault again and opens new connections, and it succeeds."""
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings

    restore_env = use_environment({**stack.broker_env(), **proxies.env()})  # botocore reads its keys there
    try:
        runtime = build_runtime(Settings.from_env())
        _serve_restore_and_serve_again(stack, proxies, runtime)
    finally:
        restore_env()


def test_the_init_logs_in_to_vault_beside_building_the_method_not_after_it(stack, proxies):
    """Runtime.warm_up: the Vault login (Secrets Manager, then Vault) waits on nothing the
    method build makes (its STS call for the broker's own account): each here waits for the
    other to have started, which only calls in flight together can do."""
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings

    restore_env = use_environment({**stack.broker_env(), **proxies.env()})
    try:
        runtime = build_runtime(Settings.from_env())
        both_started = threading.Barrier(2, timeout=10)
        log_in, method = runtime._minter.log_in, runtime.service.method
        seen = []

        def log_in_when_the_build_runs():
            both_started.wait()
            seen.append("login")
            return log_in()

        def method_when_the_login_runs(name):
            both_started.wait()
            seen.append(name)
            return method(name)

        runtime._minter.log_in = log_in_when_the_build_runs
        runtime.service.method = method_when_the_login_runs
        assert runtime.warm_up() == {}  # sequential, the first would wait in vain: BrokenBarrierError
        assert sorted(seen) == ["aws", "login"] and runtime._minter._token
    finally:
        restore_env()


def test_at_init_the_vault_login_starts_before_the_rules_and_the_method_are_built(stack, proxies, monkeypatch):
    """build_runtime(log_in_early=True), app.py's init: the login (Secrets Manager, then
    Vault) starts before the AWS method is built and the rules are checked against its
    accounts (the STS call for the broker's own account), and runs beside them: each waits
    here for the other to have started, which only calls in flight together can do."""
    import chalicelib.methods.aws as aws_method
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings
    from chalicelib.minter import VaultMinter

    both_started = threading.Barrier(2, timeout=10)
    seen = []
    log_in, build = VaultMinter.log_in, aws_method.build

    def log_in_when_the_build_runs(self):
        both_started.wait()
        seen.append("login")
        return log_in(self)

    def build_when_the_login_runs(*args, **kwargs):
        both_started.wait()
        seen.append("aws")
        return build(*args, **kwargs)

    monkeypatch.setattr(VaultMinter, "log_in", log_in_when_the_build_runs)
    monkeypatch.setattr(aws_method, "build", build_when_the_login_runs)
    restore_env = use_environment({**stack.broker_env(), **proxies.env()})
    try:
        proxies.reset()
        runtime = build_runtime(Settings.from_env(), log_in_early=True)
        assert runtime.warm_up() == {}  # sequential, the first would wait in vain: BrokenBarrierError
        assert sorted(seen) == ["aws", "login"] and runtime._minter._token
        assert _vault_logins(proxies.counts()) == 1  # warm_up waited for it, and did not log in again
    finally:
        restore_env()


def test_a_failed_init_returns_only_after_its_early_login_finished(stack, proxies, monkeypatch):
    """A build that fails after the login started (here the AWS method) raises its own
    error, and only once the login has finished: a failed init leaves no call in flight."""
    import time

    import chalicelib.methods.aws as aws_method
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings
    from chalicelib.errors import Unavailable
    from chalicelib.minter import VaultMinter

    finished = []
    log_in = VaultMinter.log_in

    def slow_log_in(self):
        time.sleep(0.3)
        log_in(self)
        finished.append(time.monotonic())

    def broken(*args, **kwargs):
        raise Unavailable("STS could not be reached", backend="sts", detail="test: build fails")

    monkeypatch.setattr(VaultMinter, "log_in", slow_log_in)
    monkeypatch.setattr(aws_method, "build", broken)
    restore_env = use_environment({**stack.broker_env(), **proxies.env()})
    try:
        with pytest.raises(Unavailable, match="STS could not be reached"):
            build_runtime(Settings.from_env(), log_in_early=True)
        assert finished  # the login had finished when the error came out
    finally:
        restore_env()


def _serve_restore_and_serve_again(stack, proxies, runtime):
    assert runtime.warm_up() == {}
    context = {"source_ip": "10.0.0.1", "api_request_id": "restore-test"}
    assert runtime.service.issue("aws", json.dumps(_fresh_login(stack)).encode(), **context)["role"] == "web"
    assert all(n > 0 for n in _open_pools(runtime).values())

    runtime.after_restore()
    assert set(_open_pools(runtime).values()) == {0}
    proxies.reset()
    assert runtime.service.issue("aws", json.dumps(_fresh_login(stack)).encode(), **context)["role"] == "web"
    assert _vault_logins(proxies.counts()) == 1  # the snapshot's token is not used again
    assert _secret_reads(proxies.counts()) == 0  # the secret ID itself is kept (it does not expire)
    assert all(n > 0 for n in _open_pools(runtime).values())


# A fresh process with the Lambda runtime's variables: init builds the runtime (warm-up,
# every enabled method, the Vault login), one AWS issuance runs; then which HTTP libraries
# it has imported.
IMPORTS_CHILD = r"""
import json, sys
import app

class Context:  # what chalice reads of Lambda's context object
    function_name = "imports-test"; function_version = "$LATEST"; memory_limit_in_mb = "512"
    aws_request_id = "imports-test"; log_group_name = "/aws/lambda/imports-test"; log_stream_name = "test"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imports-test"
    def get_remaining_time_in_millis(self): return 30000

path = "/v1/credentials/aws"  # the event API Gateway sends (not chalice.test: its CLI imports botocore)
event = {"resource": path, "path": path, "httpMethod": "POST", "headers": {"Content-Type": "application/json"},
         "multiValueHeaders": {"Content-Type": ["application/json"]}, "queryStringParameters": None,
         "multiValueQueryStringParameters": None, "pathParameters": None, "stageVariables": None,
         "requestContext": {"resourcePath": path, "httpMethod": "POST", "path": "/api" + path, "stage": "api",
                            "requestId": "imports-test", "identity": {"sourceIp": "10.0.0.1"}},
         "body": sys.stdin.read(), "isBase64Encoded": False}
out = app.app(event, Context())
print("CHILD " + json.dumps({"built": app._service is not None, "status": out.get("statusCode"),
                             "methods": app._service.method_names if app._service else None,
                             "modules": sorted(m for m in ("hvac", "requests", "urllib3", "botocore", "google.auth")
                                               if m in sys.modules),
                             "deferred": sorted(m for m in ("chalicelib.security", "chalicelib.audit_query",
                                                            "chalicelib.admin_auth", "chalicelib.methods.gcp.proof",
                                                            "chalicelib.methods.gcp.facts") if m in sys.modules),
                             "security_built": app._service is not None and app._service._security is not None}),
      flush=True)
"""


@pytest.mark.parametrize("gcp", [False, True], ids=["aws-only", "gcp-enabled"])
def test_an_aws_issuance_imports_botocore_and_hvac_and_no_other_http_library(stack, gcp):
    """The broker's AWS calls are botocore's (chalicelib/aws_clients.py; urllib3 is its HTTP
    client); Vault's are hvac's, on requests (chalicelib/vault_client.py); STS and Google's
    certificates go through chalicelib/http_client.py. google-auth comes only with the GCP method's
    proof and facts: an AWS issuance does not import it, even with GCP enabled."""
    env = {k: v for k, v in stack.broker_env().items()
           if gcp or not (k.startswith("BROKER_GCP_") or k == "GOOGLE_APPLICATION_CREDENTIALS")}
    proc = subprocess.run([sys.executable, "-c", IMPORTS_CHILD], cwd=PROJECT, env=_env({**env, **LAMBDA_RUNTIME}),
                          input=json.dumps(_fresh_login(stack)), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("CHILD "):])
    assert result["built"] and result["status"] == 200, proc.stdout[-3000:]
    assert ("gcp" in result["methods"]) is gcp
    assert result["modules"] == ["botocore", "hvac", "requests", "urllib3"]


@pytest.mark.parametrize("init_type", ["on-demand", "snap-start"])
def test_what_an_aws_issuance_never_needs_is_built_at_init_only_for_a_snapshot(stack, init_type):
    """An AWS issuance never needs the security routes' modules nor the GCP method: an
    on-demand cold start leaves them for their first request; a SnapStart init builds them,
    so the snapshot holds them and no restored copy pays for them. (GCP is enabled here.)"""
    env = {**stack.broker_env(), **LAMBDA_RUNTIME, "AWS_LAMBDA_INITIALIZATION_TYPE": init_type}
    proc = subprocess.run([sys.executable, "-c", IMPORTS_CHILD], cwd=PROJECT, env=_env(env),
                          input=json.dumps(_fresh_login(stack)), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("CHILD "):])
    assert result["status"] == 200 and "gcp" in result["methods"], proc.stdout[-3000:]
    snapshot = init_type == "snap-start"
    assert result["security_built"] is snapshot
    expected = ["chalicelib.admin_auth", "chalicelib.audit_query", "chalicelib.methods.gcp.facts",
                "chalicelib.methods.gcp.proof", "chalicelib.security"]
    assert result["deferred"] == (expected if snapshot else []), result["deferred"]


@pytest.mark.parametrize("init_type", ["on-demand", "snap-start"])
def test_a_sealed_vault_at_init_with_the_early_login_is_named_and_the_first_request_logs_in(
        stack, proxies, sealed_vault, monkeypatch, init_type):
    """The early login (build_runtime(log_in_early=True), app.py's init) against a real sealed
    OpenBao: warm_up names the problem, no pool thread hands work to the pool (a deadlock),
    no token is kept; once Vault is unsealed the first issuance logs in (once: one Secrets
    Manager read in all, the early login's)."""
    from chalicelib import concurrency
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings

    offenders, submit = [], concurrency._pool.submit

    def recording_submit(fn, *args, **kwargs):
        if threading.current_thread().name.startswith("broker-io"):
            offenders.append(threading.current_thread().name)
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(concurrency._pool, "submit", recording_submit)
    restore_env = use_environment({**stack.broker_env(), **proxies.env(),
                                   "AWS_LAMBDA_INITIALIZATION_TYPE": init_type})
    try:
        proxies.reset()
        runtime = build_runtime(Settings.from_env(), log_in_early=True)
        problems = runtime.warm_up()
        assert set(problems) == {"vault login"} and "seal" in problems["vault login"].lower(), problems
        assert runtime._minter._token is None and not offenders
        stack.unseal_vault()
        context = {"source_ip": "10.0.0.1", "api_request_id": "sealed-at-init"}
        assert runtime.service.issue("aws", json.dumps(_fresh_login(stack)).encode(), **context)["role"] == "web"
        counts = proxies.counts()
        assert _vault_logins(counts) == 2 and _secret_reads(counts) == 1, counts  # init's (refused), the request's
    finally:
        restore_env()


def test_broken_rules_at_init_with_the_login_in_flight_log_their_problem_and_answer_503(stack, proxies, tmp_path):
    """A RulesError comes from the build, after the early login started (here against a
    Vault that answers 503 sealed): the import still succeeds, the problem is logged once
    at init and once per request, CRITICAL and named, and every request answers 503."""
    rules = tmp_path / "rules.toml"
    rules.write_text("[rule.aws\nthis is not toml")
    proxies.set_faults([{"backend": "vault", "operation": "POST auth/approle/login", "rate": 1.0,
                         "kind": "status", "status": 503, "body": "{\"errors\":[\"sealed\"]}"}])
    try:
        child = Child(_env({**stack.broker_env(), **proxies.env(), **LAMBDA_RUNTIME,
                            "BROKER_RULES_FILE": str(rules)}))
    finally:
        proxies.set_faults([])
    try:
        assert child.imported == {"imported": True, "built": False}
        answer = child.ask("POST", "/v1/credentials/aws", json.dumps(_fresh_login(stack)))
        assert answer["status"] == 503 and json.loads(answer["body"])["error"]["code"] == "unavailable", answer
    finally:
        log = child.close()
    misconfigured = [json.loads(line) for line in log.splitlines()
                     if line.startswith("{") and "broker misconfigured" in line]
    assert len(misconfigured) == 2, log[-2000:]
    assert all("rules.toml" in entry["problem"] and entry["level"] == "CRITICAL" for entry in misconfigured), \
        misconfigured
    assert "Traceback" not in log
