"""chalicelib/http_client.py against real sockets: a local server that answers byte for byte
as scripted (framing, kept-alive reuse, a server that closes, hostile answers) and a local
TLS server whose certificate the broker must not trust."""

import socket
import ssl
import threading
import time

import pytest

from chalicelib.http_client import HttpError, HttpClient


class RawServer:
    """Accepts connections; answers each request with the next scripted bytes (or closes)."""

    def __init__(self, tls_context=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.answers, self.requests, self.connections = [], [], 0
        self.tls = tls_context
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + reader.read(length))
                if not self.answers:  # unscripted: never answer (a timeout test)
                    time.sleep(1)
                    return
                answer = self.answers.pop(0)
                if answer is None:  # close without answering
                    conn.close()
                    return
                if callable(answer):  # scripted in time (a stall, a trickle): it answers itself
                    answer(conn)
                    continue
                conn.sendall(answer)
                if b"connection: close" in answer.lower():
                    conn.close()
                    return
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    s = RawServer()
    yield s
    s.close()


def _ok(body=b"{}", extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


def test_kept_alive_connections_are_reused_and_requests_are_framed(server):
    pools = HttpClient()
    server.answers += [_ok(b'{"a":1}'), _ok(b'{"b":2}')]
    first = pools.request("POST", server.url, body=b'{"x":1}', headers={"X-Amz-Target": "T.Op"})
    second = pools.request("POST", server.url, body=b"{}")
    assert (first.json(), second.json()) == ({"a": 1}, {"b": 2}) and server.connections == 1
    assert server.requests[0].startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1")
    assert b"X-Amz-Target: T.Op\r\n" in server.requests[0] and server.requests[0].endswith(b'\r\n\r\n{"x":1}')
    assert b"User-Agent" not in server.requests[0]
    assert first.headers.get("CONTENT-LENGTH") == "7"


def test_a_given_host_header_is_sent_as_it_is_once(server):
    HttpClient().request("POST", server.url, body=b"", headers={"Host": "sts.amazonaws.com", "Content-Length": "99"}) \
        if server.answers.append(_ok()) is None else None
    [request] = server.requests
    assert request.count(b"Host:") == 1 and b"Host: sts.amazonaws.com\r\n" in request
    assert b"Content-Length: 0\r\n" in request and b"99" not in request  # framing is urllib3's own


def test_chunked_answers_and_answers_framed_by_the_close(server):
    pools = HttpClient()
    server.answers.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n")
    assert pools.request("GET", server.url).data == b"Wikipedia"
    server.answers.append(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    assert pools.request("GET", server.url).data == b"until the end"
    assert server.connections == 1  # the chunked answer's connection served the second request
    server.answers.append(_ok())
    pools.request("GET", server.url)
    assert server.connections == 2  # the HTTP/1.0 one was not kept


def test_a_connection_the_server_closed_while_idle_is_not_reused(server):
    pools = HttpClient()
    server.answers += [_ok(extra=b"Connection: close\r\n"), _ok()]
    pools.request("GET", server.url)
    time.sleep(0.1)
    assert pools.request("GET", server.url).status == 200 and server.connections == 2


def test_oversized_answers_stop_at_the_bound_and_the_connection_is_dropped(server):
    pools = HttpClient()
    server.answers += [_ok(b"x" * 5000),
                       b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"y" * 4096 + b"\r\n0\r\n\r\n",
                       _ok()]
    assert len(pools.request("GET", server.url, max_bytes=1000).data) == 1001
    assert len(pools.request("GET", server.url, max_bytes=100).data) == 101
    assert pools.request("GET", server.url).status == 200
    assert server.connections == 3  # each oversized answer's connection was closed, unread bytes and all


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    None,
])
def test_hostile_or_broken_answers_are_named_errors(server, answer):
    """Not HTTP, cut short, compressed, too many or too long headers, a bad chunk size, a
    close without an answer: an HttpError naming urllib3's error, never a stray exception."""
    server.answers.append(answer)
    with pytest.raises(HttpError) as failed:
        HttpClient().request("POST", server.url, body=b"{}", read_timeout=1)
    assert failed.value.kind and "127.0.0.1" not in failed.value.kind


@pytest.mark.parametrize("headers", [{"X-A": "a\r\nX-Injected: 1"}, {"X-A\r\nX-B": "1"}, {"X-A": "snowman \u2603"}])
def test_header_injection_is_refused_before_anything_is_sent(server, headers):
    with pytest.raises(HttpError, match="InvalidHeader"):
        HttpClient().request("POST", server.url, body=b"", headers=headers)
    assert server.requests == []


def test_timeouts_and_refused_connections_are_named(server):
    with pytest.raises(HttpError, match="ReadTimeoutError"):
        HttpClient().request("GET", server.url, read_timeout=0.2)  # no answer scripted: the server waits
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(HttpError, match="NewConnectionError"):
        HttpClient().request("GET", f"http://127.0.0.1:{port}/")
    with pytest.raises(HttpError, match="InvalidURL"):
        HttpClient().request("GET", "file:///etc/passwd")


