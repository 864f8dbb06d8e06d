"""A latency-realistic stack for the benchmarks: a proxy in front of each backend that
adds a configurable delay per call, serves calls concurrently, counts them, and can
inject faults into a fraction of them.

On loopback every backend answers in a few milliseconds, and moto serves one call at
a time, so a broker with six dependent steps looks like one with four. Behind these
proxies each call takes (at least) the time the real service would, while calls in
flight at once wait side by side: the number of dependent steps shows in the
latency (docs/performance.md).

    with LatencyStack(stack) as lat:                 # one proxy process per backend server
        env = {**stack.broker_env(), **lat.env()}    # the broker's endpoints -> the proxies
        lat.set_delays(DEFAULT_DELAYS_MS, mode="pad")  # or uniform(50), mode="add"; or NO_DELAY
        ...
        lat.counts()                                 # {"ec2 DescribeInstances": 3, ...}

Each proxy is its own process (``python devstack/latency.py``), so its CPU is never
counted as the benchmark's, and its sleeping threads never hold the caller's GIL. It
is controlled over HTTP on its own port under ``/__latency__/`` (no backend uses that
path): ``GET counts``, ``POST config`` (JSON: delays, mode, faults, seed),
``POST reset``.

Delay modes, per call of backend B with delay D:
- ``add``: wait D, then forward. A call costs D plus the local server's own time; the
  benchmarks' "D on every backend" figure (critical path steps) uses this.
- ``pad``: forward, then wait until D has passed since the request arrived. A call
  costs max(D, the local server's time): the in-region figures already include the
  service's own work, so the local server's time counts toward them.

Requests are classified by what the broker sends: ``X-Amz-Target`` (DynamoDB, Secrets
Manager, ECS), else the SigV4 credential scope's service (sts, ec2, iam), the
forwarded proof (``Host: sts.*``) as sts; a proxy started with ``backend="vault"``
calls everything ``vault``. Headers (Host included) are forwarded as they are, so
SigV4 signatures still verify at moto.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# In-region latency of one call, milliseconds (sources in docs/performance.md).
DEFAULT_DELAYS_MS = {"sts": 15, "ec2": 40, "iam": 40, "dynamodb": 6, "vault": 4,
                     # not in issue 14's list: assumed, see docs/performance.md
                     "secretsmanager": 15, "ecs": 20}
BACKENDS = tuple(DEFAULT_DELAYS_MS)
NO_DELAY: dict = {}
CONTROL = "/__latency__/"

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade"})
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_TARGETS = {"DynamoDB_": "dynamodb", "secretsmanager.": "secretsmanager", "AmazonEC2ContainerService": "ecs"}


def uniform(delay_ms: float) -> dict:
    """The same delay on every backend."""
    return {b: delay_ms for b in BACKENDS}


def classify(method: str, path: str, headers: dict, body: bytes, fixed_backend: str | None = None) -> tuple[str, str]:
    """(backend, operation) of one request; ``headers`` with lower-case names."""
    if fixed_backend == "vault":
        return "vault", f"{method} {path.split('?', 1)[0].removeprefix('/v1/')}"
    target = headers.get("x-amz-target", "")
    for prefix, backend in _TARGETS.items():
        if target.startswith(prefix):
            return backend, target.rsplit(".", 1)[-1]
    action = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0] if body else ""
    if headers.get("host", "").startswith("sts."):
        return "sts", (action or "GetCallerIdentity") + " (forwarded proof)"
    m = _SCOPE.search(headers.get("authorization", ""))
    return (m.group(1) if m else fixed_backend or "other"), action or f"{method} {path.split('?', 1)[0]}"


class _Config:
    def __init__(self):
        self.delays: dict[str, float] = {}
        self.mode = "add"
        self.faults: list[dict] = []
        self.random = random.Random(14)

    def update(self, doc: dict) -> None:
        if "delays" in doc:
            unknown = set(doc["delays"]) - set(BACKENDS)
            if unknown:
                raise ValueError(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
            self.delays = {k: float(v) for k, v in doc["delays"].items()}
        if "mode" in doc:
            if doc["mode"] not in ("add", "pad"):
                raise ValueError("mode must be 'add' or 'pad'")
            self.mode = doc["mode"]
        if "faults" in doc:
            for f in doc["faults"]:
                if f.get("kind") not in ("status", "reset", "delay"):
                    raise ValueError(f"fault kind must be status, reset or delay: {f!r}")
            self.faults = list(doc["faults"])
        if "seed" in doc:
            self.random = random.Random(doc["seed"])


class LatencyProxy:
    """The proxy itself (threads in this process); :class:`LatencyProxyProcess` runs it apart."""

    def __init__(self, upstream: str, *, backend: str | None = None, port: int = 0, timeout: float = 30.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.backend = backend
        self.timeout = timeout
        self.config = _Config()
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._faulted: Counter = Counter()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms stall on kept-alive connections (see faultproxy.py)

            def log_message(self, *args):
                pass

            def parse_request(self):
                # The request line is in: a call's time counts from here, not from after
                # this proxy has parsed the headers (its own time, which the pad must hide).
                self.arrived = time.perf_counter()
                return super().parse_request()

            def _handle(self):
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_LIST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 256  # a storm opens many connections at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LatencyProxy":
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- serving -------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        arrived = h.arrived  # stamped by Handler.parse_request, when the request line came in
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        if h.path.startswith(CONTROL):
            return self._control(h, h.path[len(CONTROL):], body)
        backend, operation = classify(h.command, h.path, headers, body, self.backend)
        cfg = self.config
        delay = cfg.delays.get(backend, 0.0) / 1000.0
        fault = self._pick_fault(backend, operation)
        with self._lock:
            self._counts[f"{backend} {operation}"] += 1
            if fault:
                self._faulted[f"{backend} {operation} {fault['kind']}"] += 1
        if cfg.mode == "add" and delay:
            time.sleep(delay)
        if fault and fault["kind"] == "delay":
            time.sleep(float(fault.get("seconds", 1.0)))
        if fault and fault["kind"] == "reset":
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault and fault["kind"] == "status":
            answer = (int(fault.get("status", 503)), list((fault.get("headers") or {}).items()),
                      (fault.get("body") or "").encode())
        else:
            answer = self._forward(h, body)
        if answer is None:  # the upstream failed: do the same to the client
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if cfg.mode == "pad" and delay:
            left = delay - (time.perf_counter() - arrived)
            if left > 0:
                time.sleep(left)
        _answer(h, *answer, head=h.command == "HEAD")

    def _pick_fault(self, backend: str, operation: str) -> dict | None:
        for f in self.config.faults:
            if f.get("backend") not in (None, backend):
                continue
            if f.get("operation") and not operation.startswith(f["operation"]):
                continue
            with self._lock:
                hit = self.config.random.random() < float(f.get("rate", 1.0))
            if hit:
                return f
        return None

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes):
        """Forward on this thread's kept-alive upstream connection; (status, headers, payload) or None."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self.upstream, timeout=self.timeout)
            try:
                conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
                for name, value in h.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                response = conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if reused and attempt == 0:
                    continue  # the upstream closed an idle kept-alive connection: it never saw this request
                return None
            except Exception:
                conn.close()
                self._local.conn = None
                return None
            if response.will_close:  # moto answers Connection: close
                conn.close()
                self._local.conn = None
            out = [(k, v) for k, v in response.getheaders()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            return response.status, out, payload
        return None

    # ---- control -------------------------------------------------------------

    def _control(self, h, what: str, body: bytes) -> None:
        try:
            if what == "counts":
                with self._lock:
                    doc = {"counts": dict(self._counts), "faulted": dict(self._faulted)}
            elif what == "reset" and h.command == "POST":
                with self._lock:
                    self._counts.clear()
                    self._faulted.clear()
                doc = {"ok": True}
            elif what == "config" and h.command == "POST":
                new = _Config()
                new.update({"delays": self.config.delays, "mode": self.config.mode, "faults": self.config.faults})
                new.random = self.config.random
                new.update(json.loads(body or b"{}"))
                self.config = new  # one assignment: a request sees the old or the new config, never half
                doc = {"ok": True}
            else:
                return _answer(h, 404, [("Content-Type", "application/json")], b'{"error": "unknown control path"}')
        except ValueError as e:
            return _answer(h, 400, [("Content-Type", "application/json")], json.dumps({"error": str(e)}).encode())
        _answer(h, 200, [("Content-Type", "application/json")], json.dumps(doc).encode())


def _answer(h: BaseHTTPRequestHandler, status: int, headers, payload: bytes, head: bool = False) -> None:
    try:
        # One write: the status line, the headers and the body leave together (two writes
        # wake the client twice, and with delayed ACKs can stall the second).
        h.send_response_only(status)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(payload)))
        h.wfile.write(b"".join([*h._headers_buffer, b"\r\n", b"" if head else payload]))
        h._headers_buffer = []
    except OSError:
        h.close_connection = True


