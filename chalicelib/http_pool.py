"""The broker's one HTTP stack for its own backend calls: urllib3 connection pools.

Why not requests or botocore's client machinery: on the issuance path every call's
CPU is the handler's CPU, and importing them is most of a cold start (issue 14,
docs/performance.md). urllib3 is what both use underneath; the broker calls it
directly, with explicit timeouts, no retries of its own (each caller decides what
may be sent twice), no redirects, and no proxy or .netrc from the environment.

`Pools.request` reads at most `max_bytes` of an answer, so a hostile or broken
endpoint can't make the broker buffer an unbounded body.
"""

import threading
import time

DEFAULT_MAX_BYTES = 1 << 20
_CHUNK = 64 << 10


class HttpError(Exception):
    """No answer: the connection, TLS or a timeout failed. `kind` names which, never a secret."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Answer:
    __slots__ = ("status", "headers", "data")

    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    def json(self):
        import json

        return json.loads(self.data) if self.data else None


class Pools:
    """One urllib3 PoolManager (thread-safe; a pool of kept-alive connections per host)."""

    def __init__(self, maxsize=20):
        self._maxsize = maxsize
        self._manager = None
        self._lock = threading.Lock()

    def _pools(self):
        if self._manager is None:
            with self._lock:
                if self._manager is None:
                    import urllib3

                    kwargs = {}
                    try:
                        import certifi  # the CA bundle requests used, so TLS trusts the same roots

                        kwargs["ca_certs"] = certifi.where()
                    except ImportError:
                        pass
                    self._manager = urllib3.PoolManager(num_pools=16, maxsize=self._maxsize, block=False,
                                                        retries=False, **kwargs)
        return self._manager

    def request(self, method, url, *, body=None, headers=None, connect_timeout=2.0, read_timeout=5.0,
                max_bytes=DEFAULT_MAX_BYTES):
        """One request, one answer (status, headers, at most `max_bytes` + 1 bytes of body:
        a caller that gets more knows the answer was oversized). Raises HttpError."""
        import urllib3

        try:
            response = self._pools().request(
                method, url, body=body, headers=headers or {}, redirect=False, retries=False,
                preload_content=False, timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
        except urllib3.exceptions.HTTPError as e:
            raise HttpError(_kind(e)) from None
        # The read timeout bounds each wait for bytes, not the whole body: a body dripped a
        # byte at a time within it would hold the call for ever (past Lambda's and API
        # Gateway's 29 s). So the body must also be in by a deadline: both timeouts from now.
        deadline = time.monotonic() + connect_timeout + read_timeout
        try:
            chunks, size = [], 0
            while size <= max_bytes:
                chunk = response.read1(min(_CHUNK, max_bytes + 1 - size), decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline and not response.isclosed():
                    response.close()
                    raise HttpError("deadline exceeded (the answer came too slowly)")
            data = b"".join(chunks)
            if len(data) > max_bytes:
                response.close()  # unread bytes left: this connection can't serve another request
        except urllib3.exceptions.HTTPError as e:
            response.close()
            raise HttpError(_kind(e)) from None
        finally:
            response.release_conn()
        return Answer(response.status, response.headers, data)

    def close(self):
        """Drop every pooled connection (after a SnapStart restore: no two copies share one)."""
        if self._manager is not None:
            self._manager.clear()


def _kind(error):
    name = type(error).__name__
    reason = getattr(error, "reason", None)
    if reason is not None and type(reason).__name__ != name:
        return f"{name} ({type(reason).__name__})"
    return name
