"""Property-based tests (hypothesis) of the AWS proof parsers: the login body, the header
map, the offline checks of the signed request, the principal ARN, and the STS answer
(XML bombs, external entities, huge and deeply nested documents, random bytes).

The property everywhere: whatever comes in, the only exceptions that leave are the
typed ones (InvalidRequest, InvalidProof, Unavailable), and what is accepted holds
the invariants the later stages rely on.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from datetime import datetime, timezone

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from chalicelib.methods.aws import proof as aws_proof
from chalicelib.methods.aws.arn import INSTANCE_ID, PrincipalArn, parse_principal_arn
from chalicelib.methods.aws.proof import (ALLOWED_AMZ_HEADERS, MAX_RESPONSE_BYTES, SIGNABLE_HEADERS, STS_NS,
                                  AwsProofVerifier, SignedProof)
from chalicelib.methods.base import VerifiedCaller as CallerIdentity
from chalicelib.config import Settings
from chalicelib.errors import InvalidProof, InvalidRequest, Unavailable
from chalicelib.methods.aws.request import AWS_FIELDS, AwsLoginRequest, parse_aws_login
from chalicelib.policy import ROLE_NAME
from tests.sigv4 import signed_login

SERVER_ID = "broker.test"
CREDS = {"access_key_id": "ASIAEXAMPLEEXAMPLE12", "secret_access_key": "not-a-real-secret", "session_token": "tok"}
TOKEN_CHARS = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class NoNetwork:
    def request(self, *a, **k):
        raise AssertionError("the offline checks sent a request")


def settings_for(**env):
    base = {"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
            "BROKER_SERVER_ID": SERVER_ID, "BROKER_AUDIT_TABLE": "a", "BROKER_REPLAY_TABLE": "r",
            "BROKER_STS_ENDPOINTS": "https://sts.amazonaws.com,https://sts.eu-west-1.amazonaws.com"}
    base.update(env)
    return Settings.from_env(base).aws


VERIFIER = AwsProofVerifier(settings_for(), NoNetwork())


# ---- the login body ------------------------------------------------------------------------


@given(st.binary(max_size=4096))
@example(b"\xff\xfe{\x00}")
@example(b"{" * 5000 + b"}" * 5000)
@example(b'{"role": "\\ud800"}')
def test_any_bytes_are_parsed_or_refused_with_400(raw):
    try:
        parse_aws_login(raw)
    except InvalidRequest:
        pass


@given(st.dictionaries(st.sampled_from(AWS_FIELDS) | st.text(max_size=12), json_values, max_size=7))
def test_any_json_object_is_parsed_or_refused_with_400(doc):
    try:
        login = parse_aws_login(json.dumps(doc).encode())
    except InvalidRequest:
        return
    assert set(doc) == set(AWS_FIELDS)
    _check_accepted(login)


header_names = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=24) | st.text(max_size=140)
header_values = (st.text(max_size=80) | st.lists(st.text(max_size=40), max_size=3) | json_values
                 | st.text(alphabet="ab\r\n\0", max_size=6) | st.just("x" * 4097))


@given(role=st.text(max_size=140) | st.from_regex(ROLE_NAME, fullmatch=True),
       method=st.text(max_size=20),
       url=st.binary(max_size=120) | st.just(b"https://sts.amazonaws.com/"),
       body=st.binary(max_size=60),
       headers=st.dictionaries(header_names, header_values, max_size=36) | json_values,
       raw_headers=st.none() | st.binary(max_size=200))
def test_well_typed_fields_are_parsed_or_refused_with_400(role, method, url, body, headers, raw_headers):
    encoded = raw_headers if raw_headers is not None else json.dumps(headers).encode()
    doc = {"role": role, "iam_http_request_method": method, "iam_request_url": b64(url),
           "iam_request_body": b64(body), "iam_request_headers": b64(encoded)}
    try:
        login = parse_aws_login(json.dumps(doc).encode())
    except InvalidRequest:
        return
    except InvalidProof as e:  # a header value no HTTP client could send: a forged proof (401)
        assert "value no HTTP client sends" in e.message
        return
    _check_accepted(login)
    assert login.body == body
    # and the offline checks never do anything but pass or refuse with 401
    try:
        VERIFIER.check(login)
    except InvalidProof:
        pass


@given(st.text(max_size=200))
def test_non_base64_fields_are_refused(text):
    assume(not _is_b64(text))
    doc = {"role": "web", "iam_http_request_method": "POST", "iam_request_url": text,
           "iam_request_body": b64("x"), "iam_request_headers": b64("{}")}
    with pytest.raises(InvalidRequest):
        parse_aws_login(json.dumps(doc).encode())


def _is_b64(text):
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def _check_accepted(login: AwsLoginRequest):
    assert ROLE_NAME.match(login.role)
    assert isinstance(login.method, str) and len(login.method) <= 16
    assert isinstance(login.url, str) and login.url.isascii()
    assert isinstance(login.body, bytes)
    assert len(login.headers) <= 32
    names = [name.lower() for name, _ in login.headers]
    assert len(names) == len(set(names)), "a header name was accepted twice"
    for name, value in login.headers:
        assert isinstance(value, str) and len(value) <= 4096
        assert not any(c in value for c in "\r\n\0"), "a header value can split the forwarded request"
        assert login.header(name.upper()) == value


# ---- the offline checks of a genuine signed request, mutated ---------------------------------


def genuine():
    return signed_login(CREDS, "web", SERVER_ID, when=datetime.now(timezone.utc))


mutations = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["Host", "X-Amz-Date", "Authorization", "Content-Type",
                                                 "X-Vault-AWS-IAM-Server-ID", "X-Amz-Security-Token",
                                                 "Content-Length", "X-Amz-Target", "User-Agent", "host"]),
              st.text(max_size=60) | st.sampled_from(["sts.amazonaws.com", "evil.example", SERVER_ID,
                                                      "sts.eu-west-1.amazonaws.com", "43"])),
    st.tuples(st.just("drop"), st.sampled_from(["Host", "X-Amz-Date", "Authorization", "X-Vault-AWS-IAM-Server-ID",
                                                  "Content-Type", "X-Amz-Security-Token"]), st.none()),
    st.tuples(st.just("auth"), st.sampled_from(["SignedHeaders=", "Signature=", "Credential=", "/sts/", "us-east-1",
                                                  "AWS4-HMAC-SHA256", ", "]), st.text(max_size=30)),
    st.tuples(st.just("url"), st.none(), st.sampled_from([
        "https://sts.amazonaws.com", "https://sts.amazonaws.com:443/", "https://sts.amazonaws.com/?Action=x",
        "https://user@sts.amazonaws.com/", "http://sts.amazonaws.com/", "https://sts.amazonaws.com./",
        "https://STS.AMAZONAWS.COM/", "https://sts.amazonaws.com:8443/", "https://sts.eu-west-1.amazonaws.com/",
        "https://sts.amazonaws.com/#frag", "https://[::1]/", "https://sts.amazonaws.com:99999/",
        "https://sts.amazonaws.com\\@evil.example/", "https://evil.example/sts.amazonaws.com/"]) | st.text(max_size=40)),
    st.tuples(st.just("method"), st.none(), st.sampled_from(["GET", "post", "POST ", "PUT"]) | st.text(max_size=8)),
    st.tuples(st.just("body"), st.none(), st.sampled_from([
        "Action=GetCallerIdentity&Version=2011-06-15&", "Action=AssumeRole&Version=2011-06-15",
        "Version=2011-06-15&Action=GetCallerIdentity"]) | st.text(max_size=60)),
)


@given(st.lists(mutations, min_size=1, max_size=4))
def test_mutated_genuine_proofs_are_refused_or_stay_within_the_allowed_shape(changes):
    body = genuine()
    headers = {k: v[0] for k, v in json.loads(base64.b64decode(body["iam_request_headers"])).items()}
    for kind, name, value in changes:
        if kind == "set":
            headers[name] = value
        elif kind == "drop":
            headers.pop(name, None)
        elif kind == "auth":
            headers["Authorization"] = headers.get("Authorization", "").replace(name, value, 1)
        elif kind == "url":
            body["iam_request_url"] = b64(value)
        elif kind == "method":
            body["iam_http_request_method"] = value
        elif kind == "body":
            body["iam_request_body"] = b64(value)
    body["iam_request_headers"] = b64(json.dumps({k: [v] for k, v in headers.items()}))
    try:
        login = parse_aws_login(json.dumps(body).encode())
        proof = VERIFIER.check(login)
    except (InvalidRequest, InvalidProof):
        return
    # Accepted offline: what would be sent to STS is still a narrow GetCallerIdentity.
    assert isinstance(proof, SignedProof)
    assert proof.endpoint in ("https://sts.amazonaws.com/", "https://sts.eu-west-1.amazonaws.com/")
    sent = dict(proof.headers)
    assert set(sent) <= SIGNABLE_HEADERS | {"authorization"}
    assert sent["x-vault-aws-iam-server-id"] == SERVER_ID
    assert sent["host"] == proof.host
    assert not [n for n in sent if n.startswith("x-amz-") and n not in ALLOWED_AMZ_HEADERS]
    assert login.method == "POST" and login.body == aws_proof.GET_CALLER_IDENTITY_BODY


def test_the_unmutated_genuine_proof_passes_the_offline_checks():
    assert isinstance(VERIFIER.check(parse_aws_login(json.dumps(genuine()).encode())), SignedProof)


# ---- principal ARNs ------------------------------------------------------------------------

names = st.text(alphabet="abcXYZ019+=,.@_-", min_size=1, max_size=20)
accounts = st.from_regex(r"\A\d{12}\Z")
partitions = st.sampled_from(["aws", "aws-cn", "aws-us-gov"])


@given(st.text(max_size=300) | st.from_regex(r"\Aarn:aws:(iam|sts)::\d{12}:.{0,80}\Z"))
@example("arn:aws:sts::123456789012:assumed-role/r/s/extra")
@example("arn:aws:iam::123456789012:user/")
@example("arn:aws:iam::123456789012:role//x")
@example("arn:aws:iam::123456789012:role/a/\u00e9/x")
def test_any_text_is_a_principal_or_refused(text):
    try:
        arn = parse_principal_arn(text)
    except InvalidProof:
        return
    assert arn.kind in ("user", "role", "assumed-role")
    assert arn.canonical_arn.startswith(f"arn:{arn.partition}:iam::{arn.account}:")
    assert parse_principal_arn(arn.canonical_arn).canonical_arn == arn.canonical_arn


@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidProof):
        parse_principal_arn(value)


@given(partitions, accounts, names, names | st.from_regex(INSTANCE_ID, fullmatch=True))
def test_assumed_role_sessions_round_trip(partition, account, role, session):
    arn = parse_principal_arn(f"arn:{partition}:sts::{account}:assumed-role/{role}/{session}")
    assert arn == PrincipalArn(partition, account, "assumed-role", role, session)
    assert arn.canonical_arn == f"arn:{partition}:iam::{account}:role/{role}"
    assert arn.session_instance_id == (session if INSTANCE_ID.match(session) else None)


@given(partitions, accounts, st.sampled_from(["user", "role"]), st.lists(names, max_size=3), names)
def test_iam_principals_drop_their_path(partition, account, kind, path, name):
    arn = parse_principal_arn(f"arn:{partition}:iam::{account}:{kind}/{'/'.join(path + [name])}")
    assert arn.canonical_arn == f"arn:{partition}:iam::{account}:{kind}/{name}"
    assert arn.session_instance_id is None


# ---- the STS answer --------------------------------------------------------------------------

PROOF = SignedProof("https://sts.amazonaws.com/", "sts.amazonaws.com", (), "ab" * 32,
                    datetime.now(timezone.utc))


def identity(body):
    """`_identity` either reads an identity, says STS is unavailable, or refuses an answer
    whose ARN is no principal's (or names another account than Account)."""
    try:
        result = VERIFIER._identity(body, PROOF)
    except (Unavailable, InvalidProof):
        return None
    assert isinstance(result, CallerIdentity)
    return result


