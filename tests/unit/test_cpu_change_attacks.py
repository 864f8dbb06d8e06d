"""Red team of the handler CPU change (commit 58562b9): the C XML parser behind a "<!" and
UTF-8 check (chalicelib/safe_xml.py), the HTTP client's framing (chalicelib/http_client.py),
cache hits handed to `settle` as Ready (role tags, trust policies, shared quarantine
reads), the cached ARN parse and SigV4 signing keys.

Every attack is tried for real: documents fed to the parser, answers scripted byte for
byte on a socket (and to botocore's parsers in place of the network). The rule: a 2xx is read
only when it is the operation's own answer; anything else is a named error (the broker's
503), never "empty" and never a stray exception (a 500).
"""

import socket
import threading
import time
from dataclasses import FrozenInstanceError

import pytest

from chalicelib import safe_xml
from chalicelib.concurrency import Ready, raise_first, settle
from chalicelib.errors import InvalidProof, Quarantined, Unavailable
from chalicelib.http_client import HttpError, HttpClient
from chalicelib.stores.memory import MemoryQuarantineList
from chalicelib.stores.quarantine import RecentReads, quarantine_key
from tests.unit.test_http_client import RawServer, tls_server  # noqa: F401 (tls_server: the fixture)
from tests.unit.test_aws_answers_unit import Scripted

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
XXE = b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
LAUGHS = (b'<!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;&l;&l;&l;&l;&l;&l;">'
          b'<!ENTITY l3 "&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;">]><a>&l3;</a>')


def _declared(encoding, body):
    return f'<?xml version="1.0" encoding="{encoding}"?>'.encode("ascii") + body


@pytest.mark.parametrize("document", [XXE, LAUGHS, b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>',
                                      b'<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><a/>'])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be", "latin-1", "cp037", "cp500", "utf-7"])
@pytest.mark.parametrize("declared", [False, True])
def test_a_dtd_is_refused_in_every_encoding_with_or_without_its_declaration(document, encoding, declared):
    name = encoding.replace("-sig", "")
    text = (f'<?xml version="1.0" encoding="{name}"?>' if declared else "") + document.decode("ascii")
    data = text.encode(encoding)
    for namespaces in (True, False):
        assert safe_xml.parse(data, namespaces=namespaces) is None
        if encoding == "utf-8":
            assert safe_xml.parse(text, namespaces=namespaces) is None  # the text itself, not only bytes


@pytest.mark.parametrize("encoding", ["UTF-7", "ISO-8859-1", "cp037", "UTF-16", "x-no-such-codec"])
def test_an_encoding_declaration_never_changes_how_the_bytes_read(encoding):
    """The bytes are read as UTF-8 whatever the declaration says: UTF-7's "+ADw-!" is only
    text, never a "<!" (expat ignores the declaration when told the encoding)."""
    root = safe_xml.parse(_declared(encoding, b"<a>+ADw-!DOCTYPE a +AFs- +AF0-+AD4-</a>"))
    assert root is not None and root.tag == "a" and root.text == "+ADw-!DOCTYPE a +AFs- +AF0-+AD4-"
    latin = _declared(encoding, "<a>é</a>".encode("latin-1"))  # latin-1 bytes: not UTF-8, refused
    assert safe_xml.parse(latin) is None


@pytest.mark.parametrize("document", [
    b'<?xml-stylesheet href="<!DOCTYPE"?><a/>',  # "<!" in a processing instruction
    b'<a><!-- a comment --></a>', b'<a><![CDATA[x]]></a>',
    b'<a>&undeclared;</a>', b'<a>&#0;</a>', b'<a>\x00</a>', b'<a>x</a>\x00',
    b'<a/><b/>', b'<a/>trailing', b'', b'   ', b'<a>', b'\xff\xfe<\x00a\x00/\x00>\x00',
    b'<p:a><b/></p:a>',  # an unbound prefix
    b'<html><body><p>Sign in<br></p></body></html>',  # a captive portal's HTML, not XML
])
def test_what_aws_never_sends_is_refused_not_read_as_empty(document):
    assert safe_xml.parse(document) is None and safe_xml.parse(document, namespaces=False) is None


def test_processing_instructions_and_character_references_do_not_change_the_fields():
    root = safe_xml.parse(b'<?xml version="1.0"?><?pi x?><A xmlns="urn:x"><?pi <Arn>?><Arn>r&#60;!x&#x3E;</Arn></A>',
                          namespaces=False)
    assert [(e.tag, e.text) for e in root] == [("Arn", "r<!x>")]


