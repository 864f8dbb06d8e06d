"""Vault/OpenBao calls of the client: wrapping lookup, unwrap, AppRole login (through hvac).

The wrapping checks are the client's defence against interception: a wrapping
token can be unwrapped once, so if somebody else got to it first, the lookup or
the unwrap fails; and a token minted elsewhere (say ``sys/wrapping/wrap`` with
a value of an attacker's choosing) has the wrong ``creation_path``. Any of
these raises :class:`~broker.errors.InterceptionError`, never a retry. So does a token minted in
another Vault namespace than the client's (root when ``--vault-namespace`` is not given): the
lookup and unwrap would find it in its own namespace (:func:`broker.vault_trust.check_wrap_namespace`).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from broker.api import Issued, WrapInfo
from broker.errors import InterceptionError, UsageError, VaultError
from broker.http import MAX_RESPONSE_BYTES, check_base_url, is_loopback
from broker.vault_trust import check_wrap_namespace

DEFAULT_APPROLE_MOUNT = "approle"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret found in ``text`` (belt and braces for error messages)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def normalize_mount(mount: str) -> str:
    mount = (mount or "").strip("/")
    if not mount or any(part in ("", ".", "..") for part in mount.split("/")):
        raise UsageError(f"invalid AppRole mount path {mount!r}")
    return mount


def expected_paths(role: str, mount: str = DEFAULT_APPROLE_MOUNT) -> tuple[str, str]:
    """The exact creation paths of the broker's two wrapping tokens for ``role``."""
    mount = normalize_mount(mount)
    return f"auth/{mount}/role/{role}/role-id", f"auth/{mount}/role/{role}/secret-id"


@dataclass(frozen=True)
class AppRoleCredentials:
    role_id: str = field(repr=False)
    secret_id: str = field(repr=False)
    secret_id_accessor: str | None = None


@dataclass(frozen=True)
class VaultLogin:
    client_token: str = field(repr=False)
    accessor: str | None
    lease_duration: int | None
    policies: tuple[str, ...] = ()


