"""The GCP proof: an identity token from the GCE metadata server.

``GET {metadata}/computeMetadata/v1/instance/service-accounts/default/identity
?audience=AUD&format=full`` with ``Metadata-Flavor: Google`` returns a JWT signed by
Google that names the instance (project, zone, name, ID, creation time) and its
service account; its ``aud`` is the broker's audience. The broker checks it with
Google's certificates and reads the instance with the Compute API itself.

Only the standard library is used. The metadata server is always reached directly
(never through an HTTP proxy: it refuses requests that carry ``X-Forwarded-For``),
and redirects are never followed. The token is a bearer credential for the broker:
it is never printed or logged.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable
from urllib.parse import urlencode, urlsplit

from broker.errors import NoCredentialsError, UsageError
from broker.http import CONNECTION_ERRORS, build_opener, describe_connection_error, request

DEFAULT_METADATA_URL = "http://metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
PROBE_PATH = "/computeMetadata/v1/"
FLAVOR = {"Metadata-Flavor": "Google"}
MAX_TOKEN_BYTES = 64 * 1024
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_RETRYABLE = frozenset({429, 500, 502, 503, 504})


def normalize_metadata_url(url: str | None) -> str:
    """The metadata server's base URL (``http://metadata.google.internal`` by default),
    without a trailing slash; ``/computeMetadata/v1/...`` is appended to it."""
    url = (url or DEFAULT_METADATA_URL).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"the metadata URL must be an absolute http(s) URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError("the metadata URL must not carry credentials, a query or a fragment")
    return url.rstrip("/")


def _get(url: str, timeout: float) -> tuple:
    """GET with ``Metadata-Flavor: Google``, never through a proxy; returns status, lower-cased
    headers, body. Raises one of CONNECTION_ERRORS on connection failures and oversized bodies."""
    result = request(build_opener(proxies=False), "GET", url, timeout=timeout, headers=dict(FLAVOR),
                     max_bytes=MAX_TOKEN_BYTES)
    return result.status, result.headers, result.body


def _reason(exc: BaseException) -> str:
    return describe_connection_error(exc)


def probe_gce(metadata_url: str, timeout: float = 1.0) -> bool:
    """Does a GCE metadata server answer at ``metadata_url``? True only for a 200 with the
    ``Metadata-Flavor: Google`` response header. The whole probe, name resolution
    included, is bounded by ``timeout`` (a slow resolver cannot stall the client)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            status, headers, _ = _get(metadata_url + PROBE_PATH, timeout)
            result.append(status == 200 and headers.get("metadata-flavor") == "Google")
        except CONNECTION_ERRORS + (ValueError,):
            result.append(False)

    thread = threading.Thread(target=attempt, name="gce-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


class MetadataIdentity:
    """Fetches fresh identity tokens (``format=full``) for ``audience``.

    Each :meth:`fetch` asks the metadata server again: the broker accepts each token
    once. Two fetches are never made within the same second (a token's ``iat`` has a
    one-second granularity, so two tokens minted in one second can be identical).
    Connection errors and 429/5xx are retried a few times within ``timeout``.
    """

    def __init__(
        self,
        audience: str,
        *,
        metadata_url: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not audience or any(c in audience for c in "\r\n"):
            raise UsageError("the GCP audience must be a non-empty single line (--audience or BROKER_GCP_AUDIENCE)")
        self.audience = audience
        self.base_url = normalize_metadata_url(metadata_url)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self._clock = clock
        self._sleep = sleep
        self._last_second: int | None = None
        self.last_token_reused = False
        self._last_token_digest: int | None = None

    @property
    def url(self) -> str:
        """The identity URL (no secret in it)."""
        return f"{self.base_url}{IDENTITY_PATH}?{urlencode({'audience': self.audience, 'format': 'full'})}"

    def _next_second(self) -> None:
        now = self._clock()
        if self._last_second is not None and int(now) <= self._last_second:
            self._sleep(self._last_second + 1 - now + 0.01)
            now = self._clock()
        self._last_second = int(now)

    def fetch(self) -> str:
        """A new identity token. Raises NoCredentialsError (exit 3) when there is none."""
        self._next_second()
        where = f"the GCE metadata server at {self.base_url}"
        problem = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                status, headers, body = _get(self.url, self.timeout)
            except CONNECTION_ERRORS as exc:
                problem = f"{where} did not answer ({_reason(exc)})"
            else:
                if status == 200:
                    return self._token(headers, body, where)
                if status == 404:
                    raise NoCredentialsError(
                        f"{where} has no identity token for this machine (HTTP 404): "
                        "is a service account attached to the instance?")
                if status == 400:
                    raise UsageError(f"{where} refused the audience {self.audience!r} (HTTP 400)")
                if status == 403:
                    raise NoCredentialsError(
                        f"{where} refused the request (HTTP 403; a proxy in between adds X-Forwarded-For, "
                        "which the metadata server refuses)")
                problem = f"{where} answered HTTP {status}"
                if status not in _RETRYABLE:
                    break
            if attempt < self.attempts:
                self._sleep(0.5 * attempt)
        raise NoCredentialsError(f"no GCP identity token: {problem}")

    def _token(self, headers: dict[str, str], body: bytes, where: str) -> str:
        if headers.get("metadata-flavor") != "Google":
            raise NoCredentialsError(f"{where} is not a GCE metadata server (no Metadata-Flavor: Google header)")
        if len(body) > MAX_TOKEN_BYTES:
            raise NoCredentialsError(f"{where} answered more than {MAX_TOKEN_BYTES} bytes")
        token = body.decode("ascii", "replace").strip()
        if not _JWT.match(token):
            raise NoCredentialsError(f"{where} answered something that is not an identity token (JWT)")
        digest = hash(token)
        self.last_token_reused = digest == self._last_token_digest
        self._last_token_digest = digest
        return token
