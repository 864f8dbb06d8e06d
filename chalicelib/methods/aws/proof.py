"""Verify an AWS IAM proof: a SigV4-signed sts:GetCallerIdentity request.

Rebuild, don't forward (CVE-2020-16250): the caller's fields are checked against
a narrow shape, and the broker sends its own request, with only the signed
headers, to an STS endpoint from its configuration. Never the caller's URL, no
redirects, and the XML answer is parsed by chalicelib/safe_xml.py (no DTD) under a size cap.
"""

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ... import safe_xml
from ...errors import InvalidProof, Unavailable
from ...http_client import HttpError
from ..base import IDENTITY_BUDGET, PRINCIPAL_BUDGET, Entity, VerifiedCaller
from .arn import parse_principal_arn
from .identity import quarantine_keys

GET_CALLER_IDENTITY_BODY = b"Action=GetCallerIdentity&Version=2011-06-15"
SERVER_ID_HEADER = "x-vault-aws-iam-server-id"
# Headers a GetCallerIdentity signature may cover, and the only ones forwarded.
SIGNABLE_HEADERS = frozenset(
    {"host", "content-type", "content-length", "x-amz-date", "x-amz-security-token", SERVER_ID_HEADER,
     "x-broker-request"}  # the security routes' request binding (chalicelib/admin_auth.py)
)
REQUIRED_SIGNED = frozenset({"host", "x-amz-date", SERVER_ID_HEADER})
ALLOWED_AMZ_HEADERS = frozenset({"x-amz-date", "x-amz-security-token"})
MAX_RESPONSE_BYTES = 64 * 1024
STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[A-Z0-9]{16,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})/sts/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*),"
    r" ?Signature=(?P<signature>[0-9a-f]{64})$"
)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # fullmatch: ASCII digits, no trailing newline
_CONTENT_TYPE = re.compile(r"^application/x-www-form-urlencoded(; ?charset=utf-8)?$", re.IGNORECASE)
# STS error codes that mean "this proof is not valid" rather than "STS is unwell".
_PROOF_ERRORS = frozenset(
    {
        "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken", "AccessDenied",
        "IncompleteSignature", "MissingAuthenticationToken", "InvalidAction", "InvalidParameterValue",
        "RequestExpired", "UnrecognizedClientException", "MissingParameter", "InvalidParameterCombination",
    }
)


@dataclass(frozen=True)
class SignedProof:
    """A proof that passed the offline checks: what the broker will send to STS."""

    endpoint: str  # https://host/ from the allow-list
    host: str
    # secrets (the session token, the signature): never in a repr
    headers: tuple = field(repr=False)  # ((name, value), ...): the signed headers and Authorization
    signature: str = field(repr=False)
    signed_at: datetime


