"""An HTTP proxy in front of moto for the tests of what the broker does with an answer
that is lost, or that is no answer (tests/service/test_aws_answers.py)."""


class AnswerDropper:
    """An HTTP proxy to moto that forwards every request as it came (moto checks its SigV4)
    and, for the first request whose X-Amz-Target ends with `drop`, closes the connection
    instead of passing moto's answer back: the write landed, its answer is lost."""

    def __init__(self, upstream, drop):
        import http.server
        import threading

        import urllib3

        proxy = self
        self.drop, self.dropped, self.targets = drop, 0, []
        pool = urllib3.PoolManager(retries=False)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                page = proxy.intercept(body, self.headers.get("x-amz-target", ""))
                if page is not None:  # answered here, never forwarded
                    self.send_response(200)
                    self.send_header("content-type", "text/xml")
                    self.send_header("content-length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                target = self.headers.get("x-amz-target", "")
                proxy.targets.append(target)
                answer = pool.request("POST", upstream + self.path, body=body, headers=dict(self.headers),
                                      redirect=False)
                if target.endswith(proxy.drop) and not proxy.dropped:
                    proxy.dropped += 1
                    self.close_connection = True
                    self.connection.shutdown(2)  # moto applied it; the broker never hears
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(answer.data)))
                self.end_headers()
                self.wfile.write(answer.data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def intercept(self, body, target):
        """The page to answer `body` with instead of moto's answer (None: forward it)."""
        return None

    def close(self):
        self.server.shutdown()
