"""devstack/latency.py's proxy over real sockets, in front of a real HTTP server: the pad
counts from the request line, the answer (status, headers, body) arrives whole and framed
(GET, HEAD, kept-alive), faults do what they say, the control endpoints answer."""

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack.latency import LatencyProxy


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._reply(f"hello {self.path}".encode())

    do_HEAD = do_GET


@pytest.fixture
def proxy():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    p = LatencyProxy(f"http://127.0.0.1:{upstream.server_address[1]}", backend="vault").start()
    yield p
    p.stop()
    upstream.shutdown()
    upstream.server_close()


def _control(p, what, doc=None):
    host, port = p.url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("POST" if doc is not None else "GET", f"/__latency__/{what}",
              body=json.dumps(doc) if doc is not None else None)
    r = c.getresponse()
    return r.status, json.loads(r.read())


def _connection(p):
    host, port = p.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=5)


def test_get_and_head_on_one_kept_alive_connection_are_framed(proxy):
    c = _connection(proxy)
    for path in ("/a", "/b"):
        c.request("HEAD", path)
        r = c.getresponse()
        assert r.status == 200 and r.read() == b""
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200 and r.read() == f"hello {path}".encode()
    assert _control(proxy, "counts")[1]["counts"] == {"vault HEAD /a": 1, "vault GET /a": 1,
                                                     "vault HEAD /b": 1, "vault GET /b": 1}


def test_the_pad_counts_from_the_request_line(proxy):
    assert _control(proxy, "config", {"delays": {"vault": 300}, "mode": "pad"}) == (200, {"ok": True})
    s = socket.create_connection((proxy.url.split(":")[1][2:], int(proxy.url.split(":")[2])), timeout=5)
    started = time.monotonic()
    s.sendall(b"GET /slow HTTP/1.1\r\n")
    time.sleep(0.2)  # the headers come late: the pad's 300 ms count from the request line
    s.sendall(b"Host: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"hello /slow"):
        answer += s.recv(4096)
    elapsed = time.monotonic() - started
    s.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert 0.29 < elapsed < 0.45


def test_faults_status_reset_and_delay(proxy):
    c = _connection(proxy)
    _control(proxy, "config", {"faults": [{"kind": "status", "status": 429, "body": "slow down",
                                           "headers": {"Retry-After": "1"}}]})
    c.request("GET", "/x")
    r = c.getresponse()
    assert (r.status, r.getheader("Retry-After"), r.read()) == (429, "1", b"slow down")
    _control(proxy, "config", {"faults": [{"kind": "delay", "seconds": 0.3}]})
    started = time.monotonic()
    c.request("GET", "/x")  # the same kept-alive connection
    assert c.getresponse().read() == b"hello /x"
    assert time.monotonic() - started >= 0.3
    _control(proxy, "config", {"faults": [{"kind": "reset"}]})
    c.request("GET", "/x")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        c.getresponse()
    assert _control(proxy, "counts")[1]["faulted"] == {"vault GET /x status": 1, "vault GET /x delay": 1,
                                                      "vault GET /x reset": 1}


def test_the_control_endpoints(proxy):
    assert _control(proxy, "config", {"mode": "sideways"}) == (400, {"error": "mode must be 'add' or 'pad'"})
    assert _control(proxy, "nothing")[0] == 404
    assert _control(proxy, "reset", {}) == (200, {"ok": True})
    assert _control(proxy, "counts")[1] == {"counts": {}, "faulted": {}}
