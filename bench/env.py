"""The benchmark's world: the local stack, the in-process broker, proofs, tracing.

Nothing in here times anything; the benchmark modules do. What is set up here
(stack start, instance launch, role sessions, proof signing, Lambda events) is
kept out of every timed region.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

if TYPE_CHECKING:
    from devstack import Stack

GCI_BODY = "Action=GetCallerIdentity&Version=2011-06-15"

LOGIN_PATH = "/v1/credentials/aws"
HEALTH_PATH = "/v1/health"
WEB_TAGS = {"vault-role": "web"}
NODE_ROLE = "demo-node"


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


def tree() -> Path:
    """The code under test: this checkout, or ``BENCH_TREE`` (e.g. an exported older
    revision, for before/after figures). Only bench/ always comes from this checkout."""
    return Path(os.environ.get("BENCH_TREE") or PROJECT_DIR).resolve()


# What comes from the tree under test: the broker, its client, and the local stack
# and test signer of the same revision (devstack seeds what that revision needs).
TREE_PACKAGES = ("app", "chalicelib", "broker", "devstack", "tests")


def activate_tree() -> Path:
    """Put :func:`tree` first on sys.path; call before anything imports the packages above."""
    t = tree()
    if t != PROJECT_DIR:
        for name in TREE_PACKAGES:
            mod = sys.modules.get(name)
            where = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", [])), None)
            if mod is not None and where and not Path(where).resolve().is_relative_to(t):
                raise RuntimeError(f"{name} was already imported from {where}, not from {t}")
        if sys.path[0] != str(t):
            sys.path.insert(0, str(t))
    return t


def import_app():
    """Import app.py (and so chalicelib) from :func:`tree`."""
    activate_tree()
    import app

    return app


TUNED_CLIENTS_PRELUDE = (
    "import os\n"
    "if os.environ.get('BENCH_AWS_CLIENTS') == 'tuned':\n"
    "    import chalicelib.aws_clients, chalicelib.backends\n"
    "    chalicelib.backends.aws_client_factory = chalicelib.aws_clients.aws_client_factory\n")


def use_tuned_clients_if_asked() -> bool:
    """``BENCH_AWS_CLIENTS=tuned``: the broker builds its botocore clients with
    chalicelib/aws_clients.py instead of backends.aws_client_factory (what the lead's
    one-line change in backends.py will do), in this process; the cold-start and storm
    processes run :data:`TUNED_CLIENTS_PRELUDE` for the same."""
    if os.environ.get("BENCH_AWS_CLIENTS") != "tuned":
        return False
    import chalicelib.backends
    from chalicelib import aws_clients

    chalicelib.backends.aws_client_factory = aws_clients.aws_client_factory
    return True


def latency_module():
    """devstack/latency.py of this checkout (also when an older tree is measured)."""
    name = "bench_latency_proxy"
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, PROJECT_DIR / "devstack" / "latency.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _sigv4():
    activate_tree()
    from tests import sigv4

    return sigv4


# ---- proofs ------------------------------------------------------------------


class ProofFactory:
    """Distinct signed GetCallerIdentity proofs for one role session name.

    SigV4 signatures made in the same second with the same keys are identical and
    the broker spends each proof once, so every proof gets a (keys, second) pair
    never used before: the newest unused second within ``window`` seconds of now
    (the broker allows 300 s of skew), and a new assumed-role session when one
    session has used up its window. Signing is pure CPU (a few HMACs); call
    :meth:`headers` / :meth:`login` outside the timed region.
    """

    def __init__(self, stack: Stack, session_name: str, *, role_name: str = NODE_ROLE,
                 role: str = "web", window: int = 200):
        self.stack = stack
        self.role_name = role_name
        self.session_name = session_name
        self.role = role
        self.window = window
        self.server_id = stack.broker_env()["BROKER_SERVER_ID"]
        self._sessions: list[tuple[dict, set[int]]] = []
        self._lock = threading.Lock()

    def _pick(self) -> tuple[dict, int]:
        now = int(time.time())
        for creds, used in reversed(self._sessions[-2:]):
            for second in range(now, now - self.window, -1):
                if second not in used:
                    used.add(second)
                    return creds, second
        creds = self.stack.assume(self.role_name, self.session_name)
        self._sessions.append((creds, {now}))
        return creds, now

    def headers(self) -> dict:
        """The signed headers of one fresh STS GetCallerIdentity request."""
        with self._lock:
            creds, second = self._pick()
        return _sigv4().sign(creds, server_id=self.server_id, when=datetime.fromtimestamp(second, timezone.utc))

    def login(self, headers: dict | None = None) -> bytes:
        """The JSON body of POST /v1/credentials/aws for a fresh proof."""
        return json.dumps(_sigv4().login_body(self.role, headers or self.headers())).encode()


def login_for(creds: dict, role: str, server_id: str) -> bytes:
    sigv4 = _sigv4()
    return json.dumps(sigv4.login_body(role, sigv4.sign(creds, server_id=server_id))).encode()


def proof_hash(headers: dict) -> str:
    """What the broker keys the replay record on: SHA-256 of the signature."""
    signature = headers["Authorization"].rsplit("Signature=", 1)[1]
    return hashlib.sha256(signature.encode()).hexdigest()


# ---- the in-process app --------------------------------------------------------


class ThreadLocalRequests:
    """Make ``app.current_request`` / ``app.lambda_context`` thread-local while active.

    Chalice keeps the current request as a plain attribute of the app: right for
    Lambda, where an execution environment runs one request at a time, wrong for
    threads sharing one process. The boot storm simulates concurrent execution
    environments with threads, so it swaps the app's class for a subclass whose
    two attributes live in a ``threading.local`` (nothing in app.py changes).
    """

    def __init__(self, chalice_app):
        self.app = chalice_app
        self._old_class = None

    def __enter__(self):
        local = threading.local()

        def attr(name):
            return property(lambda self: getattr(local, name, None),
                            lambda self, value: setattr(local, name, value))

        self._old_class = type(self.app)
        patched = type("ThreadLocalChalice", (self._old_class,),
                       {"current_request": attr("current_request"), "lambda_context": attr("lambda_context")})
        self.app.__class__ = patched
        return self

    def __exit__(self, *exc):
        self.app.__class__ = self._old_class


class Bench:
    """The local stack, the broker in process (chalice.test.Client and the Lambda
    entry point) and under ``chalice local``, and one running web instance."""

    def __init__(self, stack: Stack | None = None, workdir: Path | str | None = None,
                 say: Callable[[str], None] = lambda _m: None):
        self.say = say
        self.latency = None  # the LatencyStack in front of moto and OpenBao (devstack/latency.py)
        self._own_stack = stack is None
        self._workdir = workdir
        self.stack = stack
        self._saved_env: dict | None = None
        self._log_streams: list = []
        self._added_handler = None
        self._devnull = None

    rules_override: dict = {}

    def broker_env(self) -> dict:
        """The stack's broker environment with the benchmark's rules (no rate limit) and
        its backends behind the latency proxies (no delay unless a benchmark sets one)."""
        return {**self.stack.broker_env(), **self.rules_override, **(self.latency.env() if self.latency else {})}

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "Bench":
        activate_tree()
        if self.stack is None:
            import tempfile

            from devstack import Stack

            workdir = self._workdir or tempfile.mkdtemp(prefix="bench-stack-")
            t0 = time.perf_counter()
            self.stack = Stack.start(workdir, with_broker=False, project_dir=tree())
            self.say(f"local stack up in {time.perf_counter() - t0:.1f} s (workdir {workdir})")
        self.rules_override = unlimited_rules(tree(), self.stack.workdir)
        self.latency = latency_module().LatencyStack(self.stack).start()
        if self.stack.broker is None or self.stack.broker.proc is None:
            self.stack.start_broker(self.broker_env())  # chalice local, through the proxies too
        from chalice.test import Client

        broker_app = import_app()
        use_tuned_clients_if_asked()

        self.app_module = broker_app
        self._saved_env = dict(os.environ)
        os.environ.update(self.broker_env())
        broker_app._service = None
        self._quiet_broker_log()
        self.client = Client(broker_app.app, stage_name="local", project_dir=str(tree()))
        self.server_id = self.stack.broker_env()["BROKER_SERVER_ID"]
        self.instance_id = self.stack.launch_instance(WEB_TAGS)
        self.proofs = ProofFactory(self.stack, self.instance_id)
        return self

    def close(self) -> None:
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
            self.app_module._service = None
        self._restore_broker_log()
        if self.latency is not None:
            self.latency.stop()
            self.latency = None
        if self._own_stack and self.stack is not None:
            self.stack.stop()

    def __enter__(self) -> "Bench":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _quiet_broker_log(self) -> None:
        """The broker logs one JSON line per decision to stdout: keep the formatting
        (it is part of the handler's work) but send the lines to /dev/null."""
        from chalicelib import jsonlog

        logger = logging.getLogger(jsonlog.LOGGER_NAME)
        self._devnull = open(os.devnull, "w")
        if not logger.handlers:
            with contextlib.redirect_stdout(self._devnull):
                jsonlog.get_logger()
            self._added_handler = logger.handlers[0]
        else:
            for h in logger.handlers:
                if type(h) is logging.StreamHandler:  # the broker's own, not e.g. pytest's capture
                    # not setStream(): it flushes the old stream, which may be closed
                    # (e.g. a capture file of an earlier test)
                    with h.lock:
                        self._log_streams.append((h, h.stream))
                        h.stream = self._devnull

    def _restore_broker_log(self) -> None:
        from chalicelib import jsonlog

        logger = logging.getLogger(jsonlog.LOGGER_NAME)
        if self._added_handler is not None:
            logger.removeHandler(self._added_handler)
            self._added_handler = None
        for h, old in self._log_streams:
            with h.lock:
                h.stream = old
        self._log_streams = []
        if self._devnull is not None:
            self._devnull.close()
            self._devnull = None

    # -- calling the broker ------------------------------------------------------

    def post_inprocess(self, body: bytes):
        """POST through chalice.test.Client; returns (status, parsed JSON body)."""
        r = self.client.http.post(LOGIN_PATH, body=body, headers={"Content-Type": "application/json"})
        return r.status_code, r.body

    def lambda_event(self, body: bytes, method: str = "POST", path: str = LOGIN_PATH):
        """A prebuilt API Gateway proxy event and Lambda context, as chalice.test builds them."""
        gw = self.client.http._local_gateway
        headers = {"Content-Type": "application/json"} if body else {}
        return gw._generate_lambda_event(method, path, headers, body), gw._generate_lambda_context()

    def json_event(self, body: bytes) -> dict:
        """The API Gateway event of a POST as API Gateway sends it (JSON-safe: a text body),
        for another process."""
        event, _ = self.lambda_event(body)
        event = dict(event)
        if isinstance(event.get("body"), bytes):
            event["body"] = event["body"].decode()
        return event

    def invoke(self, event, context) -> dict:
        """The Lambda entry point itself: ``app.app(event, context)``."""
        return self.app_module.app(event, context)

    def service(self):
        return self.app_module.get_service()

    def warm(self, n: int = 3) -> None:
        """Build the service, log the broker into Vault, open connections (in process and over HTTP)."""
        import requests

        self.http = requests.Session()
        self.http.trust_env = False
        for _ in range(n):
            status, body = self.post_inprocess(self.proofs.login())
            if status != 200:
                raise RuntimeError(f"warm-up issuance in process failed: {status} {body[:300]!r}")
            r = self.http.post(self.stack.broker_url + LOGIN_PATH, data=self.proofs.login(),
                               headers={"Content-Type": "application/json"}, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"warm-up issuance over HTTP failed: {r.status_code} {r.text[:300]}")


# ---- tracing the broker's backend calls -------------------------------------------

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@contextlib.contextmanager
def trace_http(ports: dict[int, str]):
    """Record every request made while active: (start, end, label): the broker's own HTTP
    client's (chalicelib/http_client.py) and urllib3's (botocore's and requests', for older
    trees and the botocore clients). ``ports`` names the servers by port."""
    from urllib3.connectionpool import HTTPConnectionPool

    original = HTTPConnectionPool.urlopen
    inside = threading.local()  # in the broker's HTTP client: its urllib3 call is that request, traced once

    def urlopen(pool, method, url, *args, **kwargs):
        if getattr(inside, "pools", False):
            return original(pool, method, url, *args, **kwargs)
        body = kwargs.get("body", args[0] if len(args) > 0 else None)
        headers = kwargs.get("headers", args[1] if len(args) > 1 else None) or {}
        t0 = time.perf_counter()
        try:
            return original(pool, method, url, *args, **kwargs)
        finally:
            calls.append((t0, time.perf_counter(), _label(ports.get(pool.port, f":{pool.port}"), method, url,
                                                           body, headers)))

    from urllib3.connection import HTTPConnection

    original_connect = HTTPConnection.connect

    def connect(conn):
        calls.connects.append(ports.get(conn.port, f":{conn.port}"))
        return original_connect(conn)

    calls = _Calls()
    HTTPConnectionPool.urlopen = urlopen
    HTTPConnection.connect = connect
    pools = _pools_class()  # the broker's own HTTP client (chalicelib/http_client.py), where it has one
    if pools is not None:
        original_request, original_pool_connect = pools.request, getattr(pools, "_connect", None)

        def request(self, method, url, *args, **kwargs):
            rest = url.split("://", 1)[-1]
            port = int(rest.split("/", 1)[0].rsplit(":", 1)[-1]) if ":" in rest.split("/", 1)[0] else 80
            t0 = time.perf_counter()
            inside.pools = True
            try:
                return original_request(self, method, url, *args, **kwargs)
            finally:
                inside.pools = False
                calls.append((t0, time.perf_counter(), _label(ports.get(port, f":{port}"), method,
                                                              "/" + rest.split("/", 1)[-1], kwargs.get("body"),
                                                              kwargs.get("headers") or {})))

        def pool_connect(self, key, *args, **kwargs):
            calls.connects.append(ports.get(key[2], f":{key[2]}"))
            return original_pool_connect(self, key, *args, **kwargs)

        pools.request = request
        if original_pool_connect is not None:
            pools._connect = pool_connect
    try:
        yield calls
    finally:
        HTTPConnectionPool.urlopen = original
        HTTPConnection.connect = original_connect
        if pools is not None:
            pools.request = original_request
            if original_pool_connect is not None:
                pools._connect = original_pool_connect


def _pools_class():
    try:
        from chalicelib.http_client import HttpClient
    except ImportError:  # an older tree
        return None
    return HttpClient


class _Calls(list):
    """The recorded calls, plus ``connects``: the server of each new TCP connection."""

    def __init__(self):
        super().__init__()
        self.connects: list[str] = []


def _label(server: str, method: str, url: str, body: Any, headers) -> str:
    h = {str(k).lower(): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in dict(headers).items()}
    path = url.split("?", 1)[0]
    if server == "vault":
        return f"vault {method} {path.removeprefix('/v1/')}"
    if h.get("host", "").startswith("sts."):
        return "sts GetCallerIdentity (forwarded)"
    m = _SCOPE.search(h.get("authorization", ""))
    service = m.group(1) if m else server
    target = h.get("x-amz-target")
    if target:
        return f"{service if m else 'dynamodb'} {target.rsplit('.', 1)[-1]}"
    text = body.decode(errors="replace") if isinstance(body, bytes) else body if isinstance(body, str) else ""
    action = re.search(r"(?:^|&)Action=([A-Za-z]+)", text or "")
    return f"{service} {action.group(1) if action else method + ' ' + path}"


def backend_ports(stack: Stack, latency=None) -> dict[int, str]:
    """Port -> server name, for :func:`trace_http` (the latency proxies named as their upstreams)."""
    from urllib.parse import urlsplit

    ports = {urlsplit(stack.aws_endpoint_url).port: "moto", urlsplit(stack.vault_addr).port: "vault"}
    if latency is not None:
        ports[urlsplit(latency.aws.url).port] = "moto"
        ports[urlsplit(latency.vault.url).port] = "vault"
    if stack.broker_url:
        ports[urlsplit(stack.broker_url).port] = "broker"
    return ports


__all__ = ["tree", "activate_tree", "import_app", "Bench", "ProofFactory", "ThreadLocalRequests", "trace_http", "backend_ports", "quick",
           "login_for", "proof_hash", "GCI_BODY", "PROJECT_DIR", "LOGIN_PATH", "HEALTH_PATH"]


def unlimited_rules(tree_dir, workdir) -> dict:
    """The tree's rules with the per-identity rate limit lifted: the benchmarks ask
    for hundreds of credentials as one identity, which the shipped limit (rightly)
    refuses. Trees from before rate limits existed are used as they are."""
    import re

    text = (Path(tree_dir) / "policies" / "rules.toml").read_text()
    if "[rate_limits]" not in text:
        return {}
    text = re.sub(r"\n\[rate_limits\][^\[]*", "\n", text) + '\n[rate_limits]\nper_identity = "1000000/1h"\n'
    path = Path(workdir) / "bench-rules.toml"
    path.write_text(text)
    return {"BROKER_RULES_FILE": str(path)}
