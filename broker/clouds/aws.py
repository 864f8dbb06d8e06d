"""The AWS proof: a SigV4-signed ``sts:GetCallerIdentity`` request.

The fields are the ones Vault's aws auth method takes for an ``iam`` login
(``iam_http_request_method``, ``iam_request_url``, ``iam_request_body``,
``iam_request_headers``), so the broker can verify them exactly as Vault would:
rebuild the request, send it to STS, and read the caller's ARN from the answer.

botocore is imported lazily, on the first signature, so that ``broker --help``
and the policy commands start fast and work without it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from broker.clouds.pacing import OncePerSecond
from broker.errors import NoCredentialsError, UsageError

DEFAULT_STS_URL = "https://sts.amazonaws.com/"
DEFAULT_STS_REGION = "us-east-1"
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
SERVER_ID_HEADER = "X-Vault-AWS-IAM-Server-ID"

_REGIONAL_STS_HOST = re.compile(r"^sts(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def region_for_sts_url(url: str) -> str:
    """The signing region an STS URL implies: ``sts.eu-west-1.amazonaws.com`` -> ``eu-west-1``."""
    host = (urlsplit(url).hostname or "").lower()
    match = _REGIONAL_STS_HOST.match(host)
    return match.group(1) if match else DEFAULT_STS_REGION


@dataclass(frozen=True)
class SignedProof:
    """One signed request. ``headers`` holds the signature: never print it."""

    method: str
    url: str
    body: str
    headers: dict[str, list[str]] = field(repr=False)
    amz_date: str = ""

    def login_fields(self) -> dict[str, str]:
        """The four fields of an aws ``iam`` login, encoded as Vault expects."""
        return {
            "iam_http_request_method": self.method,
            "iam_request_url": _b64(self.url),
            "iam_request_body": _b64(self.body),
            "iam_request_headers": _b64(json.dumps(self.headers, separators=(",", ":"), sort_keys=True)),
        }

    def secret_values(self) -> tuple[str, ...]:
        """What must never be printed, for the output scrubber: the signature, the session token, and
        the encoded headers field that carries both (a broker could echo any of them back)."""
        values = []
        for name, items in self.headers.items():
            for value in items:
                if name.lower() == "authorization":
                    values += re.findall(r"Signature=([0-9A-Fa-f]+)", value)
                elif name.lower() == "x-amz-security-token":
                    values.append(value)
        values.append(self.login_fields()["iam_request_headers"])
        return tuple(v for v in values if v)

    @property
    def signed_headers(self) -> list[str]:
        """The lower-case header names listed in the Authorization header's SignedHeaders."""
        auth = ",".join(self.headers.get("Authorization", []))
        match = re.search(r"SignedHeaders=([^,\s]+)", auth)
        return match.group(1).split(";") if match else []


def _host_header(parts: Any) -> str:
    """The Host header for a URL, without the scheme's default port (as HTTP clients send it)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port and port != (443 if parts.scheme == "https" else 80):
        host = f"{host}:{port}"
    return host


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class ProofSigner:
    """Signs fresh GetCallerIdentity proofs with the default credential chain.

    The credential chain (env vars, shared files, ECS task role, IMDSv2 on EC2, ...)
    is resolved once, on the first signature; refreshable credentials are refreshed
    by botocore as they near expiry. Each call to :meth:`sign` makes a new proof
    with a new ``X-Amz-Date``: the broker spends each proof once, and SigV4 is
    deterministic, so two proofs signed within the same second would be identical.
    """

    def __init__(
        self,
        server_id: str,
        *,
        sts_url: str = DEFAULT_STS_URL,
        region: str | None = None,
        credentials: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not server_id:
            raise UsageError("a server ID is required (--server-id or BROKER_SERVER_ID)")
        if any(c in server_id for c in "\r\n"):
            raise UsageError("the server ID must be a single line")
        parts = urlsplit(sts_url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise UsageError(f"--sts-url must be an absolute http(s) URL, got {sts_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise UsageError("--sts-url must not carry credentials, a query or a fragment")
        self.server_id = server_id
        self.url = sts_url if parts.path else sts_url + "/"
        self.host = _host_header(parts)
        self.region = region or region_for_sts_url(sts_url)
        self._credentials = credentials
        self._clock = clock
        self._sleep = sleep
        self._pace = OncePerSecond(clock, sleep)

    def _resolve_credentials(self) -> Any:
        if self._credentials is not None:
            return self._credentials
        try:
            import botocore.session  # noqa: F401 - ImportError when botocore is missing
            from botocore.exceptions import BotoCoreError

            from broker.clouds.botocore_session import new_session
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError(
                "botocore is needed to sign the AWS proof: use the single-file broker.pyz, which carries it, "
                "or install botocore beside the wheel (docs/client.md)"
            ) from exc
        # botocore logs canonical requests and signatures at DEBUG: never let them out.
        logging.getLogger("botocore").setLevel(logging.WARNING)
        try:
            credentials = new_session().get_credentials()
        except BotoCoreError as exc:
            raise NoCredentialsError(f"could not load AWS credentials: {type(exc).__name__}: {exc}") from None
        if credentials is None:
            raise NoCredentialsError(
                "no AWS credentials found by the default chain "
                "(environment, shared files, ECS task role, EC2 instance profile via IMDSv2)"
            )
        self._credentials = credentials
        return credentials

    def sign(self, extra_headers: dict[str, str] | None = None) -> SignedProof:
        """A fresh proof. ``extra_headers`` are signed too (the security routes' request
        binding, whose random nonce makes each proof unique: no wait for the next second)."""
        credentials = self._resolve_credentials()
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        try:
            frozen = credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            raise NoCredentialsError(f"could not refresh AWS credentials: {type(exc).__name__}: {exc}") from None
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError("the AWS credentials found are incomplete (no access key or secret key)")

        if not extra_headers:
            self._pace.wait()
        headers = {
            "Host": self.host,
            "Content-Type": CONTENT_TYPE,
            SERVER_ID_HEADER: self.server_id,
            **(extra_headers or {}),
        }
        request = AWSRequest(method="POST", url=self.url, data=STS_BODY.encode("utf-8"), headers=headers)
        SigV4Auth(frozen, "sts", self.region).add_auth(request)

        signed: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            signed.setdefault(name, []).append(value)
        proof = SignedProof(
            method="POST",
            url=self.url,
            body=STS_BODY,
            headers=signed,
            amz_date=request.headers.get("X-Amz-Date", ""),
        )
        if SERVER_ID_HEADER.lower() not in proof.signed_headers:  # pragma: no cover - botocore signs all headers
            raise UsageError("internal error: the server-ID header was not signed")
        return proof