def test_close_drops_the_idle_connections(server):
    pools = HttpClient()
    server.answers += [_ok(), _ok()]
    pools.request("GET", server.url)
    pools.close()
    pools.request("GET", server.url)
    assert server.connections == 2


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server with a self-signed certificate for 127.0.0.1 (not in any trusted bundle)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    s = RawServer(context)
    s.cert_path = tmp_path / "cert.pem"
    yield s
    s.close()


def test_tls_checks_the_certificate_and_serves_when_it_is_trusted(tls_server):
    tls_server.answers.append(_ok(b'{"ok":true}'))
    with pytest.raises(HttpError, match="SSL"):
        HttpClient().request("GET", tls_server.url)  # self-signed: not trusted
    trusting = HttpClient(ca_certs=str(tls_server.cert_path))
    assert trusting.request("GET", tls_server.url).json() == {"ok": True}


def _stalls_after(sent):
    """An answer that sends `sent`, then nothing more (a backend stalled mid-answer)."""
    def answer(conn):
        conn.sendall(sent)
        time.sleep(3)
    return answer


def _trickles(body_size):
    """An answer whose body comes a byte every 0.1 s: each wait is short, the whole is slow."""
    def answer(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(body_size).encode() + b"\r\n\r\n")
        for _ in range(body_size):
            time.sleep(0.1)
            conn.sendall(b"x")
    return answer


def _trusting(s):
    return HttpClient(ca_certs=str(s.cert_path)) if s.tls else HttpClient()


@pytest.fixture(params=["plain", "tls"])
def any_server(request):
    if request.param == "plain":
        yield request.getfixturevalue("server")
    else:
        yield request.getfixturevalue("tls_server")


@pytest.mark.parametrize("reused", [False, True], ids=["new", "kept-alive"])
@pytest.mark.parametrize("stall", ["head", "body"])
def test_a_backend_that_stalls_mid_answer_times_out(any_server, reused, stall):
    """Each read keeps its read timeout, on a new connection and on a kept-alive one (whose
    timeout the previous answer's last read may have lowered, or left as it is)."""
    pools = _trusting(any_server)
    if reused:
        any_server.answers.append(_ok(b'{"n":1}'))
        assert pools.request("GET", any_server.url, read_timeout=0.4).json() == {"n": 1}
    sent = b"HTTP/1.1 200 OK\r\nContent-" if stall == "head" else b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"n\""
    any_server.answers.append(_stalls_after(sent))
    started = time.monotonic()
    with pytest.raises(HttpError, match="ReadTimeoutError"):
        pools.request("GET", any_server.url, read_timeout=0.4)
    assert 0.3 < time.monotonic() - started < 2.0
    assert any_server.connections == 1


@pytest.mark.parametrize("reused", [False, True], ids=["new", "kept-alive"])
def test_an_answer_that_trickles_in_is_given_up_at_its_deadline(any_server, reused):
    """Every byte comes within the read timeout, the whole answer doesn't: the per-answer
    deadline (connect + 2 x read timeout = 0.7 s here) still stops it."""
    pools = _trusting(any_server)
    if reused:
        any_server.answers.append(_ok(b'{"n":1}'))
        pools.request("GET", any_server.url, connect_timeout=0.1, read_timeout=0.3)
    any_server.answers.append(_trickles(30))  # 3 s in all
    started = time.monotonic()
    with pytest.raises(HttpError, match="ReadTimeoutError"):
        pools.request("GET", any_server.url, connect_timeout=0.1, read_timeout=0.3)
    assert 0.5 < time.monotonic() - started < 1.5
    assert any_server.connections == 1


def test_the_environments_proxy_is_used_as_botocore_uses_it_and_no_proxy_bypasses_it(server, monkeypatch):
    """HTTP_PROXY/HTTPS_PROXY and NO_PROXY, read by the standard library as botocore reads
    them: a request for a host not bypassed goes to the proxy (absolute URI); a bypassed
    one does not."""
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
    server.answers.append(_ok(b'{"via":"proxy"}'))
    assert HttpClient().request("GET", "http://sts.example.invalid/x").json() == {"via": "proxy"}
    assert server.requests[0].startswith(b"GET http://sts.example.invalid/x HTTP/1.1")
    with pytest.raises(HttpError):  # bypassed: asked directly, and the name does not resolve
        HttpClient().request("GET", "http://bypassed.invalid/", connect_timeout=1)
    assert len(server.requests) == 1
    assert HttpClient(environ_proxies=False)._proxy("http", "sts.example.invalid") is None


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n",  # http.client lets go of the socket
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # framed by the close: no length at all
])
def test_an_answer_that_closes_its_connection_is_still_cut_at_its_deadline(head):
    """Once an answer that closes the connection has its headers, http.client sets the
    connection's socket to None (the response holds it): the deadline still cuts it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        try:
            conn.recv(65536)
            conn.sendall(head)
            for _ in range(40):
                time.sleep(0.3)
                conn.sendall(b"x")
        except OSError:
            pass
        finally:
            conn.close()

    import threading

    threading.Thread(target=serve, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(HttpError, match="deadline"):
            HttpClient().request("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/",
                                 connect_timeout=0.5, read_timeout=1.0)  # the deadline: 2.5 s
        assert time.monotonic() - started < 6  # the drip alone would take 12 s
    finally:
        listener.close()
