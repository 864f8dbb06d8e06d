"""The broker's HTTP calls that no SDK makes for it, on urllib3: the STS forward (the
caller's own signed GetCallerIdentity, sent as it was signed) and an OIDC issuer's keys
(Google's certificates). botocore makes the AWS calls, hvac the Vault calls.

What each request gets (``HttpClient.request``):

- explicit timeouts: connect, and read (each wait for bytes), urllib3's;
- a deadline for the whole answer (connect + 2 x read from the request's start): a
  read timeout bounds each wait, so an answer dripped a byte at a time within it would
  hold the call for ever (past API Gateway's 29 s). Neither urllib3 nor http.client has
  a whole-request deadline, so a timer shuts the request's socket down when it passes
  and the request fails as a read timeout, whatever was read by then;
- no retries (each caller decides what may be sent twice) and no redirects (a 3xx is
  the caller's answer to refuse);
- at most ``max_bytes`` + 1 bytes of body read (a caller that gets more knows it was
  oversized; that connection is not reused); a compressed answer (never asked for) is refused;
- the body framed by urllib3 (a caller's Content-Length is not sent: it can't lie);
- proxies as botocore honours them: ``HTTPS_PROXY`` / ``HTTP_PROXY`` and ``NO_PROXY``
  from the environment, through the standard library's ``getproxies`` and
  ``proxy_bypass``; no ``.netrc``;
- TLS with hostname checks against certifi's roots; kept-alive connections per host
  (urllib3's pools), dropped by ``close()`` (after a SnapStart restore).

Failures are ``HttpError`` whose ``kind`` names urllib3's error class (never the URL's
query, a header or a body).
"""

import socket
import threading
import urllib.request

DEFAULT_MAX_BYTES = 1 << 20
_request_state = threading.local()


