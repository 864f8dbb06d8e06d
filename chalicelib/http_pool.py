"""The broker's one HTTP client for its own backend calls: HTTP/1.1 over kept-alive sockets.

Why not urllib3, requests or botocore's client machinery: on the issuance path every
call's CPU is the handler's CPU, and importing them is most of a cold start (issue 14,
docs/performance.md). Measured here, one small request and answer on a kept-alive
connection costs ~0.27 ms of CPU written straight to the socket, ~0.8 ms through
http.client, ~1.5 ms through urllib3. The broker's backends (AWS's APIs, Vault, STS)
speak plain HTTP/1.1, and the broker sends only small POST/GET requests with a
known body, so this module does just that, and refuses what it does not expect:

- explicit timeouts (connect; read, per socket read), no retries (each caller decides
  what may be sent twice), no redirects, no proxy or .netrc from the environment;
- and a deadline for the whole answer (connect + 2 x read timeouts from the request's
  start): the read timeout bounds each wait for bytes, so an answer dripped a byte at a
  time within it would otherwise hold the call for ever (past API Gateway's 29 s);
- TLS with hostname checks against certifi's roots (the bundle requests used) or the
  system's; TCP_NODELAY (a kept-alive request must not wait on Nagle);
- a kept-alive connection is reused only if the server has not closed it meanwhile
  (checked before each reuse), and only if the answer was read to its end;
- answers framed by Content-Length or chunked, or read to the close; at most
  `max_bytes` + 1 bytes are read (a caller that gets more knows it was oversized),
  at most 100 header lines of 64 KiB; a compressed answer (never asked for) is refused;
- header names and values with CR, LF or non-Latin-1 characters are refused before
  anything is sent (no header injection).
"""

import functools
import select
import socket
import threading
import time
from urllib.parse import urlsplit

DEFAULT_MAX_BYTES = 1 << 20
_MAX_LINE = 65536
_MAX_HEADERS = 100
_RECV_BYTES = 65536
_NO_BODY_STATUS = frozenset({204, 304})


class HttpError(Exception):
    """No usable answer: the connection, TLS, a timeout or the answer's framing failed.
    `kind` names which (never a secret)."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Headers(dict):
    """An answer's headers, their names lowercase; `get` ignores case."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class Answer:
    __slots__ = ("status", "headers", "data")

    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    def json(self):
        import json

        return json.loads(self.data) if self.data else None


class _SocketReader:
    """An answer's bytes from the socket, through one buffer: each wait bounded by the read
    timeout, and all of an answer's waits together by its deadline (set per request).
    A small answer comes in one recv; lines and bodies are cut from the buffer (a
    BufferedReader over a Python RawIOBase cost a Python call per readline)."""

    __slots__ = ("sock", "buffer", "read_timeout", "deadline")

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.read_timeout = None
        self.deadline = None

    def _fill(self):
        """Append what the socket has (waiting for at least a byte); False at its end."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise HttpError("ReadTimeoutError (deadline: the answer came too slowly)")
            _set_timeout(self.sock, min(self.read_timeout, left))
        data = self.sock.recv(_RECV_BYTES)
        if not data:
            return False
        self.buffer += data
        return True

    def line(self):
        """One line with its "\n"; at the stream's end what is left (b"" if nothing)."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                if end >= _MAX_LINE:
                    raise HttpError("ProtocolError (line too long)")
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > _MAX_LINE:
                raise HttpError("ProtocolError (line too long)")
            if not self._fill():
                line = bytes(self.buffer)
                self.buffer.clear()
                return line

    def read(self, size):
        """`size` bytes, or fewer when the stream ends first."""
        while len(self.buffer) < size and self._fill():
            pass
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _set_timeout(sock, timeout):
    """socket.settimeout only when the timeout changes: each call is a system call that lets
    go of the GIL, and getting it back waits for whichever thread took it meanwhile (the
    pipeline's other calls). A kept-alive connection keeps its read timeout between requests."""
    if sock.gettimeout() != timeout:
        sock.settimeout(timeout)