def test_huge_documents_within_the_cap_parse_or_refuse_without_a_crash():
    cap = 1 << 20
    deep = b"<a>" * 140000 + b"</a>" * 140000
    wide = b"<a>" + b"<member/>" * 110000 + b"</a>"
    attrs = b"<a " + b" ".join(b'a%d="1"' % i for i in range(90000)) + b"/>"
    prefixes = b"<a " + b" ".join(b'xmlns:p%d="urn:%d"' % (i, i) for i in range(40000)) + b"><p7:b/></a>"
    for document in (deep, wide, attrs, prefixes):
        assert len(document) <= cap
        root = safe_xml.parse(document, namespaces=False)
        assert root is not None and root.tag == "a"
    assert safe_xml.parse(b'<a x="1" x="2"/>') is None  # a repeated attribute


# ---- the STS forward's answer ------------------------------------------------------------

def test_an_sts_answer_with_a_dtd_or_a_foreign_root_is_unavailable_not_an_identity():
    from chalicelib.methods.aws import proof

    arn = "arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0"
    good = (f'<GetCallerIdentityResponse xmlns="{proof.STS_NS[1:-1]}"><GetCallerIdentityResult><Arn>{arn}</Arn>'
            f'<UserId>AROAX:i-0123456789abcdef0</UserId><Account>123456789012</Account></GetCallerIdentityResult>'
            f'</GetCallerIdentityResponse>')
    assert proof._parse_xml(good.encode()).find(proof.STS_NS + "GetCallerIdentityResult") is not None
    for hostile in (good.replace("<GetCallerIdentityResponse", '<!DOCTYPE x [<!ENTITY a "b">]><GetCallerIdentityResponse', 1),
                    good.replace(proof.STS_NS[1:-1], "urn:not-sts")):
        root = proof._parse_xml(hostile.encode())
        assert root is None or root.tag != proof.STS_NS + "GetCallerIdentityResponse"


# ---- the HTTP client: framing -------------------------------------------------------------

@pytest.fixture
def raw():
    s = RawServer()
    yield s
    s.close()


def _get(s, **kw):
    return HttpClient().request("GET", s.url, connect_timeout=kw.pop("connect_timeout", 1.0),
                           read_timeout=kw.pop("read_timeout", 1.0), **kw)


@pytest.mark.parametrize("answer,kind", [
    # str.isdigit() takes "²" and int() raised a ValueError: a 500
    ("HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nab".encode("latin-1"), "bad Content-Length"),
    ("HTTP/1.1 \u00b200 OK\r\nContent-Length: 0\r\n\r\n".encode("latin-1"), "not HTTP"),
    # int() of more than 4,300 digits raises too
    (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nab", "bad Content-Length"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "not HTTP"),  # read as 200 before
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "not HTTP"),
    # int(x, 16) takes a sign, "0x" and "_": "-2" was a negative read
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nabcd\r\n0\r\n\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\nab", "bad chunk size"),
    # a transfer coding other than chunked: a coded body read as plain before
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", "line too long"),
    (b"HTTP/1.1 200 OK" + b"a" * 70000, "line too long"),  # no line end at all
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\nabc", "IncompleteRead"),
])
def test_hostile_framing_is_a_named_error_never_a_stray_exception(raw, answer, kind):
    """`kind`: what is wrong with the answer. http.client (through urllib3) refuses some at
    once and reads others to the close (then the deadline): an HttpError either way, never
    a stray exception (a 500). (http.client reads a chunk size of "0x2", "+2" or "0_2" as
    2, and headers cut by the close as ended: the server's own body, which the callers
    check as any other: an STS answer must parse, an issuer's keys must be keys.)"""
    raw.answers.append(answer)
    with pytest.raises(HttpError):
        _get(raw, read_timeout=0.5)