class HttpError(Exception):
    """A request that got no usable answer: connection, TLS, timeout or protocol error."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Answer:
    __slots__ = ("status", "headers", "data")

    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data  # headers: case-insensitive

    def json(self):
        import json

        return json.loads(self.data)


class _Watch:
    """One request's deadline: the connection it runs on, whether the timer cut it, and
    whether the request ended first (then the timer does nothing)."""

    __slots__ = ("connection", "cut", "done", "lock")

    def __init__(self):
        self.connection, self.cut, self.done, self.lock = None, False, False, threading.Lock()

    def finish(self):
        """The request ended: a timer firing from now on cuts nothing. True if it had cut."""
        with self.lock:
            self.done = True
            return self.cut

    def expire(self):
        with self.lock:
            if self.done:
                return
            self.cut = True
            # The socket the connection opened: http.client drops `connection.sock` once an
            # answer that closes the connection has its headers (the response holds it then).
            sock = getattr(self.connection, "_deadline_socket", None) or getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001 - a socket already closed, or one that can't be shut down
                pass


def _classes():
    """urllib3's pool classes whose connections tell the running request's watch which
    socket to cut (each request runs in its caller's thread)."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Watched:
        def _watched(self):
            watch = getattr(_request_state, "watch", None)
            if watch is not None:
                with watch.lock:
                    watch.connection = self
                    cut = watch.cut
                if cut:
                    raise OSError("the request's deadline passed")

        def connect(self):  # a new connection: TCP, and TLS for https (before request)
            self._watched()
            super().connect()
            # The TCP socket under any TLS (through an https proxy: TLS in TLS, whose wrapper
            # has no shutdown): what the timer cuts, kept even when http.client lets go of it.
            sock = self.sock
            while sock is not None and not hasattr(sock, "shutdown") and hasattr(sock, "socket"):
                sock = sock.socket
            self._deadline_socket = sock
            self._watched()  # the socket now exists: the timer can cut it

        def request(self, *args, **kwargs):  # every request, on a new or a kept-alive connection
            self._watched()
            return super().request(*args, **kwargs)

    class Http(Watched, HTTPConnection):
        pass

    class Https(Watched, HTTPSConnection):
        pass

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = Https

    return {"http": HttpPool, "https": HttpsPool}


class HttpClient:
    """urllib3 pool managers (one per proxy, and one without), shared by threads."""

    def __init__(self, maxsize=20, environ_proxies=True, ca_certs=None):
        """`ca_certs`: a CA bundle to trust instead of certifi's (a test's own CA)."""
        self._maxsize = maxsize
        self._environ_proxies = environ_proxies
        self._ca_certs = ca_certs
        self._managers = {}
        self._lock = threading.Lock()
        self._pool_classes = None

    def _manager(self, proxy):
        with self._lock:
            manager = self._managers.get(proxy)
            if manager is None:
                import certifi
                import urllib3

                if self._pool_classes is None:
                    self._pool_classes = _classes()
                options = {"num_pools": 16, "maxsize": self._maxsize, "retries": False,
                           "ca_certs": self._ca_certs or certifi.where()}
                manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                manager.pool_classes_by_scheme = self._pool_classes
                self._managers[proxy] = manager
        return manager

    def _proxy(self, scheme, host):
        """The proxy botocore would use for this URL (HTTPS_PROXY/HTTP_PROXY, NO_PROXY), or None."""
        if not self._environ_proxies or urllib.request.proxy_bypass(host):
            return None
        return urllib.request.getproxies().get(scheme)

    def idle_connections(self):
        """How many kept-alive connections wait in the pools (for tests and the restore hook's check)."""
        with self._lock:
            managers = list(self._managers.values())
        count = 0
        for manager in managers:
            for key in list(manager.pools.keys()):
                pool = manager.pools.get(key)
                queue = getattr(getattr(pool, "pool", None), "queue", None) or ()
                count += sum(1 for connection in list(queue) if connection is not None)
        return count

    def close(self):
        """Drop every pooled connection (after a SnapStart restore: no two copies share one)."""
        with self._lock:
            managers, self._managers = self._managers, {}
        for manager in managers.values():
            manager.clear()

    def request(self, method, url, *, body=None, headers=None, connect_timeout=2.0, read_timeout=5.0,
                max_bytes=DEFAULT_MAX_BYTES):
        """One request, one answer (status, headers, at most `max_bytes` + 1 bytes of body).
        A "host" header given is sent as it is (a signed request's), else the URL's.
        Raises HttpError."""
        import urllib3
        from urllib3.exceptions import HTTPError as Urllib3Error
        from urllib3.util import SKIP_HEADER, parse_url

        try:
            parsed = parse_url(url)
        except Urllib3Error:
            raise HttpError("InvalidURL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise HttpError("InvalidURL")
        # urllib3 frames the body itself (Content-Length of the bytes given): a caller's
        # framing headers are not sent, whatever a signature covers (the values are equal).
        sent = {"User-Agent": SKIP_HEADER, **{name: value for name, value in (headers or {}).items()
                                              if name.lower() not in ("content-length", "transfer-encoding")}}
        manager = self._manager(self._proxy(parsed.scheme, parsed.host))
        watch = _Watch()
        timer = threading.Timer(connect_timeout + 2 * read_timeout, watch.expire)
        timer.daemon = True
        _request_state.watch = watch
        timer.start()
        response = None
        try:
            response = manager.urlopen(method, url, body=body, headers=sent, redirect=False, retries=False,
                                       timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                       preload_content=False, decode_content=False)
            if (response.headers.get("Content-Encoding") or "identity").lower() != "identity":
                raise HttpError("compressed answer (never asked for)")
            data = response.read(max_bytes + 1, decode_content=False)
            length = response.length_remaining  # what Content-Length still promised, or None
            if length and len(data) <= max_bytes:
                raise HttpError("IncompleteRead (the answer ended before its Content-Length)")
            status, answer_headers = response.status, response.headers
        except HttpError:
            response.close()
            if watch.cut:
                raise HttpError("ReadTimeoutError (deadline: the answer came too slowly)") from None
            raise
        except (Urllib3Error, OSError, ValueError) as e:  # ValueError: a header http.client refuses
            if response is not None:
                response.close()
            raise HttpError("ReadTimeoutError (deadline: the answer came too slowly)" if watch.cut
                            else _kind(e)) from None
        finally:
            timer.cancel()
            _request_state.watch = None
        if watch.finish():  # cut: a close-delimited answer cut short reads as complete
            response.close()
            raise HttpError("ReadTimeoutError (deadline: the answer came too slowly)")
        if len(data) > max_bytes:
            response.close()  # not read to its end: the connection is not reused
        else:
            response.release_conn()
        return Answer(status, answer_headers, data)


def _kind(error):
    """urllib3's error class (and the cause's, for a wrapped one), never its message: that
    may hold the URL."""
    name = type(error).__name__
    reason = getattr(error, "reason", None) or getattr(error, "__context__", None)
    if name in ("MaxRetryError", "ProtocolError") and reason is not None:
        return f"{name} ({type(reason).__name__})"
    if isinstance(error, ValueError):
        return "InvalidHeader"
    return name
