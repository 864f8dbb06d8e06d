"""The call to the broker: ``POST /v1/credentials/aws`` (or ``/gcp``), with retries.

Retried, with exponential backoff and full jitter: 429, 500, 502, 503, 504, and
connection errors and timeouts (API Gateway answers 500 when Lambda throttles;
the broker itself never answers 500 to any input). ``Retry-After`` is honoured as a floor (capped).
Never retried: 400, 401, 403 and other 4xx, which are refusals, with one
exception: 401 ``proof_replayed``, which a fresh proof cures (see below). A fresh
proof is made for every attempt, because the broker spends each proof once.

Only the standard library is used (urllib.request); redirects are refused.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from broker import __version__
from broker.errors import RefusedError, UnavailableError, UsageError

LOGIN_PATH = "/v1/credentials/aws"
USER_AGENT = f"secret-zero-broker-client/{__version__}"
MAX_RESPONSE_BYTES = 1 << 20
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REPLAYED_CODE = "proof_replayed"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: a redirect would resend a proof (or a Vault token) elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def is_loopback(url: str) -> bool:
    """True for http(s)://localhost, 127.x.x.x and [::1] URLs."""
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def build_opener(ssl_context: ssl.SSLContext | None = None, url: str = "") -> urllib.request.OpenerDirector:
    """An opener that never follows redirects. It honours HTTP(S)_PROXY / NO_PROXY from the
    environment like most clients, except for a loopback ``url`` (never through a proxy)."""
    handlers: list[Any] = [_NoRedirect()]
    if ssl_context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
    if url and is_loopback(url):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes


def post_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    payload: dict[str, Any] | None,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    """POST a JSON body; return the status, headers and (size-capped) body of any answer.

    Raises ``OSError`` (``urllib.error.URLError``, ``socket.timeout``, ...) on
    connection failures; HTTP error statuses are returned, not raised.
    """
    data = json.dumps(payload if payload is not None else {}).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method="POST", headers=all_headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        response = err
    with response:
        body = response.read(MAX_RESPONSE_BYTES + 1)
        status = response.status if hasattr(response, "status") else response.code
        resp_headers = {k.lower(): v for k, v in response.headers.items()} if response.headers else {}
    if len(body) > MAX_RESPONSE_BYTES:
        raise OSError(f"answer from {urlsplit(url).netloc} larger than {MAX_RESPONSE_BYTES} bytes")
    return HttpResult(status=status, headers=resp_headers, body=body)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
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
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class WrapInfo:
    """One response-wrapping token as the broker returned it. ``token`` is secret."""

    token: str = field(repr=False)
    accessor: str
    ttl: int | None
    creation_time: str | None
    creation_path: str

    @classmethod
    def from_json(cls, data: Any, name: str) -> "WrapInfo":
        if not isinstance(data, dict):
            raise ValueError(f"{name} is not an object")
        token, accessor, path = data.get("token"), data.get("accessor"), data.get("creation_path")
        for key, value in (("token", token), ("accessor", accessor), ("creation_path", path)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}.{key} is missing")
        ttl = data.get("ttl")
        return cls(
            token=token,
            accessor=accessor,
            ttl=ttl if isinstance(ttl, int) else None,
            creation_time=data.get("creation_time") if isinstance(data.get("creation_time"), str) else None,
            creation_path=path,
        )