def test_informational_answers_are_never_read_as_the_answer(raw):
    """http.client skips a 100 Continue; a 102 is an answer that is not a 200 (its callers
    refuse it: STS's and an issuer's keys need a 200)."""
    raw.answers.append(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = _get(raw)
    assert answer.status == 102 and answer.data == b""


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",  # extra bytes pipelined after a whole answer
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nok",  # a Content-Length shorter than the body
    b"HTTP/1.1 204 No Content\r\n\r\nok",  # a body where none may be
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
])
def test_bytes_past_an_answer_are_never_read_as_the_next_requests_answer(raw, first):
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
    raw.answers += [first + forged, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine"]
    pools = HttpClient()
    pools.request("GET", raw.url, connect_timeout=1, read_timeout=1)
    # the unasked bytes, buffered with the first answer, are dropped with its response
    assert pools.request("GET", raw.url, connect_timeout=1, read_timeout=1).data == b"mine"


def test_bytes_arriving_after_an_answer_are_never_read_as_the_next_answer():
    """The unasked bytes come later than the answer (another TCP segment): seen by the
    check before reuse, not read as the second request's answer."""
    def serve(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.2)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED")
        time.sleep(2)

    listener, port, connections = _listen(serve)
    try:
        pools = HttpClient()
        url = f"http://127.0.0.1:{port}/"
        assert pools.request("GET", url, connect_timeout=1, read_timeout=1).data == b"ok"
        time.sleep(0.4)
        # a new connection's own answer, never the unasked FORGED one the first left behind
        assert pools.request("GET", url, connect_timeout=1, read_timeout=1).data == b"ok"
        assert len(connections) == 2
    finally:
        listener.close()


def _listen(serve):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    connections = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=_quietly, args=(serve, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1], connections


def _quietly(serve, conn):
    try:
        serve(conn)
    except OSError:
        pass
    finally:
        conn.close()


def test_both_framings_answer_once_and_the_connection_is_not_reused(raw):
    raw.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine"]
    pools = HttpClient()
    assert pools.request("GET", raw.url, connect_timeout=1, read_timeout=1).data == b"ok"
    assert pools.request("GET", raw.url, connect_timeout=1, read_timeout=1).data == b"mine"


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/", "http://127.0.0.1:x/", "http://127.0.0.1: 80/",
                                 "http://127.0.0.1:+80/", "http://127.0.0.1:\uff18\uff10/", "ftp://127.0.0.1/",
                                 "http:///path", "127.0.0.1:80", "http://[::1/"])
def test_bad_urls_are_invalid_every_time_the_cache_is_asked(url):
    for _ in range(2):  # an exception is not cached as an answer, nor an answer for it
        with pytest.raises(HttpError, match="InvalidURL"):
            HttpClient().request("GET", url, connect_timeout=0.2, read_timeout=0.2)


class _Clocks:
    wall, mono = 1_800_000_000.0, 500.0


