"""The call to the broker: ``POST /v1/credentials/aws`` (or ``/gcp``), with honest retries.

Retried with exponential backoff and full jitter, within ``--max-attempts`` and
``--max-wait``: 500, 502, 503, 504 (API Gateway answers 500 when Lambda throttles; the
broker itself never answers 500 to any input), connection errors and timeouts, and
401 ``proof_replayed``, which a fresh proof cures. Never retried either: an answer that cannot be
used once the request was sent (a malformed 200, a body over the 1 MiB cap). A ``Retry-After`` is a floor for the
next delay; when it does not fit in what is left of ``--max-wait`` the client stops at
once and says when to retry. 429 (rate limited) is not an outage: the client waits
what ``Retry-After`` says when that fits, else stops at once with its own exit code
(10) saying when to retry. Never retried: the other 4xx, which are refusals. A fresh
proof is made for every attempt, because the broker spends each proof once.
"""

from __future__ import annotations

import json
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from broker.errors import RateLimitedError, RefusedError, UnavailableError, UsageError
from broker.http import (  # noqa: F401 - build_opener/post_json/HttpResult are re-exported for bench/
    CONNECTION_ERRORS,
    AnswerTooLarge,
    HttpResult,
    broker_error_fields,
    build_opener,
    check_base_url,
    describe_connection_error,
    is_tls_verification_failure,
    parse_retry_after,
    post_json,
)