class AwsProofVerifier:
    def __init__(self, settings, pools, clock=time.time):
        """`settings`: the method's AwsSettings (chalicelib/methods/aws/settings.py);
        `pools`: the broker's HTTP client (chalicelib/http_client.py, urllib3: no redirects,
        bounded reads, a deadline for the whole answer, proxies as botocore honours them)."""
        self._endpoints = {urlsplit(u).hostname: u for u in settings.sts_endpoints}
        self._forward_url = settings.sts_forward_url
        self._server_id = settings.server_id
        self._max_skew = settings.max_clock_skew
        self._pools = pools
        self._clock = clock

    def proof_hash(self, login):
        """The replay key, known before any round trip: SHA-256 of the signature."""
        return _hash(self.check(login).signature)

    def verify(self, login):
        proof = self.check(login)
        return self.ask_sts(proof)

    # ---- offline checks -------------------------------------------------

    def check(self, login):
        """Every check that needs no network; raises InvalidProof naming the failed one."""
        if login.method != "POST":
            raise InvalidProof("iam_http_request_method must be POST")
        endpoint, host, region = self._check_url(login.url)
        if login.body != GET_CALLER_IDENTITY_BODY:
            raise InvalidProof("iam_request_body must be exactly Action=GetCallerIdentity&Version=2011-06-15")

        headers = {}
        for name, value in login.headers:
            lower = name.lower()
            if lower.startswith("x-amz-") and lower not in ALLOWED_AMZ_HEADERS:
                raise InvalidProof(f"header {name} is not allowed in the signed request")
            headers[lower] = value

        auth = headers.get("authorization")
        if auth is None:
            raise InvalidProof("the Authorization header is missing")
        m = _AUTH.match(auth)
        if not m:
            raise InvalidProof("the Authorization header is not an AWS4-HMAC-SHA256 signature for sts")
        signed = m.group("signed").split(";")
        if len(set(signed)) != len(signed) or signed != sorted(signed):
            raise InvalidProof("SignedHeaders is not a sorted list of distinct headers")
        for name in signed:
            if name not in SIGNABLE_HEADERS:
                raise InvalidProof(f"signed header {name} is not allowed")
        missing = REQUIRED_SIGNED - set(signed)
        if SERVER_ID_HEADER in missing:
            raise InvalidProof("the X-Vault-AWS-IAM-Server-ID header is not in SignedHeaders")
        if missing:
            raise InvalidProof(f"header(s) {', '.join(sorted(missing))} must be signed")

        if "host" in headers and headers["host"].lower() != host:
            raise InvalidProof("the Host header does not match the STS URL")
        headers["host"] = host
        for name in signed:
            if name not in headers:
                raise InvalidProof(f"signed header {name} is missing")

        server_id = headers[SERVER_ID_HEADER]
        if not hmac.compare_digest(server_id.encode(), self._server_id.encode()):
            raise InvalidProof("the X-Vault-AWS-IAM-Server-ID header does not name this broker")
        if "content-type" in headers and not _CONTENT_TYPE.match(headers["content-type"]):
            raise InvalidProof("Content-Type must be application/x-www-form-urlencoded")
        if "content-length" in headers and headers["content-length"] != str(len(GET_CALLER_IDENTITY_BODY)):
            raise InvalidProof("Content-Length does not match the body")
        if m.group("region") != region:
            raise InvalidProof(f"the signature's region {m.group('region')} does not match the STS endpoint ({region})")

        signed_at = self._check_date(headers["x-amz-date"], m.group("date"))
        forwarded = tuple((name, headers[name]) for name in signed) + (("authorization", auth),)
        return SignedProof(endpoint, host, forwarded, m.group("signature"), signed_at)

    def _check_url(self, url):
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidProof("iam_request_url is not a valid URL") from None
        host = (parts.hostname or "").lower()
        if (
            parts.scheme != "https"
            or host not in self._endpoints
            or parts.username is not None
            or port not in (None, 443)
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise InvalidProof("iam_request_url is not an allowed STS endpoint (expected e.g. https://sts.amazonaws.com/)")
        region = "us-east-1" if host == "sts.amazonaws.com" else host.split(".")[1]
        return self._endpoints[host], host, region

    def _check_date(self, amz_date, scope_date):
        if not _AMZ_DATE.fullmatch(amz_date):
            raise InvalidProof("X-Amz-Date is not a date like 20240101T000000Z")
        try:  # the fields by position (_AMZ_DATE checked the shape): strptime's first call
            # compiles its own regular expressions and imports locale and calendar (3-5 ms)
            signed_at = datetime(int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]), int(amz_date[9:11]),
                                 int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=timezone.utc)
        except ValueError:
            raise InvalidProof("X-Amz-Date is not a valid date") from None
        if amz_date[:8] != scope_date:
            raise InvalidProof("X-Amz-Date does not match the date of the signature's credential scope")
        skew = abs(self._clock() - signed_at.timestamp())
        if skew > self._max_skew:
            raise InvalidProof(f"X-Amz-Date is {int(skew)}s away from the broker's clock (at most {self._max_skew}s allowed)")
        return signed_at

    # ---- the STS round trip ---------------------------------------------

    def ask_sts(self, proof):
        target = self._forward_url + "/" if self._forward_url else proof.endpoint
        headers = {name: value for name, value in proof.headers}
        try:
            response = self._pools.request("POST", target, body=GET_CALLER_IDENTITY_BODY, headers=headers,
                                           connect_timeout=3, read_timeout=5, max_bytes=MAX_RESPONSE_BYTES)
        except HttpError as e:  # connection, TLS, timeout and protocol errors
            raise Unavailable("STS could not be reached", backend="sts", detail=f"STS request failed: {e.kind}") from None
        body = response.data
        if len(body) > MAX_RESPONSE_BYTES:
            raise Unavailable("STS answered with an oversized response", backend="sts")
        if response.status == 200:
            return self._identity(body, proof)
        code = _error_code(body)
        if response.status in (400, 403) and code in _PROOF_ERRORS:
            raise InvalidProof(f"STS rejected the signed request ({code})")
        raise Unavailable(
            "STS could not verify the proof right now", backend="sts",
            detail=f"STS answered HTTP {response.status} {code or ''}".strip(),
        )

    def _identity(self, body, proof):
        root = _parse_xml(body)
        if root is None or root.tag != STS_NS + "GetCallerIdentityResponse":
            raise Unavailable("STS answered with an unexpected document", backend="sts")
        result = root.find(STS_NS + "GetCallerIdentityResult")
        fields = {}
        for name in ("Arn", "Account", "UserId"):
            node = result.find(STS_NS + name) if result is not None else None
            if node is None or not (node.text or "").strip():
                raise Unavailable(f"STS answer has no {name}", backend="sts")
            fields[name] = node.text.strip()
        if fields["Account"] != _account_of(fields["Arn"]):
            raise InvalidProof("STS answer is inconsistent: the ARN's account differs from Account")
        return caller_from_arn(fields["Arn"], proof_hash=_hash(proof.signature),
                               valid_until=proof.signed_at.timestamp() + self._max_skew)


