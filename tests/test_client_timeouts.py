"""A broker that drips its answer one byte per second, on loopback, for real.

A socket timeout bounds each read, not the request: every byte resets it. The client must
give up on each request after ``--timeout`` (connect, headers and body together) and on the
whole login after ``--max-wait``. The bounds asserted are generous: behaviour, not timing.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from broker.http import RequestTimedOut, build_opener, request
from tests.test_client_trust import client_env, login_args

STATUS_LINE = b"HTTP/1.1 500 Internal Server Error\r\n"
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
BODY = b'{"request_id": "req-drip", "role": "web"' + b" " * 4000


class DripServer:
    """Answers every connection by sending ``prefix`` at once, then ``drip`` one byte a second."""

    def __init__(self, prefix: bytes, drip: bytes) -> None:
        self.prefix, self.drip = prefix, drip
        self.connections = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request (small: one read is enough here)
                conn.sendall(self.prefix)
                for byte in self.drip[:60]:  # a minute at most, so that a client that never gives up ends too
                    if self.stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def drip(request):
    servers = []

    def make(prefix: bytes, drip: bytes) -> DripServer:
        servers.append(DripServer(prefix, drip))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.mark.parametrize("prefix, dripped", [
    (b"", STATUS_LINE),                 # the status line and headers, a byte at a time
    (HEADERS, BODY),                    # the headers at once, then the body a byte at a time
    (CLOSE_DELIMITED, BODY),            # no length: a cut-short body would look complete
], ids=["headers", "body", "close-delimited-body"])
def test_each_request_is_bounded_as_a_whole(drip, prefix, dripped):
    server = drip(prefix, dripped)
    outcome: dict = {}

    def call():
        start = time.monotonic()
        try:
            outcome["result"] = request(build_opener(None, server.url), "POST", server.url + "/v1/credentials/aws",
                                        data=b"{}", timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - start

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the request was still running after 20 s with --timeout 2"
    assert isinstance(outcome.get("error"), RequestTimedOut), outcome
    assert "within 2 s" in str(outcome["error"])
    assert outcome["took"] < 2.0 + 2.5


def test_the_whole_login_ends_within_max_wait(drip, tmp_path):
    server = drip(HEADERS, BODY)
    work = tmp_path / "work"
    work.mkdir()
    args = login_args(server.url, "--timeout", "3", "--out-dir", str(work / "creds"))
    args[args.index("--max-attempts") + 1] = "6"
    args[args.index("--max-wait") + 1] = "8"
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "broker", *args], cwd=work, env=client_env(tmp_path),
                              capture_output=True, text=True, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("the login was still running after 45 s with --timeout 3 --max-wait 8")
    took = time.monotonic() - start
    assert proc.returncode == 5, proc.stderr
    assert took < 8 + 4, f"the login took {took:.1f} s with --max-wait 8"
    assert "timed out (no complete answer from 127.0.0.1" in proc.stderr and "within 3 s" in proc.stderr
    assert 2 <= server.connections <= 4  # retried, each attempt cut at 3 s (the last at what --max-wait left)
    assert not (work / "creds").exists()