LOGIN_PATH = "/v1/credentials/aws"
REGISTRATION_KEY = re.compile(r"[A-Za-z0-9_-]{43}")  # the broker's secrets.token_urlsafe(32)
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
RATE_LIMITED = 429
REPLAYED_CODE = "proof_replayed"


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
    # The namespace the broker minted in (``vault_namespace``; None: the root namespace), and whether
    # the answer named one at all (brokers before namespaces did not).
    vault_namespace: str | None = None
    names_namespace: bool = False
    # registers the logged-in token (POST /v1/tokens); None from a broker that sends none
    registration_key: str | None = field(default=None, repr=False)  # a secret: never in a repr


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    max_wait: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 20.0

    def backoff(self, retry_number: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        """Full jitter: uniform(0, min(max_delay, base * 2**n)), floored by Retry-After (whole:
        the caller checks that it fits in --max-wait)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        delay = rng() * ceiling
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def replay_backoff(self, retry_number: int, rng: Callable[[], float]) -> float:
        """After ``proof_replayed``: uniform over 2, 4, 8... seconds, so that processes which
        signed in the same second sign their next proofs in different seconds."""
        return rng() * min(self.max_delay, 2.0 * (2 ** (retry_number - 1)))


def when_text(seconds: float) -> str:
    """"1122 s (at 14:03:12 UTC)": a wait and the wall-clock time it ends."""
    at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return f"{seconds:.0f} s (at {at.strftime('%H:%M:%S')} UTC)"


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
        # https only, but http on loopback (a local stack): proofs are bearer credentials.
        self.base_url = check_base_url(base_url, "broker URL")
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
        rate_limited: RateLimitedError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            payload = {"role": role, **make_proof()}
            remaining = deadline - self._clock()
            timeout = max(0.1, min(self.timeout, remaining))
            retry_after: float | None = None
            last_refusal = rate_limited = None
            try:
                result = post_json(self._opener, url, payload, timeout=timeout)
            except AnswerTooLarge as exc:
                # The request was sent and its proof spent; something may have been issued: an
                # unusable answer, like a malformed 200, is not retried.
                raise UnavailableError(f"the broker's answer is unusable: {exc}") from None
            except CONNECTION_ERRORS as exc:
                if is_tls_verification_failure(exc):
                    raise UnavailableError(
                        f"TLS verification of the broker failed ({describe_connection_error(exc)}); "
                        "check the URL and --ca-cert"
                    ) from None
                last_problem = f"cannot reach the broker: {describe_connection_error(exc)}"
            else:
                if result.status == 200:
                    return self._parse_issued(result, role, attempt)
                code, message, request_id = broker_error_fields(result)
                with_id = f" (request ID {request_id})" if request_id else ""
                if result.status == 401 and code == REPLAYED_CODE:
                    # SigV4 is deterministic: another process with the same AWS credentials
                    # (a sidecar, a second service on this instance) that signed in the same
                    # second sent the very same proof first. A proof signed in a later second
                    # is a different one, so this refusal alone is worth another attempt.
                    last_refusal = RefusedError(result.status, code, message, request_id=request_id)
                    message += f" ({replay_hint})"
                elif result.status == RATE_LIMITED:
                    retry_after = parse_retry_after(result.headers.get("retry-after"))
                    rate_limited = self._rate_limited(code, message, retry_after, deadline, request_id)
                    if retry_after is not None and self._clock() + retry_after >= deadline:
                        raise rate_limited  # waiting would not fit: say when, now
                elif result.status in RETRYABLE_STATUSES:
                    retry_after = parse_retry_after(result.headers.get("retry-after"))
                    if retry_after is not None and self._clock() + retry_after >= deadline:
                        raise UnavailableError(
                            f"the broker is unavailable (HTTP {result.status} {code}: {message}) and asks to "
                            f"wait {when_text(retry_after)}, more than what is left of --max-wait "
                            f"({self.retry.max_wait:g} s); retry after that", request_id=request_id)
                elif 400 <= result.status < 500:
                    raise RefusedError(result.status, code, message, request_id=request_id)
                else:
                    raise UnavailableError(
                        f"the broker failed: HTTP {result.status} {code}: {message}", request_id=request_id
                    )
                last_problem = f"HTTP {result.status} {code}: {message}{with_id}"
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
                if rate_limited is not None:
                    raise rate_limited
                raise UnavailableError(
                    f"the broker is unavailable after {attempt} attempt(s) in "
                    f"{self._clock() - start:.1f}s (--max-wait {self.retry.max_wait:g}s); last: {last_problem}"
                )
            self._log(f"{last_problem}; attempt {attempt}/{self.retry.max_attempts}, retrying in {delay:.1f}s")
            self._sleep(delay)
        if last_refusal is not None:
            raise last_refusal
        if rate_limited is not None:
            raise RateLimitedError(
                f"rate limited by the broker on each of {self.retry.max_attempts} attempt(s); last: {last_problem}; "
                "retry later", retry_after=rate_limited.retry_after, request_id=rate_limited.request_id)
        raise UnavailableError(
            f"the broker is unavailable after {self.retry.max_attempts} attempt(s); last: {last_problem}"
        )

    def _rate_limited(self, code: str, message: str, retry_after: float | None, deadline: float,
                      request_id: str | None) -> RateLimitedError:
        """The error to raise if this 429 ends the attempts; it says when to retry."""
        if retry_after is None:
            when = "it gave no Retry-After; retry later"
        elif self._clock() + retry_after >= deadline:
            when = (f"it asks to wait {when_text(retry_after)}, more than what is left of --max-wait "
                    f"({self.retry.max_wait:g} s): retry after that")
        else:
            when = f"retry after {when_text(retry_after)}"
        return RateLimitedError(f"rate limited by the broker (HTTP 429 {code}: {message}); {when}",
                                retry_after=retry_after, request_id=request_id)

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
            key = data.get("token_registration_key")
            issued = Issued(
                request_id=request_id,
                role=str(data.get("role") or role),
                vault_addr=vault_addr if isinstance(vault_addr, str) and vault_addr else None,
                role_id_wrap=WrapInfo.from_json(data.get("role_id_wrap"), "role_id_wrap"),
                secret_id_wrap=WrapInfo.from_json(data.get("secret_id_wrap"), "secret_id_wrap"),
                attempts=attempts,
                vault_namespace=_namespace_of(data),
                names_namespace="vault_namespace" in data,
                registration_key=key if isinstance(key, str) and REGISTRATION_KEY.fullmatch(key) else None,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            # The proof is spent and something may have been issued: do not retry.
            raise UnavailableError(f"the broker's 200 answer is unusable: {exc}") from None
        if issued.role != role:
            raise UnavailableError(
                f"the broker answered for role {issued.role!r}, not the requested {role!r}", request_id=request_id
            )
        return issued


def _namespace_of(data: dict) -> str | None:
    """The answer's ``vault_namespace`` ("" and "root" are the root namespace: None)."""
    value = data.get("vault_namespace")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("vault_namespace is not a string")
    value = value.strip("/")
    return None if value in ("", "root") else value