def gci(arn="arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0", account="123456789012",
        user_id="AROAEXAMPLE:i-0123456789abcdef0", prolog=""):
    return (f'{prolog}<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>{user_id}</UserId><Account>{account}</Account>"
            "</GetCallerIdentityResult><ResponseMetadata><RequestId>x</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>").encode()


def test_a_genuine_answer_is_read():
    got = identity(gci())
    assert got.account == "123456789012" and got.principal.endswith("/i-0123456789abcdef0")
    assert got.claimed.kind == "ec2-instance" and got.claimed.id == "i-0123456789abcdef0"
    assert got.canonical_principal == "arn:aws:iam::123456789012:role/demo-node"


def test_an_answer_whose_arn_names_another_account_is_refused():
    with pytest.raises(InvalidProof, match="inconsistent"):
        VERIFIER._identity(gci(account="210987654321"), PROOF)


@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xef\xbb\xbf")
@example(b'<?xml version="1.0" encoding="UTF-7"?><a/>')
@example(b'<?xml version="1.0" encoding="no-such-codec"?><a/>')
@example(b'<?xml version="1.0" encoding="utf-16"?><a/>')
@example("\ufeff<a/>".encode("utf-16"))
@example(b"<Code>" + b"x" * 100 + b"</Code>")
def test_random_bytes_never_escape(body):
    identity(body)
    code = aws_proof._error_code(body)
    assert code is None or (isinstance(code, str) and len(code) <= 64)


xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
tags = st.sampled_from([STS_NS + t for t in ("GetCallerIdentityResponse", "GetCallerIdentityResult", "Arn", "Account",
                                              "UserId", "Code", "Error")] + ["Arn", "Code", "x", "{urn:x}Arn"])


def _tree(draw_children):
    return st.tuples(tags, xml_text, draw_children)


xml_trees = st.recursive(st.tuples(tags, xml_text, st.just([])),
                         lambda children: st.tuples(tags, xml_text, st.lists(children, max_size=4)), max_leaves=15)


def render(tree):
    from xml.sax.saxutils import escape

    tag, text, children = tree
    ns, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    attrs = f' xmlns="{ns}"' if ns else ' xmlns=""'
    return f"<{local}{attrs}>{escape(text)}{''.join(render(c) for c in children)}</{local}>"


@given(xml_trees)
def test_random_documents_are_read_or_refused(tree):
    body = render(tree).encode()
    got = identity(body)
    if got is not None:
        assert tree[0] == STS_NS + "GetCallerIdentityResponse"
        assert got.arn and got.account and got.user_id
        assert got.arn == got.arn.strip()
    aws_proof._error_code(body)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
"""


@pytest.mark.parametrize("name, body", [
    ("billion laughs", BILLION_LAUGHS + gci(arn="&lol9;")),
    ("quadratic blowup", b'<!DOCTYPE x [<!ENTITY a "' + b"A" * 20000 + b'">]>' + gci(arn=b"&a;".decode() * 2000)),
    ("external entity", b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + gci(arn="&e;")),
    ("parameter entity", b'<!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>' + gci()),
    ("internal entity", b'<!DOCTYPE x [<!ENTITY e "arn:aws:iam::123456789012:user/admin">]>' + gci(arn="&e;")),
    ("doctype only", b"<!DOCTYPE GetCallerIdentityResponse>" + gci()),
    ("xinclude", gci(arn='<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>')),
])
def test_xml_attacks_are_refused_quickly(name, body):
    started = time.monotonic()
    got = identity(body)
    assert aws_proof._error_code(body) is None or name == "xinclude"
    assert time.monotonic() - started < 1.0
    if name == "xinclude":  # no DTD: read as plain (foreign) elements, never resolved
        assert got is None or "passwd" not in got.arn
    else:
        assert got is None, f"{name}: a document with a DTD was read"


def test_an_external_dtd_is_never_fetched():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    body = f'<!DOCTYPE x SYSTEM "http://127.0.0.1:{port}/x.dtd">'.encode() + gci()
    try:
        assert identity(body) is None
        assert aws_proof._error_code(body) is None
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("depth", [1000, 9000, 50_000])
def test_deeply_nested_documents_do_not_crash(depth):
    body = b"<a>" * depth + b"<Code>Throttling</Code>" + b"</a>" * depth
    started = time.monotonic()
    assert identity(body) is None
    code = aws_proof._error_code(body)
    assert code in (None, "Throttling")
    assert time.monotonic() - started < 5


def test_a_huge_document_is_read_at_most_to_the_cap():
    """ask_sts reads at most MAX_RESPONSE_BYTES + 1 bytes, whatever STS sends."""
    session = FakeSts(200, gci() + b"<!--" + b"x" * (10 * 1024 * 1024) + b"-->")
    with pytest.raises(Unavailable, match="oversized"):
        AwsProofVerifier(settings_for(), session).ask_sts(PROOF)
    assert session.read_sizes == [MAX_RESPONSE_BYTES + 1]


class FakeSts:
    """chalicelib.http_client.HttpClient' contract (its real behaviour against a real server:
    tests/unit/test_http_client_backends.py): an Answer with at most max_bytes + 1 bytes of
    the body, or HttpError when no answer came; never a redirect followed."""

    def __init__(self, status, body, error=None):
        self.status, self.body, self.error = status, body, error
        self.read_sizes = []
        self.sent = []

    def request(self, method, url, **kwargs):
        from chalicelib.http_client import Answer, HttpError

        self.sent.append((method, url, kwargs))
        if self.error:
            raise HttpError(type(self.error).__name__)
        self.read_sizes.append(kwargs["max_bytes"] + 1)
        return Answer(self.status, {}, self.body[:kwargs["max_bytes"] + 1])


error_codes = st.sampled_from(sorted(aws_proof._PROOF_ERRORS) + ["Throttling", "InternalFailure", "", "<>"])


@given(status=st.sampled_from([200, 301, 302, 400, 403, 404, 429, 500, 502, 503]) | st.integers(100, 599),
       body=st.binary(max_size=300) | error_codes.map(
           lambda c: f"<ErrorResponse><Error><Code>{c}</Code></Error></ErrorResponse>".encode()) | st.just(gci()),
       error=st.none() | st.sampled_from([ConnectionError("refused"), TimeoutError("slow"), OSError("reset")]))
def test_any_sts_answer_is_an_identity_a_refusal_or_unavailable(status, body, error):
    session = FakeSts(status, body, error)
    try:
        got = AwsProofVerifier(settings_for(), session).ask_sts(PROOF)
    except InvalidProof as e:
        # only a definite "this proof is bad" from STS refuses the caller
        assert status in (400, 403) and error is None
        assert any(code in e.message for code in aws_proof._PROOF_ERRORS)
        return
    except Unavailable:
        return
    assert status == 200 and error is None and isinstance(got, CallerIdentity)
    # the request went to the configured STS, never anywhere else, with a bounded read
    # (the pools follow no redirect: tests/unit/test_http_client_backends.py)
    method, url, kwargs = session.sent[0]
    assert (method, url, kwargs["max_bytes"]) == ("POST", "https://sts.amazonaws.com/", MAX_RESPONSE_BYTES)
