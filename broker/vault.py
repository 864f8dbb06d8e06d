"""Vault/OpenBao calls of the client: wrapping lookup, unwrap, AppRole login.

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
from urllib.parse import quote

from broker.api import Issued, WrapInfo
from broker.errors import InterceptionError, UsageError, VaultError
from broker.http import CONNECTION_ERRORS, HttpResult, build_opener, check_base_url, post_json
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
    """A few unauthenticated or token-in-header POSTs to Vault, standard library only."""

    def __init__(
        self,
        addr: str,
        *,
        timeout: float = 10.0,
        ssl_context: Any = None,
        namespace: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lookup_attempts: int = 3,
    ) -> None:
        self.addr = check_base_url(addr, "Vault address")
        self.timeout = timeout
        self.namespace = namespace or None
        self._opener = build_opener(ssl_context, self.addr)
        self._sleep = sleep
        self._lookup_attempts = max(1, lookup_attempts)

    def _post(self, path: str, payload: dict[str, Any], *, token: str | None = None) -> HttpResult:
        headers = {}
        if token:
            headers["X-Vault-Token"] = token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        try:
            return post_json(self._opener, f"{self.addr}/v1/{path}", payload, timeout=self.timeout, headers=headers)
        except CONNECTION_ERRORS as exc:
            raise VaultError(f"cannot reach Vault at {self.addr}: {type(exc).__name__}: {exc}") from None

    def lookup_wrapping(self, token: str) -> tuple[int, dict[str, Any] | None, str]:
        """``sys/wrapping/lookup``: (status, data or None, error text). Retries only Vault being down."""
        for attempt in range(1, self._lookup_attempts + 1):
            try:
                result = self._post("sys/wrapping/lookup", {"token": token})
            except VaultError:
                if attempt == self._lookup_attempts:
                    raise
                self._sleep(0.5 * attempt)
                continue
            if result.status >= 500 and attempt < self._lookup_attempts:
                self._sleep(0.5 * attempt)
                continue
            body = _json(result)
            data = body.get("data") if isinstance(body, dict) else None
            return result.status, data if isinstance(data, dict) else None, _errors(result, body, [token])
        raise AssertionError("unreachable")  # pragma: no cover

    def unwrap(self, token: str) -> tuple[int, dict[str, Any] | None, str]:
        """``sys/wrapping/unwrap`` with the wrapping token in the header: (status, data, error text)."""
        result = self._post("sys/wrapping/unwrap", {}, token=token)
        body = _json(result)
        data = body.get("data") if isinstance(body, dict) else None
        return result.status, data if isinstance(data, dict) else None, _errors(result, body, [token])

    def approle_login(self, role_id: str, secret_id: str, *, mount: str = DEFAULT_APPROLE_MOUNT) -> VaultLogin:
        path = f"auth/{quote(normalize_mount(mount))}/login"
        result = self._post(path, {"role_id": role_id, "secret_id": secret_id})
        body = _json(result)
        auth = body.get("auth") if isinstance(body, dict) else None
        if result.status != 200 or not isinstance(auth, dict) or not auth.get("client_token"):
            raise VaultError(
                f"AppRole login at auth/{normalize_mount(mount)}/login failed: HTTP {result.status}: "
                f"{_errors(result, body, [role_id, secret_id])}",
                status=result.status,
            )
        lease = auth.get("lease_duration")
        return VaultLogin(
            client_token=str(auth["client_token"]),
            accessor=auth.get("accessor") if isinstance(auth.get("accessor"), str) else None,
            lease_duration=lease if isinstance(lease, int) else None,
            policies=tuple(str(p) for p in auth.get("policies") or ()),
        )


def _json(result: HttpResult) -> Any:
    return result.json()


def _errors(result: HttpResult, body: Any, secrets: list[str]) -> str:
    if result.status < 400:
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = http.client.responses.get(result.status, "error")
    return redact(" ".join(text.split())[:300], secrets)


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