class VaultClient:
    """The client's Vault calls, through hvac (one requests session: no redirects followed, answers
    bounded at MAX_RESPONSE_BYTES, proxies from the environment except for a loopback Vault)."""

    def __init__(
        self,
        addr: str,
        *,
        timeout: float = 10.0,
        ca_cert: str | None = None,
        ssl_context: Any = None,  # accepted for callers of earlier versions; ca_cert is what is used
        namespace: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lookup_attempts: int = 3,
    ) -> None:
        import requests

        self.addr = check_base_url(addr, "Vault address")
        self.timeout = timeout
        self.namespace = (namespace or "").strip("/") or None
        self._sleep = sleep
        self._lookup_attempts = max(1, lookup_attempts)
        self._session = requests.Session()
        self._session.verify = ca_cert or True
        if is_loopback(self.addr):
            self._session.trust_env = False  # no proxy for a local Vault (as broker/http.py)
        self._session.hooks["response"].append(_bounded)

    def _client(self, token: str | None = None) -> Any:
        import hvac

        # token never None: hvac would read VAULT_TOKEN or ~/.vault-token instead
        return hvac.Client(url=self.addr, token=token or "", timeout=self.timeout, namespace=self.namespace,
                           session=self._session, allow_redirects=False)

    def _call(self, call: Callable[[], Any], secrets: list[str]) -> tuple[int, Any, str]:
        """(status, JSON document or None, error text without secrets) of one hvac call."""
        import hvac
        import requests

        try:
            result = call()
        except _Oversized as exc:
            raise VaultError(f"Vault at {self.addr} answered with more than {MAX_RESPONSE_BYTES} bytes "
                             f"(HTTP {exc.status})") from None
        except hvac.exceptions.VaultError as exc:
            status = _STATUS_OF.get(type(exc).__name__, 0)
            errors = exc.errors if isinstance(exc.errors, list) else []
            text = "; ".join(str(e) for e in errors) or http.client.responses.get(status, type(exc).__name__)
            return status, None, redact(" ".join(text.split())[:300], secrets)
        except requests.exceptions.RequestException as exc:
            raise VaultError(f"cannot reach Vault at {self.addr}: {type(exc).__name__}") from None
        if isinstance(result, dict):
            return 200, result, ""
        if isinstance(result, requests.Response):  # a success other than 200, or a redirect (not followed)
            status = result.status_code
            return status, None, "" if status < 300 else f"HTTP {status} (a redirect, not followed)"
        return 200, None, ""

    def lookup_wrapping(self, token: str) -> tuple[int, dict[str, Any] | None, str]:
        """``sys/wrapping/lookup``: (status, data or None, error text). Retries only Vault being down."""
        for attempt in range(1, self._lookup_attempts + 1):
            try:
                # hvac has no method for it (its Wrapping class has wrap and unwrap): the path, through hvac
                status, body, error = self._call(
                    lambda: self._client().write_data("sys/wrapping/lookup", data={"token": token}), [token])
            except VaultError:
                if attempt == self._lookup_attempts:
                    raise
                self._sleep(0.5 * attempt)
                continue
            if status >= 500 and attempt < self._lookup_attempts:
                self._sleep(0.5 * attempt)
                continue
            data = body.get("data") if isinstance(body, dict) else None
            return status, data if isinstance(data, dict) else None, error
        raise AssertionError("unreachable")  # pragma: no cover

    def unwrap(self, token: str) -> tuple[int, dict[str, Any] | None, str]:
        """``sys/wrapping/unwrap`` with the wrapping token as the client's token: (status, data, error text)."""
        status, body, error = self._call(lambda: self._client(token).sys.unwrap(), [token])
        data = body.get("data") if isinstance(body, dict) else None
        return status, data if isinstance(data, dict) else None, error

    def approle_login(self, role_id: str, secret_id: str, *, mount: str = DEFAULT_APPROLE_MOUNT) -> VaultLogin:
        mount = normalize_mount(mount)
        status, body, error = self._call(
            lambda: self._client().auth.approle.login(role_id, secret_id, use_token=False, mount_point=mount),
            [role_id, secret_id])
        auth = body.get("auth") if isinstance(body, dict) else None
        if status != 200 or not isinstance(auth, dict) or not auth.get("client_token"):
            raise VaultError(
                f"AppRole login at auth/{mount}/login failed: HTTP {status}: {error or 'no client token'}",
                status=status,
            )
        lease = auth.get("lease_duration")
        return VaultLogin(
            client_token=str(auth["client_token"]),
            accessor=auth.get("accessor") if isinstance(auth.get("accessor"), str) else None,
            lease_duration=lease if isinstance(lease, int) else None,
            policies=tuple(str(p) for p in auth.get("policies") or ()),
        )


# hvac's exception classes by the status they stand for (hvac.exceptions.VaultError.from_status).
_STATUS_OF = {"InvalidRequest": 400, "Unauthorized": 401, "Forbidden": 403, "InvalidPath": 404,
              "RateLimitExceeded": 429, "InternalServerError": 500, "VaultNotInitialized": 501,
              "BadGateway": 502, "VaultDown": 503}


class _Oversized(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _bounded(response: Any, **_: Any) -> Any:
    """A requests response hook: the body read now, at most MAX_RESPONSE_BYTES of it."""
    data = response.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True) or b""
    if len(data) > MAX_RESPONSE_BYTES:
        response.close()
        raise _Oversized(response.status_code)
    response._content = data
    response._content_consumed = True
    return response