# ---- running proxies as processes ------------------------------------------------


class LatencyProxyProcess:
    """A :class:`LatencyProxy` in its own process, with its control calls."""

    def __init__(self, upstream: str, *, backend: str | None = None):
        self.upstream = upstream
        self.backend = backend
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> "LatencyProxyProcess":
        # run as a script: the benchmarks load this file from their own checkout even when
        # they measure an older tree (--rev), whose devstack has no latency proxy
        args = [sys.executable, __file__, "--upstream", self.upstream]
        if self.backend:
            args += ["--backend", self.backend]
        # it dies with the process that started it (when started from the main thread)
        preexec = _pdeathsig if threading.current_thread() is threading.main_thread() else None
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     preexec_fn=preexec)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the latency proxy for {self.upstream} did not start: {line!r}")
        self.url = line
        return self

    def _call(self, method: str, what: str, doc: dict | None = None) -> dict:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            body = json.dumps(doc).encode() if doc is not None else b""
            conn.request(method, CONTROL + what, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            out = json.loads(r.read() or b"{}")
            if r.status != 200:
                raise ValueError(f"latency proxy {what}: {out.get('error')}")
            return out
        finally:
            conn.close()

    def configure(self, **doc) -> None:
        self._call("POST", "config", doc)

    def counts(self) -> dict:
        return self._call("GET", "counts")

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _pdeathsig() -> None:  # in the child between fork and exec: die with the parent (Linux)
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LatencyStack:
    """Proxies in front of a running :class:`devstack.Stack`: one for moto (STS, EC2,
    IAM, DynamoDB, Secrets Manager, ECS share its endpoint; each call is classified)
    and one for OpenBao. :meth:`env` gives the broker's endpoint variables for them."""

    def __init__(self, stack):
        self.stack = stack
        self.aws = LatencyProxyProcess(stack.aws_endpoint_url)
        self.vault = LatencyProxyProcess(stack.vault_addr, backend="vault")

    @property
    def proxies(self):
        return (self.aws, self.vault)

    def start(self) -> "LatencyStack":
        try:
            for p in self.proxies:
                p.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()

    def __enter__(self) -> "LatencyStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The broker's endpoints through the proxies (the proof forward included). The
        Vault address the broker hands its callers stays the real one: clients reach
        Vault directly (and pin its address), only the broker's own calls are delayed."""
        return {"BROKER_AWS_ENDPOINT_URL": self.aws.url, "BROKER_STS_FORWARD_URL": self.aws.url,
                "BROKER_VAULT_ADDR": self.vault.url, "BROKER_VAULT_PUBLIC_ADDR": self.stack.vault_addr}

    def set_delays(self, delays_ms: dict, mode: str = "add") -> None:
        for p in self.proxies:
            p.configure(delays=delays_ms, mode=mode)

    def set_faults(self, faults: list[dict], seed: int = 14) -> None:
        """Faults: dicts with ``backend``, optional ``operation`` (prefix), ``rate`` (0..1),
        ``kind`` (status | reset | delay), ``status``/``body``/``headers`` or ``seconds``."""
        for p in self.proxies:
            p.configure(faults=[f for f in faults if (f.get("backend") == "vault") == (p is self.vault)
                                or f.get("backend") is None], seed=seed)

    def reset(self) -> None:
        for p in self.proxies:
            p.reset()

    def counts(self) -> Counter:
        """Requests per "backend operation" since the last :meth:`reset`, over both proxies."""
        total: Counter = Counter()
        for p in self.proxies:
            total.update(p.counts()["counts"])
        return total

    def faulted(self) -> Counter:
        total: Counter = Counter()
        for p in self.proxies:
            total.update(p.counts()["faulted"])
        return total


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="a latency proxy in front of one backend server")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--backend", help="'vault': every request is a Vault call; default: classify AWS requests")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    proxy = LatencyProxy(args.upstream, backend=args.backend, port=args.port)
    print(proxy.url, flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()


__all__ = ["LatencyProxy", "LatencyProxyProcess", "LatencyStack", "DEFAULT_DELAYS_MS", "NO_DELAY", "uniform",
           "classify", "BACKENDS"]
