"""A small HTTP reverse proxy on loopback that injects faults: the broker's backends
(OpenBao, moto's DynamoDB and STS, the simulated Google) are reached through it in
the fault, failover and soak tests.

    proxy = FaultProxy("http://127.0.0.1:8200").start()        # proxy.url -> the broker's env
    proxy.set(Fault("delay", seconds=3))                        # every request 3 s late
    proxy.set(Fault("reset", match=dynamodb()))                 # DynamoDB connections cut
    proxy.set(Fault("status", match=dynamodb(), status=400, body=THROTTLED, headers=...))
    proxy.clear()

Faults: ``delay`` (wait, then forward), ``hang`` (wait, then close without an
answer), ``reset`` (close at once), ``status`` (answer without forwarding). A fault
applies to the requests its ``match`` accepts (all by default). The upstream may be
a callable returning the base URL per request (the raft cluster's active node).

Headers are forwarded as they are, ``Host`` included, so SigV4 signatures made for
the proxy's address still verify at moto. Bodies are read whole (Content-Length or
chunked) and answered with a Content-Length. Loopback only.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade"})
THROTTLED = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded."})
STS_INTERNAL_ERROR = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Receiver</Type>'
                      b"<Code>InternalFailure</Code><Message>An internal error occurred.</Message></Error>"
                      b"<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>")


@dataclass
class Request:
    method: str
    path: str
    headers: dict  # lower-case names
    body: bytes

    @property
    def target(self) -> str:
        return self.headers.get("x-amz-target", "")


def dynamodb(operation: str | None = None, table: str | None = None) -> Callable[[Request], bool]:
    """DynamoDB requests (X-Amz-Target DynamoDB_20120810.*), optionally one operation / one table."""

    def match(req: Request) -> bool:
        if not req.target.startswith("DynamoDB_"):
            return False
        if operation and req.target.rsplit(".", 1)[-1] != operation:
            return False
        if table:
            try:
                return json.loads(req.body or b"{}").get("TableName") == table
            except ValueError:
                return False
        return True

    return match


def sts() -> Callable[[Request], bool]:
    """STS GetCallerIdentity requests (the broker keeps the signed Host: sts.*)."""
    return lambda req: req.headers.get("host", "").startswith("sts.") or b"Action=GetCallerIdentity" in req.body


def path_prefix(prefix: str) -> Callable[[Request], bool]:
    return lambda req: req.path.startswith(prefix)


@dataclass
class Fault:
    kind: str  # delay | hang | reset | status
    match: Callable[[Request], bool] = field(default=lambda req: True)
    seconds: float = 0.0
    status: int = 503
    body: bytes | str = b""
    headers: dict = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str | Callable[[], str], *, port: int = 0, timeout: float = 60.0):
        self._upstream = upstream
        self._timeout = timeout
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {"forwarded": 0, "faulted": 0, "upstream_errors": 0}
        self.in_flight = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out in two writes (status + headers, then the body): with
            # Nagle's algorithm on, the second waits for the ACK of the first, which the
            # client delays by up to 40 ms on a kept-alive connection. TCP_NODELAY sends
            # both at once (docs/performance.md, "the fault proxy's 40 ms stall").
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet: the tests report what matters
                pass

            def _handle(self):
                with proxy._lock:
                    proxy.in_flight += 1
                try:
                    proxy._serve(self)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle
            do_LIST = _handle  # Vault's LIST verb

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- control -----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fault-proxy-{self.port}",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set(self, *faults: Fault) -> None:
        """Replace the active faults (the first that matches a request applies)."""
        with self._lock:
            self._faults = list(faults)

    def clear(self) -> None:
        self.set()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request is being delayed or forwarded (e.g. late writes have landed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.in_flight == 0:
                return True
            time.sleep(0.05)
        return False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- serving -------------------------------------------------------------------

    def _fault_for(self, req: Request) -> Fault | None:
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            try:
                if fault.match(req):
                    return fault
            except Exception:
                continue
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = _read_body(handler, headers)
        req = Request(handler.command, handler.path, headers, body)
        fault = self._fault_for(req)
        if fault is not None:
            self.counts["faulted"] += 1
            if fault.kind in ("delay", "hang"):
                time.sleep(fault.seconds)
            if fault.kind in ("hang", "reset"):
                handler.close_connection = True
                try:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.kind == "status":
                payload = fault.body.encode() if isinstance(fault.body, str) else fault.body
                _answer(handler, fault.status, fault.headers, payload)
                return
        self._forward(handler, req)

    def _forward(self, handler: BaseHTTPRequestHandler, req: Request) -> None:
        upstream = self._upstream() if callable(self._upstream) else self._upstream
        try:
            if not upstream:
                raise ConnectionRefusedError("no upstream")
            parts = urlsplit(upstream)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._timeout)
            try:
                conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
                for name, value in handler.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(req.body)))
                conn.endheaders(req.body)
                response = conn.getresponse()
                payload = response.read()
                out_headers = [(k, v) for k, v in response.getheaders()
                               if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
                status = response.status
            finally:
                conn.close()
        except Exception:
            # The upstream is down or cut the connection: do the same to the client.
            self.counts["upstream_errors"] += 1
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.counts["forwarded"] += 1
        _answer(handler, status, out_headers, payload, head=req.method == "HEAD")


def _read_body(handler: BaseHTTPRequestHandler, headers: dict) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


def _answer(handler: BaseHTTPRequestHandler, status: int, headers, payload: bytes, head: bool = False) -> None:
    try:
        handler.send_response_only(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if not head:
            handler.wfile.write(payload)
    except OSError:
        handler.close_connection = True


__all__ = ["FaultProxy", "Fault", "Request", "dynamodb", "sts", "path_prefix", "THROTTLED", "STS_INTERNAL_ERROR"]
