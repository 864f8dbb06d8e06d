"""A real HTTP server on 127.0.0.1 that answers as a test scripts it: for unit tests of the
broker's own HTTP clients (chalicelib/http_client.py; hvac's session, chalicelib/vault_client.py)
where the real backend can't be made to misbehave on cue (a Vault that answers garbage, an STS that redirects).

    with ScriptedServer() as server:
        server.on("POST", "/v1/auth/approle/login", (200, {"auth": {...}}))
        ... server.url ... server.seen  # [(method, path, headers, body)]

An answer is (status, body) or (status, body, headers); a dict body is sent as JSON.
Answers of one route are used in order, the last one again and again. A route nobody
scripted answers 404 with a Vault-shaped error.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self):
        self.routes: dict[tuple[str, str], list] = {}
        self.seen: list[tuple[str, str, dict, bytes]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server._lock:
                    server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                        body))
                    script = server.routes.get((self.command, self.path))
                    answer = (script.pop(0) if len(script) > 1 else script[0]) if script else \
                        (404, {"errors": []})
                status, payload, headers = (*answer, {})[:3]
                if callable(payload):
                    payload = payload(body)
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                    headers = {"Content-Type": "application/json", **headers}
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _answer  # LIST: how hvac lists

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: shutdown() waits for it, and the default (0.5 s) was half a second per test
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def on(self, method, path, *answers):
        with self._lock:
            self.routes[(method, path)] = list(answers)
        return self

    def requests_to(self, method, path):
        return [s for s in self.seen if s[0] == method and s[1] == path]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def closed_port_url():
    """An http:// URL nothing listens on (a port bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class Fetches:
    """The secret ID from "Secrets Manager": each fetch returns the next one (the last one again)."""

    def __init__(self, *values):
        self.values, self.count = list(values), 0

    def __call__(self):
        self.count += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]