def _check_wrap(vault: VaultClient, wrap: WrapInfo, expected: str, what: str, request_id: str) -> None:
    def intercepted(detail: str) -> InterceptionError:
        return InterceptionError(detail, what=what, accessor=wrap.accessor, request_id=request_id)

    if wrap.creation_path != expected:
        raise intercepted(f"the broker reported creation path {wrap.creation_path!r}, expected {expected!r}")
    # Vault looks a token up in the namespace it was minted in: a child namespace's token at the same
    # relative path would pass the lookup below. Refused before anything is sent.
    check_wrap_namespace(wrap, what, request_id, namespace=vault.namespace)
    status, data, error = vault.lookup_wrapping(wrap.token)
    if status >= 500:
        raise VaultError(f"Vault could not look up the wrapping token of the {what}: HTTP {status}: {error}",
                         status=status, request_id=request_id)
    if status != 200 or data is None:
        raise intercepted(f"Vault does not know the wrapping token (lookup: HTTP {status}: {error or 'no data'}): "
                          "it expired, or was already unwrapped by someone else")
    actual = data.get("creation_path")
    if actual != expected:
        raise intercepted(f"the wrapping token was created at {actual!r}, not at {expected!r}")


def unwrap_role_id_for_agent(
    vault: VaultClient, issued: Issued, *, mount: str = DEFAULT_APPROLE_MOUNT
) -> str:
    """The ``--agent-dir`` hand-off: look up both wrapping tokens and check their creation
    paths, unwrap the role ID only, and leave the secret ID wrapped.

    The secret ID's wrapping token is handed to a Vault/OpenBao Agent as is; the Agent
    (``secret_id_response_wrapping_path``) checks its creation path again and unwraps it.
    """
    role_id_path, secret_id_path = expected_paths(issued.role, mount)
    rid = issued.request_id
    _check_wrap(vault, issued.role_id_wrap, role_id_path, "role ID", rid)
    _check_wrap(vault, issued.secret_id_wrap, secret_id_path, "secret ID", rid)
    try:
        status, data, error = vault.unwrap(issued.role_id_wrap.token)
    except VaultError as exc:
        raise VaultError(f"{exc.message} while unwrapping the role ID; the wrapping token may be spent",
                         request_id=rid) from None
    role_id = data.get("role_id") if data else None
    if status != 200 or not isinstance(role_id, str) or not role_id:
        raise InterceptionError(
            f"unwrap failed after a good lookup (HTTP {status}: {error or 'no role_id in the answer'}): "
            "someone may have unwrapped it in between",
            what="role ID", accessor=issued.role_id_wrap.accessor, request_id=rid,
        )
    return role_id


def unwrap_credentials(
    vault: VaultClient, issued: Issued, *, mount: str = DEFAULT_APPROLE_MOUNT
) -> AppRoleCredentials:
    """Look up both wrapping tokens, check their creation paths, then unwrap both."""
    role_id_path, secret_id_path = expected_paths(issued.role, mount)
    rid = issued.request_id
    _check_wrap(vault, issued.role_id_wrap, role_id_path, "role ID", rid)
    _check_wrap(vault, issued.secret_id_wrap, secret_id_path, "secret ID", rid)

    def unwrap(wrap: WrapInfo, what: str, key: str) -> dict[str, Any]:
        try:
            status, data, error = vault.unwrap(wrap.token)
        except VaultError as exc:
            raise VaultError(f"{exc.message} while unwrapping the {what}; the wrapping token may be spent",
                             request_id=rid) from None
        if status != 200 or data is None or not isinstance(data.get(key), str) or not data.get(key):
            raise InterceptionError(
                f"unwrap failed after a good lookup (HTTP {status}: {error or f'no {key} in the answer'}): "
                "someone may have unwrapped it in between",
                what=what, accessor=wrap.accessor, request_id=rid,
            )
        return data

    role_data = unwrap(issued.role_id_wrap, "role ID", "role_id")
    secret_data = unwrap(issued.secret_id_wrap, "secret ID", "secret_id")
    accessor = secret_data.get("secret_id_accessor")
    return AppRoleCredentials(
        role_id=role_data["role_id"],
        secret_id=secret_data["secret_id"],
        secret_id_accessor=accessor if isinstance(accessor, str) else None,
    )
