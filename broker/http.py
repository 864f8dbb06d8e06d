"""The client's one HTTP helper (standard library only): an opener that never follows
redirects, a request with a size-capped answer, JSON POST, and the URL rules.

Every HTTP call of the client goes through here: the broker (login, incidents, the
security routes), Vault and OpenBao, the GCE metadata server and the ECS task
metadata endpoint. A redirect is never followed: it would resend a proof, a
wrapping token or a Vault token somewhere else.

Each request is bounded as a whole by its ``timeout``: connect, headers and body. A socket
timeout alone bounds each read, so a server that drips one byte per second would hold the
request for as long as it likes; a timer shuts the connection's socket down at the deadline
(:class:`_Deadline`), and whatever was read by then is not an answer (:class:`RequestTimedOut`).
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import functools
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from broker import __version__
from broker.errors import UsageError

USER_AGENT = f"secret-zero-broker-client/{__version__}"
MAX_RESPONSE_BYTES = 1 << 20
# What a connection failure raises: urllib's URLError (an OSError), timeouts, broken HTTP.
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


class AnswerTooLarge(OSError):
    """The answer's body is larger than the cap. An OSError, so that callers that treat it as a
    connection failure keep doing so; the broker login tells it apart: the request was sent, and
    a proof was spent, so it is not retried."""


class RequestTimedOut(TimeoutError):
    """No complete answer within the request's timeout (connect, headers and body together)."""