class _Connection:
    __slots__ = ("sock", "reader", "generation")

    def __init__(self, sock, generation):
        self.sock = sock
        self.reader = _SocketReader(sock)
        self.generation = generation

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def dropped(self):
        """True when the server closed the idle connection (or sent something unasked)."""
        if self.reader.buffer or (hasattr(self.sock, "pending") and self.sock.pending()):
            return True  # bytes past the last answer (here or in TLS's buffer): not ours to read as the next one
        try:
            poller = select.poll()  # not select.select: no limit on the descriptor's number
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class Pools:
    """Kept-alive connections per (scheme, host, port), shared by threads: each request
    takes one to itself and gives it back when its answer was read to the end."""

    def __init__(self, maxsize=20):
        self._maxsize = maxsize
        self._idle = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._tls = None

    # ---- connections ---------------------------------------------------------------

    def _tls_context(self):
        if self._tls is None:
            import ssl

            try:
                import certifi  # the CA bundle requests used, so TLS trusts the same roots

                context = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                context = ssl.create_default_context()
            self._tls = context
        return self._tls

    def _take(self, key):
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if not connection.dropped():
                    return connection
                connection.close()
            generation = self._generation
        return self._connect(key, generation)

    def _connect(self, key, generation):
        scheme, host, port, connect_timeout = key[0], key[1], key[2], key[3]
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except socket.timeout:
            raise HttpError("ConnectTimeoutError") from None
        except OSError as e:
            raise HttpError(f"NewConnectionError ({type(e).__name__})") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls_context().wrap_socket(sock, server_hostname=host)
        except socket.timeout:
            sock.close()
            raise HttpError("ConnectTimeoutError") from None
        except OSError as e:  # ssl.SSLError is an OSError: a bad certificate, a failed handshake
            sock.close()
            raise HttpError(f"SSLError ({type(e).__name__})" if "SSL" in type(e).__name__
                            else f"NewConnectionError ({type(e).__name__})") from None
        return _Connection(sock, generation)

    def _give_back(self, key, connection):
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if connection.generation == self._generation and len(idle) < self._maxsize:
                idle.append(connection)
                return
        connection.close()

    def close(self):
        """Drop every pooled connection (after a SnapStart restore: no two copies share one);
        connections in use now are closed when their request ends."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # ---- one request ---------------------------------------------------------------

    def request(self, method, url, *, body=None, headers=None, connect_timeout=2.0, read_timeout=5.0,
                max_bytes=DEFAULT_MAX_BYTES):
        """One request, one answer (status, headers, at most `max_bytes` + 1 bytes of body).
        A "host" header given is sent as it is (a signed request's), else the URL's.
        Raises HttpError."""
        scheme, hostname, port, netloc, target = _split(url)
        payload = _request_bytes(method, target, netloc, headers or {}, body)
        key = (scheme, hostname, port, connect_timeout)
        connection = self._take(key)
        reusable = False
        try:
            _set_timeout(connection.sock, read_timeout)
            connection.reader.read_timeout = read_timeout
            connection.reader.deadline = time.monotonic() + connect_timeout + 2 * read_timeout
            connection.sock.sendall(payload)
            status, answer_headers, data, reusable = _read_answer(connection.reader, method, max_bytes)
            return Answer(status, answer_headers, data)
        except socket.timeout:
            raise HttpError("ReadTimeoutError") from None
        except HttpError:
            raise
        except OSError as e:
            raise HttpError(f"ProtocolError ({type(e).__name__})") from None
        finally:
            if reusable:
                self._give_back(key, connection)
            else:
                connection.close()


@functools.lru_cache(maxsize=256)  # a handful of backends, asked again and again
def _split(url):
    """(scheme, hostname, port, netloc, target) of an http(s) URL; HttpError if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise HttpError("InvalidURL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError("InvalidURL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), parts.netloc, target


def _request_bytes(method, target, netloc, headers, body):
    lines = [f"{method} {target} HTTP/1.1"]
    names = {name.lower() for name in headers}
    if "host" not in names:
        lines.append(f"Host: {netloc}")
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("content-length", "transfer-encoding", "connection"):
            continue  # framing is this module's
        value = str(value)
        if "\r" in name or "\n" in name or ":" in name or "\r" in value or "\n" in value:
            raise HttpError("InvalidHeader")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise HttpError("InvalidHeader") from None
    return head + (body or b"")


def _read_answer(reader, method, max_bytes):
    """(status, headers, body, whether the connection may serve another request)."""
    while True:
        status_line = reader.line()
        if not status_line:
            raise HttpError("ProtocolError (RemoteDisconnected)")
        version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        # three ASCII digits, then a space or the line's end ("2000" is no 200)
        if not version.startswith("HTTP/1.") or len(code) != 3 or not ascii_digits(code) or rest[3:4] not in ("", " "):
            raise HttpError("ProtocolError (not HTTP/1.x)")
        status = int(code)
        headers = _read_headers(reader)
        if not 100 <= status < 200:
            break  # an informational answer (100 Continue) is followed by the real one
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise HttpError("ProtocolError (compressed answer)")
    if method == "HEAD" or status in _NO_BODY_STATUS:
        return status, headers, b"", keep_alive
    coding = headers.get("transfer-encoding")
    if coding is not None and coding.strip().lower() != "chunked":
        raise HttpError("ProtocolError (transfer coding)")  # "gzip, chunked": a coded body read as plain
    if coding is not None:
        data, complete = _read_chunked(reader, max_bytes)
        # both framings: which one the server meant is unknown, the connection is not reused
        return status, headers, data, keep_alive and complete and "content-length" not in headers
    length = headers.get("content-length")
    if length is not None:
        if not ascii_digits(length.strip()):
            raise HttpError("ProtocolError (bad Content-Length)")
        length = int(length)
        data = reader.read(min(length, max_bytes + 1))
        if len(data) < min(length, max_bytes + 1):
            raise HttpError("ProtocolError (IncompleteRead)")
        return status, headers, data, keep_alive and length <= max_bytes
    return status, headers, reader.read(max_bytes + 1), False  # framed by the close


def ascii_digits(text, longest=18):
    """1 to `longest` ASCII digits. str.isdigit() alone takes "²", and int() of more than
    4,300 digits raises: a ValueError out of a parser (a 500), not a named error."""
    return 0 < len(text) <= longest and text.isascii() and text.isdigit()


def _read_headers(reader):
    headers = Headers()
    for _ in range(_MAX_HEADERS + 1):
        line = reader.line()
        if line == b"\r\n" or line == b"\n":
            return headers
        if not line:
            raise HttpError("ProtocolError (RemoteDisconnected)")
        name, sep, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise HttpError("ProtocolError (bad header line)")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise HttpError("ProtocolError (too many headers)")


def _read_chunked(reader, max_bytes):
    """(body, read to its end). Stops after max_bytes + 1 bytes."""
    chunks, size = [], 0
    while True:
        size_line = reader.line().split(b";", 1)[0].strip()
        # hex digits only: int(x, 16) also takes "-2" (a negative read), "0x2", "+2" and "1_0"
        if not 0 < len(size_line) <= 16 or size_line.strip(b"0123456789abcdefABCDEF"):
            raise HttpError("ProtocolError (bad chunk size)")
        chunk = int(size_line, 16)
        if chunk == 0:
            _read_headers(reader)  # trailers, up to the blank line
            return b"".join(chunks), True
        wanted = min(chunk, max_bytes + 1 - size)
        data = reader.read(wanted)
        if len(data) < wanted:
            raise HttpError("ProtocolError (IncompleteRead)")
        chunks.append(data)
        size += len(data)
        if size > max_bytes:
            return b"".join(chunks), False
        if reader.read(2) != b"\r\n":
            raise HttpError("ProtocolError (bad chunk end)")