@pytest.fixture
def admission():
    from chalicelib.admission import Admission

    clocks = _Clocks()
    listing = MemoryQuarantineList(lambda: clocks.wall)
    gate = Admission(None, "replay", "quarantine", shared_key_max_age=1.0, clock=lambda: clocks.wall,
                     monotonic=lambda: clocks.mono)
    gate._shared = RecentReads(listing, 1.0, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    return clocks, listing, gate


def _settled(gate, keys):
    """The issuance's call list: (facts, admitted_at, shared_at) as settle gives them."""
    return settle(lambda: "facts", lambda: 499.0, gate.shared_check(keys))


def test_a_quarantine_on_a_role_is_honoured_within_max_age_by_either_clock(admission):
    clocks, listing, gate = admission
    key = quarantine_key("principal", "arn:aws:iam::123456789012:role/demo-node")
    assert not isinstance(gate.shared_check([key]), Ready)  # never read: a read is needed
    assert raise_first(_settled(gate, [key]))[2] == 500.0
    listing.place(key, revocation_id="r", until=int(clocks.wall) + 600, reason="x", by="sec")
    clocks.mono += 0.9
    hit = gate.shared_check([key])
    # within max_age the clear read is relied on, and the window starts at that read (500),
    # not now: the issuance takes itself back if its record lands past the window
    assert isinstance(hit, Ready) and hit.value == 500.0
    assert min(499.0, raise_first(_settled(gate, [key]))[2]) == 499.0
    clocks.mono += 0.1  # max_age reached: read again, refused
    with pytest.raises(Quarantined):
        raise_first(_settled(gate, [key]))
    clocks.mono -= 0.1
    clocks.wall += 1.0  # a frozen monotonic clock (a paused microVM): the wall clock bounds it
    with pytest.raises(Quarantined):
        raise_first(_settled(gate, [key]))
    assert not isinstance(gate.shared_check([key]), Ready)  # a quarantined key is never kept


def test_the_window_starts_at_the_oldest_read_relied_on(admission):
    clocks, _, gate = admission
    old, new = (quarantine_key("principal", f"arn:aws:iam::123456789012:role/r{i}") for i in (1, 2))
    raise_first(_settled(gate, [old]))
    clocks.mono += 0.5
    raise_first(_settled(gate, [new]))
    hit = gate.shared_check([old, new])
    assert isinstance(hit, Ready) and hit.value == 500.0  # the older read, not the newer


def test_a_ready_first_call_moves_a_real_call_here_and_errors_still_come_back_in_place():
    def boom():
        raise Quarantined("q")

    outcomes = settle(Ready({"team": "web"}), boom, lambda: threading.current_thread().name)
    assert outcomes[0] == ({"team": "web"}, None)
    assert isinstance(outcomes[1][1], Quarantined)
    with pytest.raises(Quarantined):
        raise_first(outcomes)


class _Caller:
    def __init__(self, principal):
        self.principal = principal


class _Clients(Scripted):
    """One account's reader clients: botocore's IAM client, answered in place of the network."""

    def __init__(self, account):
        super().__init__()
        self.account = account


class _Readers:
    def __init__(self, clients):
        self._clients = clients

    def for_account(self, account, partition=None):
        return self._clients.get(account)


def _tags_answer(**tags):
    """GetRole's answer (it carries the role's tags and trust policy)."""
    members = "".join(f"<member><Key>{k}</Key><Value>{v}</Value></member>" for k, v in tags.items())
    return (f'<GetRoleResponse xmlns="{IAM_NS}"><GetRoleResult><Role><RoleName>shared-name</RoleName>'
            f'<Arn>arn:aws:iam::111111111111:role/shared-name</Arn><Tags>{members}</Tags></Role>'
            f'</GetRoleResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>'
            f'</GetRoleResponse>').encode()


def test_kept_role_tags_are_per_account_and_a_failed_read_is_not_kept():
    from chalicelib.methods.aws.facts import AwsFactsReader

    first, second = _Clients("111111111111"), _Clients("222222222222")
    reader = AwsFactsReader(_Readers({"111111111111": first, "222222222222": second}),
                            regions=["us-east-1"], cache_seconds=60)
    session = "arn:aws:sts::{}:assumed-role/shared-name/builder"
    first.will_answer(_tags_answer(team="web"))
    assert reader.read(_Caller(session.format("111111111111")), None).role_tags == {"team": "web"}
    assert reader.read(_Caller(session.format("111111111111")), None).role_tags == {"team": "web"}
    assert first.sent == 1  # kept: the second login read no tags
    # the same role name in another account is another role: its own read, its own tags
    second.will_answer(b"<html>portal</html>")
    with pytest.raises(Unavailable) as failed:
        reader.read(_Caller(session.format("222222222222")), None)
    assert failed.value.status == 503 and failed.value.backend == "iam"
    second.will_answer(_tags_answer(team="db"))  # the failure was not kept as "no tags"
    assert reader.read(_Caller(session.format("222222222222")), None).role_tags == {"team": "db"}
    assert reader.read(_Caller(session.format("111111111111")), None).role_tags == {"team": "web"}


# ---- cached parses and keys ------------------------------------------------------------------

def test_a_cached_principal_arn_is_frozen_and_a_refused_one_is_refused_every_time():
    from chalicelib.methods.aws.arn import parse_principal_arn

    arn = parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0")
    with pytest.raises(FrozenInstanceError):
        arn.name = "admin"  # a caller can't poison what the next one reads
    assert parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0") == arn
    for _ in range(2):
        with pytest.raises(InvalidProof):
            parse_principal_arn("arn:aws:sts::123456789012:federated-user/x")
    with pytest.raises(InvalidProof):
        parse_principal_arn(None)


def test_over_tls_bytes_past_an_answer_are_never_the_next_answer(tls_server):  # noqa: F811
    """The unasked bytes in the same TLS write (one record) or the next one (TLS's own
    buffer or the socket): never read as the next request's answer."""
    pools = HttpClient(ca_certs=str(tls_server.cert_path))
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
    tls_server.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + forged,
                           b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine"]
    assert pools.request("GET", tls_server.url, connect_timeout=1, read_timeout=1).data == b"ok"
    time.sleep(0.1)
    assert pools.request("GET", tls_server.url, connect_timeout=1, read_timeout=1).data == b"mine"


def _drip_a_header(conn):
    conn.recv(65536)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400:
        conn.sendall(bytes([byte]))
        time.sleep(0.02)


def _flood_of_informational_answers(conn):
    conn.recv(65536)
    for _ in range(2000):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.005)


@pytest.mark.parametrize("server", [_drip_a_header, _flood_of_informational_answers])
def test_an_answer_that_never_ends_stops_at_the_deadline(server):
    listener, port, _ = _listen(server)
    try:
        started = time.monotonic()
        with pytest.raises(HttpError, match="deadline|Timeout"):
            HttpClient().request("GET", f"http://127.0.0.1:{port}/", connect_timeout=0.1, read_timeout=0.2)
        assert time.monotonic() - started < 2  # connect + 2 x read = 0.5 s, not 400 x 20 ms
    finally:
        listener.close()