class _Deadline:
    """Shuts a request's socket down when its time is up, wherever the request then is."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv() returns at once; the owner closes it
    except OSError:
        pass


def _bounded(connection_class: type, deadline: Optional[_Deadline]):
    """``connection_class`` whose sockets are handed to ``deadline`` as soon as they are connected
    (before TLS: shutting the raw socket down ends the handshake and the reads above it too)."""
    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection_class(*args, **kwargs)
        if deadline is not None:
            create = conn._create_connection  # socket.create_connection, as http.client uses it

            def create_and_attach(*a: Any, **kw: Any) -> socket.socket:
                sock = create(*a, **kw)
                deadline.attach(sock)
                return sock

            conn._create_connection = create_and_attach
        return conn
    return make


class _BoundedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):  # noqa: D102
        return self.do_open(_bounded(http.client.HTTPConnection, getattr(req, "deadline", None)), req)


class _BoundedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):  # noqa: D102
        return self.do_open(_bounded(http.client.HTTPSConnection, getattr(req, "deadline", None)), req,
                            context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the 3xx answer is returned as it is."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and a literal loopback address (``127.0.0.0/8``, ``::1``). Any other
    name is not loopback, whatever it resolves to: ``127.0.0.1.example.com`` is a DNS name."""
    host = (host or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(url: str) -> bool:
    """True for http(s)://localhost, http(s)://127.x.x.x and http(s)://[::1] URLs (see
    :func:`is_loopback_host`)."""
    return is_loopback_host(urlsplit(url).hostname or "")


def check_base_url(url: Optional[str], what: str, *, allow_http_loopback: bool = True) -> str:
    """``url`` without a trailing slash, after checking it is an absolute URL without
    credentials, query or fragment, and ``https://`` (``http://`` only on loopback, when
    ``allow_http_loopback``). Raises UsageError naming ``what``."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"the {what} must be an absolute https URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"the {what} must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not (allow_http_loopback and is_loopback(url or "")):
        where = "" if allow_http_loopback else " (even on loopback, unless allowed)"
        raise UsageError(f"the {what} {url} is not https{where}: credentials would cross the network in clear")
    return (url or "").rstrip("/")


def ssl_context(cafile: Optional[str], what: str) -> Optional[ssl.SSLContext]:
    """A TLS context trusting ``cafile`` (None: the system's CAs)."""
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the CA bundle for {what} from {cafile}: {exc}") from None


def build_opener(ssl_context: Optional[ssl.SSLContext] = None, url: str = "", *,
                 proxies: bool = True) -> urllib.request.OpenerDirector:
    """An opener that never follows redirects. It honours HTTP(S)_PROXY / NO_PROXY like most
    clients, except for a loopback ``url`` or ``proxies=False`` (metadata endpoints)."""
    handlers: list = [_NoRedirect(), _BoundedHTTPHandler(), _BoundedHTTPSHandler(context=ssl_context)]
    if not proxies or (url and is_loopback(url)):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8")) if self.body else None
        except (UnicodeDecodeError, ValueError):
            return None


def request(opener: urllib.request.OpenerDirector, method: str, url: str, *, timeout: float,
            data: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None,
            max_bytes: int = MAX_RESPONSE_BYTES) -> HttpResult:
    """Send one request; return the status, lower-cased headers and body of any answer.

    The whole request (connect, headers, body) takes at most ``timeout`` seconds (an opener of
    :func:`build_opener`). Raises one of ``CONNECTION_ERRORS`` on connection failures,
    :class:`RequestTimedOut` (an OSError) when the time is up, and :class:`AnswerTooLarge` (an
    OSError too) when the body is larger than ``max_bytes``; HTTP error statuses are returned, not raised.
    """
    all_headers = {"User-Agent": USER_AGENT}
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    deadline = _Deadline(timeout)
    req.deadline = deadline  # type: ignore[attr-defined] - read by the opener's connection handlers
    timed_out = RequestTimedOut(f"no complete answer from {urlsplit(url).netloc} within {timeout:g} s")
    with deadline:
        try:
            try:
                response = opener.open(req, timeout=timeout)
            except urllib.error.HTTPError as err:
                response = err
            with response:
                body = response.read(max_bytes + 1)
                status = response.status if hasattr(response, "status") else response.code
                resp_headers = {k.lower(): v for k, v in response.headers.items()} if response.headers else {}
        except CONNECTION_ERRORS:
            if deadline.expired:
                raise timed_out from None
            raise
    if deadline.expired:  # the socket was shut down: what was read is cut short, not an answer
        raise timed_out
    if len(body) > max_bytes:
        raise AnswerTooLarge(f"the answer from {urlsplit(url).netloc} (HTTP {status}) is larger than "
                             f"{max_bytes} bytes")
    return HttpResult(status=status, headers=resp_headers, body=body)


def post_json(opener: urllib.request.OpenerDirector, url: str, payload: Optional[Dict[str, Any]], *,
              timeout: float, headers: Optional[Dict[str, str]] = None) -> HttpResult:
    """POST a JSON body (``{}`` for None); see :func:`request`."""
    data = json.dumps(payload if payload is not None else {}).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    all_headers.update(headers or {})
    return request(opener, "POST", url, timeout=timeout, data=data, headers=all_headers)


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_tls_verification_failure(exc: BaseException) -> bool:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ssl.SSLCertVerificationError)


def describe_connection_error(exc: BaseException) -> str:
    """A short, secret-free description of a connection failure."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, RequestTimedOut):
        return f"timed out ({reason})"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return "its name does not resolve"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def one_line(text: str, limit: int) -> str:
    """``text`` on one line: control and other unprintable characters (terminal escapes, CR)
    become spaces, runs of spaces one, and it is cut at ``limit`` characters."""
    text = "".join(c if c.isprintable() else " " for c in str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


BROKER_MESSAGE_LIMIT = 300


def broker_error_fields(result: HttpResult):
    """(code, message, request_id) from a broker error answer, tolerating non-JSON bodies; each one
    line of printable characters, the message at most 300 of them (the output scrubber then removes
    any secret it echoes)."""
    code, message, request_id = f"http_{result.status}", "", None
    data = result.json()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
        elif isinstance(data.get("message"), str):  # API Gateway's own errors
            message = data["message"]
        if isinstance(data.get("request_id"), str):
            request_id = data["request_id"]
    if request_id is None:
        request_id = result.headers.get("x-request-id") or result.headers.get("x-amzn-requestid")
    # All three came from the broker (or whoever answers in its place): printable, one line, short.
    code = one_line(code, 64) or f"http_{result.status}"
    if request_id is not None:
        request_id = one_line(request_id, 128) or None
    return (code, one_line(message, BROKER_MESSAGE_LIMIT) or http.client.responses.get(result.status, ""),
            request_id)