def caller_from_arn(arn_text, *, proof_hash, valid_until):
    """The VerifiedCaller of a principal ARN STS vouched for. The session name's claim
    (an instance ID, as EC2 names sessions; a task ID, as ECS does) is only a claim."""
    arn = parse_principal_arn(arn_text)
    claimed = None
    if arn.session_instance_id:
        claimed = Entity("ec2-instance", arn.session_instance_id)
    elif arn.session_task_id:
        claimed = Entity("ecs-task", arn.session_task_id)
    fields = dict(method="aws", principal=arn_text, canonical_principal=arn.canonical_arn,
                  account=arn.account, proof_hash=proof_hash, valid_until=valid_until, claimed=claimed)
    own, shared = quarantine_keys(arn_text, claimed.id if claimed else None, arn.canonical_arn)
    return VerifiedCaller(**fields, budget_keys=budget_keys(arn, VerifiedCaller(**fields)),
                          quarantine_own=own, quarantine_shared=shared)


def budget_keys(arn, caller):
    """The budgets an AWS caller counts.

    - a claimed machine (session named after an instance or task): its own budget, keyed
      on the machine and its role (VerifiedCaller.identity_key);
    - an assumed-role session that claims none: its session's budget, and its role's, which
      every session of the role shares: whoever may assume the role picks session names,
      and a new name must not be a new budget;
    - an IAM user: its principal's budget alone (no session tells its callers apart).
    """
    if caller.claimed is not None:
        return ((IDENTITY_BUDGET, caller.identity_key),)
    if arn.kind == "assumed-role":
        return ((IDENTITY_BUDGET, caller.identity_key), (PRINCIPAL_BUDGET, f"role:{arn.canonical_arn}"))
    return ((PRINCIPAL_BUDGET, f"user:{arn.canonical_arn}"),)


def _account_of(arn_text):
    parts = arn_text.split(":")
    return parts[4] if len(parts) > 4 else None


def _hash(signature):
    return hashlib.sha256(signature.encode()).hexdigest()


def _parse_xml(body):
    """No DTDs, entities or external references (chalicelib/safe_xml.py); namespaces kept."""
    return safe_xml.parse(body)


def _error_code(body):
    root = _parse_xml(body)
    if root is None:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Code" and element.text:
            return element.text.strip()[:64]
    return None