@dataclass(frozen=True)
class Issued:
    """The broker's 200 answer."""

    request_id: str
    role: str
    vault_addr: str | None
    role_id_wrap: WrapInfo
    secret_id_wrap: WrapInfo
    attempts: int = 1


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    max_wait: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 30.0

    def backoff(self, retry_number: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        """Full jitter: uniform(0, min(max_delay, base * 2**n)), floored by a capped Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        delay = rng() * ceiling
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def replay_backoff(self, retry_number: int, rng: Callable[[], float]) -> float:
        """After ``proof_replayed``: uniform over 2, 4, 8... seconds, so that processes which
        signed in the same second sign their next proofs in different seconds."""
        return rng() * min(self.max_delay, 2.0 * (2 ** (retry_number - 1)))


def _error_fields(result: HttpResult) -> tuple[str, str, str | None]:
    """(code, message, request_id) from a broker error answer, tolerating non-JSON bodies."""
    code, message, request_id = f"http_{result.status}", "", None
    try:
        data = json.loads(result.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
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
    return code, _one_line(message, 300) or http.client.responses.get(result.status, ""), request_id


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BrokerClient:
    """Calls a login route of the broker with bounded retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"the broker URL must be an absolute http(s) URL, got {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise UsageError("the broker URL must not carry credentials, a query or a fragment")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        if self.retry.max_attempts < 1:
            raise UsageError("--max-attempts must be at least 1")
        self._opener = build_opener(ssl_context, self.base_url)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._log = log

    @property
    def login_url(self) -> str:
        return self.base_url + LOGIN_PATH

    def request_credentials(self, role: str, make_proof: Callable[[], dict[str, str]], *,
                            path: str = LOGIN_PATH, replay_hint: str | None = None) -> Issued:
        """POST the login to ``path``; ``make_proof`` is called once per attempt for a fresh
        proof (the body's fields besides ``role``). ``replay_hint`` explains a
        ``proof_replayed`` refusal to the operator."""
        url = self.base_url + path
        if replay_hint is None:
            replay_hint = "another process with the same AWS credentials signed in the same second?"
        start = self._clock()
        deadline = start + self.retry.max_wait
        last_problem = "no attempt made"
        last_refusal: RefusedError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            payload = {"role": role, **make_proof()}
            remaining = deadline - self._clock()
            timeout = max(0.1, min(self.timeout, remaining))
            retry_after: float | None = None
            last_refusal = None
            try:
                result = post_json(self._opener, url, payload, timeout=timeout)
            except (OSError, http.client.HTTPException) as exc:
                if _is_tls_verification_failure(exc):
                    raise UnavailableError(
                        f"TLS verification of the broker failed ({_describe_connection_error(exc)}); "
                        "check the URL and --ca-cert"
                    ) from None
                last_problem = f"cannot reach the broker: {_describe_connection_error(exc)}"
            else:
                if result.status == 200:
                    return self._parse_issued(result, role, attempt)
                code, message, request_id = _error_fields(result)
                if result.status == 401 and code == REPLAYED_CODE:
                    # SigV4 is deterministic: another process with the same AWS credentials
                    # (a sidecar, a second service on this instance) that signed in the same
                    # second sent the very same proof first. A proof signed in a later second
                    # is a different one, so this refusal alone is worth another attempt.
                    last_refusal = RefusedError(result.status, code, message, request_id=request_id)
                    message += f" ({replay_hint})"
                elif result.status not in RETRYABLE_STATUSES:
                    if 400 <= result.status < 500:
                        raise RefusedError(result.status, code, message, request_id=request_id)
                    raise UnavailableError(
                        f"the broker failed: HTTP {result.status} {code}: {message}", request_id=request_id
                    )
                else:
                    retry_after = parse_retry_after(result.headers.get("retry-after"))
                last_problem = f"HTTP {result.status} {code}: {message}" + (
                    f" (request ID {request_id})" if request_id else ""
                )
            if attempt == self.retry.max_attempts:
                break
            if last_refusal is not None:
                # Spread the colliding processes over different seconds.
                delay = self.retry.replay_backoff(attempt, self._rng)
            else:
                delay = self.retry.backoff(attempt, retry_after, self._rng)
            if self._clock() + delay >= deadline:
                self._log(f"{last_problem}; giving up, --max-wait ({self.retry.max_wait:g}s) would be exceeded")
                if last_refusal is not None:
                    raise last_refusal
                raise UnavailableError(
                    f"the broker is unavailable after {attempt} attempt(s) in "
                    f"{self._clock() - start:.1f}s (--max-wait {self.retry.max_wait:g}s); last: {last_problem}"
                )
            self._log(f"{last_problem}; attempt {attempt}/{self.retry.max_attempts}, retrying in {delay:.1f}s")
            self._sleep(delay)
        if last_refusal is not None:
            raise last_refusal
        raise UnavailableError(
            f"the broker is unavailable after {self.retry.max_attempts} attempt(s); last: {last_problem}"
        )

    @staticmethod
    def _parse_issued(result: HttpResult, role: str, attempts: int) -> Issued:
        try:
            data = json.loads(result.body.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            request_id = data.get("request_id")
            if not isinstance(request_id, str) or not request_id:
                raise ValueError("request_id is missing")
            vault_addr = data.get("vault_addr")
            issued = Issued(
                request_id=request_id,
                role=str(data.get("role") or role),
                vault_addr=vault_addr if isinstance(vault_addr, str) and vault_addr else None,
                role_id_wrap=WrapInfo.from_json(data.get("role_id_wrap"), "role_id_wrap"),
                secret_id_wrap=WrapInfo.from_json(data.get("secret_id_wrap"), "secret_id_wrap"),
                attempts=attempts,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            # The proof is spent and something may have been issued: do not retry.
            raise UnavailableError(f"the broker's 200 answer is unusable: {exc}") from None
        if issued.role != role:
            raise UnavailableError(
                f"the broker answered for role {issued.role!r}, not the requested {role!r}", request_id=request_id
            )
        return issued


def _is_tls_verification_failure(exc: BaseException) -> bool:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ssl.SSLCertVerificationError)


def _describe_connection_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return "timed out"
        return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
