"""The fault proxy's added latency on kept-alive connections (issue 14: the 40 ms stall).

A small local upstream answers a fixed JSON body; one ``requests.Session`` (one
kept-alive connection) asks it N times directly and N times through a
``FaultProxy`` with no fault set. What the proxy adds per request is the
difference. With Nagle's algorithm on the proxy's accepted sockets, every other
answer waited for the client's delayed ACK (~40 ms on Linux); with
``TCP_NODELAY`` none does.

    python -m bench.proxy_stall                      # this checkout's devstack/faultproxy.py
    python -m bench.proxy_stall --module FILE.py     # another version of it (e.g. from git show)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .stats import summary_ms

PAYLOAD = json.dumps({"ok": True, "pad": "x" * 200}).encode()
STALL_MS = 20.0  # a request slower than this through the proxy counts as stalled


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the upstream itself must not stall

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    do_GET = do_POST


def measure(proxy_class, n: int = 200) -> dict:
    """Per-request wall time directly and through ``proxy_class(upstream_url)``, one kept-alive session each."""
    import requests

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    proxy = proxy_class(up_url).start()
    try:
        def run(url):
            s = requests.Session()
            s.trust_env = False
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = s.post(url + "/x", data=b'{"q": 1}', timeout=5)
                r.content
                times.append(time.perf_counter() - t0)
            s.close()
            return times

        direct, through = [], []
        for _ in range(2):  # alternate, so load hits both alike
            direct += run(up_url)
            through += run(proxy.url)
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
    return {"requests": len(through),
            "direct_ms": summary_ms(direct),
            "through_proxy_ms": summary_ms(through),
            "stalled": sum(1 for t in through if t * 1000 > STALL_MS),
            "stall_threshold_ms": STALL_MS}


def load_proxy_class(path: str | None):
    if not path:
        from devstack.faultproxy import FaultProxy

        return FaultProxy
    spec = importlib.util.spec_from_file_location("faultproxy_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.FaultProxy


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", help="a faultproxy.py to measure instead of devstack/faultproxy.py")
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args(argv)
    r = measure(load_proxy_class(args.module), args.n)
    d, t = r["direct_ms"], r["through_proxy_ms"]
    print(f"{r['requests']} kept-alive requests: direct p50 {d['p50']:.2f} / p99 {d['p99']:.2f} / max {d['max']:.2f} ms; "
          f"through the proxy p50 {t['p50']:.2f} / p95 {t['p95']:.2f} / p99 {t['p99']:.2f} / max {t['max']:.2f} ms; "
          f"{r['stalled']} requests over {STALL_MS:g} ms")


if __name__ == "__main__":
    main()
