"""Mint wrapped AppRole credentials with the broker's own AppRole.

The broker logs in with its role ID (configuration) and secret ID (Secrets
Manager, fetched once per cold start and again if Vault refuses it), keeps its
token until shortly before it expires, and asks Vault to wrap the role ID and the
new secret ID at creation, so their `creation_path` is the AppRole path itself.
"""

import json
import threading
import time
from dataclasses import dataclass, field

from .concurrency import settle
from .errors import Unavailable
from .vault_client import VaultSession, errors_of, outcome

# A take-back's destroy that failed is tried again after this long.
DESTROY_RETRY_SECONDS = 0.2
# Log in again when less than this share of the token's lifetime is left.
TOKEN_REFRESH_FRACTION = 0.2


@dataclass(frozen=True)
class Wrap:
    token: str = field(repr=False)  # the wrapping token: never in a repr
    accessor: str
    ttl: int
    creation_time: str
    creation_path: str

    def public(self):
        return {"token": self.token, "accessor": self.accessor, "ttl": self.ttl,
                "creation_time": self.creation_time, "creation_path": self.creation_path}


@dataclass(frozen=True)
class Issued:
    role: str
    role_id_wrap: Wrap
    secret_id_wrap: Wrap
    secret_id_accessor: str | None


# The names hvac gave Vault's error statuses (its exception classes): the audit details
# of "Vault failed" keep them, as they read before the broker called Vault directly.
_STATUS_NAMES = {400: "InvalidRequest", 401: "Unauthorized", 403: "Forbidden", 404: "InvalidPath",
                 429: "RateLimitExceeded", 500: "InternalServerError", 501: "VaultNotInitialized",
                 502: "BadGateway", 503: "VaultDown"}


class _LoginRefused(Exception):
    """A 400 at login: the secret ID may have been rotated (never carries the secret ID)."""


class VaultMinter:
    def __init__(self, settings, fetch_secret_id, clock=time.monotonic):
        """Vault through hvac on its own requests session (chalicelib/vault_client.py), in
        BROKER_VAULT_NAMESPACE when it is set."""
        self._session = VaultSession(settings.vault_addr, settings.vault_timeout,
                                     namespace=getattr(settings, "vault_namespace", None))
        self._client = self._session.client()  # its token: the broker's, set at each login
        self._anonymous = self._session.client()  # never holds a token (login)
        # sys/health is the server's, asked outside any namespace (OpenBao answers 400 inside one)
        self._health = self._session.client(in_namespace=False)
        self._mount = settings.vault_approle_mount
        self._role_id = settings.vault_role_id
        self._fetch_secret_id = fetch_secret_id
        self._clock = clock
        self._lock = threading.Lock()
        self._token = None
        self._token_good_until = 0.0
        self._secret_id = None

    # ---- the broker's own session -----------------------------------------

    def _ensure_token(self, force=False):
        with self._lock:
            if not force and self._token and self._clock() < self._token_good_until:
                return
            if self._secret_id is None:
                self._secret_id = self._fetch_secret_id()
            try:
                auth = self._login()
            except _LoginRefused:
                # The secret ID may have been rotated: fetch it again, once.
                self._secret_id = self._fetch_secret_id()
                try:
                    auth = self._login()
                except _LoginRefused as e:
                    raise Unavailable("Vault refused the request", backend="vault",
                                      detail=f"Vault refused to log in: {e}") from None
            self._token = self._client.token = auth["client_token"]
            lease = int(auth.get("lease_duration") or 0)
            self._token_good_until = self._clock() + max(lease * (1 - TOKEN_REFRESH_FRACTION), 1) if lease else float("inf")

    def log_in(self):
        """Log in now: at init (app.py in Lambda), so that the first request finds a token."""
        self._ensure_token()

    def forget_token(self):
        """Log in again at the next call: after a SnapStart restore the token may have expired
        while the snapshot waited, and its lifetime is counted on time.monotonic, which does
        not count that wait (chalicelib/snapstart.py)."""
        with self._lock:
            self._token_good_until = 0.0

    def close_connections(self):
        """Drop the pooled connections to Vault (after a SnapStart restore: their sockets were
        open in the snapshot)."""
        self._session.close()

    def _login(self):
        # Without our token: other threads keep using the old one until the new one is set.
        doc = self._vault_call("log in", self._anonymous.auth.approle.login, role_id=self._role_id,
                               secret_id=self._secret_id, mount_point=self._mount, use_token=False,
                               retry_on_forbidden=False, invalid_request_passes=True)
        auth = (doc or {}).get("auth")
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str) or not auth["client_token"]:
            raise Unavailable("Vault failed", backend="vault",
                              detail="Vault failed to log in: its answer holds no client token")
        return auth

    def _vault_call(self, what, call, *args, retry_on_forbidden=True, invalid_request_passes=False,
                    missing_is_none=False, **kwargs):
        """One hvac call: the JSON document of a 200 (None for any other success); Vault
        being sealed, down or refusing becomes Unavailable. With `missing_is_none`, a 404 is
        None too (as hvac's `read` has it)."""
        for attempt in (1, 2):
            status, doc = outcome(what, call, *args, **kwargs)
            if status < 300:
                return doc if status == 200 else None
            if status == 403:
                if retry_on_forbidden and attempt == 1:
                    self._ensure_token(force=True)  # our token may have been revoked or expired
                    continue
                raise Unavailable("Vault refused the broker", backend="vault",
                                  detail=f"Vault refused to {what}: permission denied (check the broker's Vault policy)")
            if status == 400:
                if invalid_request_passes:
                    raise _LoginRefused(_first_error(doc))
                raise Unavailable("Vault refused the request", backend="vault",
                                  detail=f"Vault refused to {what}: {_first_error(doc)}")
            if status == 503:
                raise Unavailable("Vault is sealed", backend="vault", detail=f"Vault is sealed ({what})")
            if status == 404 and missing_is_none:
                return None
            if status < 400:  # no redirect is followed (chalicelib/vault_client.py)
                raise Unavailable("Vault redirected the request", backend="vault",
                                  detail=f"Vault answered {what} with HTTP {status} (a redirect, not followed)")
            raise Unavailable("Vault failed", backend="vault",
                              detail=f"Vault failed to {what}: {_STATUS_NAMES.get(status, 'UnexpectedError')} "
                                     f"{_first_error(doc)}")
        raise AssertionError("unreachable")

    # ---- issuance ----------------------------------------------------------

    def issue(self, role, issuance, metadata, source_ip=None):
        """A wrapped role ID and a wrapped single-use secret ID for `role`.

        If the secret ID can't be created after the role ID was wrapped, the role
        ID's wrapping token is consumed so that nothing half-issued stays usable.
        """
        self._ensure_token()
        wrap_ttl = f"{issuance.wrap_ttl}s"
        role_path = f"auth/{self._mount}/role/{role}"
        payload = {
            "metadata": json.dumps({k: str(v) for k, v in metadata.items() if v is not None}),
            "ttl": f"{issuance.secret_id_ttl}s",
            "num_uses": issuance.secret_id_num_uses,
        }
        if issuance.bind_source_cidr and source_ip:
            payload["cidr_list"] = [f"{source_ip}/32" if ":" not in source_ip else f"{source_ip}/128"]

        def secret_id():
            # hvac's generate_secret_id has no num_uses/ttl: the endpoint is written as is.
            response = self._vault_call("create a secret ID", self._client.write_data, f"{role_path}/secret-id",
                                        data=payload, wrap_ttl=wrap_ttl)
            wrap = _wrap(response, f"{role_path}/secret-id")
            return wrap, (response.get("wrap_info") or {}).get("wrapped_accessor") or None

        def role_id():
            response = self._vault_call("read the role ID", self._client.read, f"{role_path}/role-id",
                                        wrap_ttl=wrap_ttl, missing_is_none=True)
            return _wrap(response, f"{role_path}/role-id")

        # Both at once; if one fails, the other's result is taken back before the error goes up.
        (secret, secret_error), (role_id_wrap, role_error) = settle(secret_id, role_id)
        if secret_error is None and role_error is None:
            secret_id_wrap, accessor = secret
            return Issued(role, role_id_wrap, secret_id_wrap, accessor)
        error = secret_error or role_error
        undone = []
        if role_id_wrap is not None:
            spent = self.consume_wrapping_token(role_id_wrap.token)
            undone.append(f"the role ID wrapping token (accessor {role_id_wrap.accessor}) "
                          + ("was revoked" if spent else "could NOT be revoked"))
        if secret is not None:
            wrap, accessor = secret
            # Both, whatever the unwrap gives: an unwrap that failed must not leave the secret ID
            # live. Destroyed, the secret ID is spent whatever its wrapping token still holds.
            consumed = self.consume_wrapping_token(wrap.token)
            spent = self.destroy_secret_id(role, accessor) if accessor else consumed
            undone.append(f"the secret ID (accessor {accessor}) " + ("was destroyed" if spent else "could NOT be destroyed"))
        if isinstance(error, Unavailable) and undone:
            error.detail += "; " + "; ".join(undone)
        raise error

    def take_back(self, issued):
        """Make an issuance unusable (used when its audit record could not be written).

        Returns what could not be undone (accessors only), for the error log.
        """
        failures = []
        for wrap in (issued.role_id_wrap, issued.secret_id_wrap):
            if not self.consume_wrapping_token(wrap.token):
                failures.append(f"wrapping accessor {wrap.accessor}")
        if issued.secret_id_accessor and not self.destroy_secret_id(issued.role, issued.secret_id_accessor):
            failures.append(f"secret ID accessor {issued.secret_id_accessor}")
        return failures

    def consume_wrapping_token(self, token):
        """Unwrap a wrapping token and drop what it held; True if it is spent now."""
        try:
            # The wrapping token is the client's token (not in the body: that would need the
            # broker's own token to hold sys/wrapping/unwrap).
            status, _ = outcome("unwrap", self._session.client(token).sys.unwrap)
            return status in (200, 204, 400)  # 400: already used or expired
        except Exception:  # Unavailable: no answer; the token may still be live
            return False

    def destroy_secret_id(self, role, accessor):
        """True once the secret ID is destroyed. A take-back must not leave a secret ID live
        and unrecorded (an orphan): a failure (Vault sealed for a moment, no answer) is
        tried once more; Vault destroys an accessor once, so the second try is safe."""
        for attempt in (1, 2):
            status = self.destroy_secret_id_status(role, accessor)
            if status == "destroyed":
                return True
            if status == "gone" or attempt == 2:
                return False
            time.sleep(DESTROY_RETRY_SECONDS)

    def destroy_secret_id_status(self, role, accessor):
        """Destroy a secret ID by accessor (revocation, incident): "destroyed", "gone" (Vault
        no longer knows it: used up, expired or destroyed before) or "failed: why"."""
        try:
            self._ensure_token()
            self._vault_call("destroy a secret ID", self._client.auth.approle.destroy_secret_id_accessor,
                             role, accessor, mount_point=self._mount)
            return "destroyed"
        except Unavailable as e:
            if "failed to find accessor entry" in (e.detail or ""):
                return "gone"
            return f"failed: {e.detail}"

    def audit_hashes(self, audit_path, values):
        """{name: HMAC} of each value as Vault's audit device at `audit_path` logs it
        (sys/audit-hash), for finding an issuance in Vault's audit log. Best effort:
        what fails is left out, nothing is raised."""
        def one(value):
            doc = self._vault_call("hash for the audit log", self._client.sys.calculate_hash, audit_path, value)
            return (doc.get("data") or doc)["hash"]

        named = [(name, value) for name, value in values.items() if value]
        if not named:
            return {}
        try:
            self._ensure_token()
            outcomes = settle(*(lambda v=value: one(v) for _, value in named))
        except Exception:
            return {}
        return {name: result for (name, _), (result, error) in zip(named, outcomes)
                if error is None and isinstance(result, str)}

    def health(self):
        """None when Vault is reachable, initialised and unsealed; else what is wrong."""
        try:
            # A performance standby answers 473 (hvac has no perfstandbyok): healthy too.
            status, _ = outcome("health", self._health.sys.read_health_status, method="GET", standby_ok=True)
        except Unavailable as e:
            return f"unreachable ({e.detail.rsplit(': ', 1)[-1]})"
        if status in (200, 429, 473):
            return None
        return {503: "sealed", 501: "not initialised"}.get(status, f"HTTP {status}")


def _wrap(response, expected_path):
    info = (response or {}).get("wrap_info") if isinstance(response, dict) else None
    if not info or not info.get("token"):
        raise Unavailable("Vault did not wrap the response", backend="vault",
                          detail=f"no wrap_info for {expected_path}")
    if info.get("creation_path") != expected_path:
        raise Unavailable("Vault wrapped at an unexpected path", backend="vault",
                          detail=f"creation_path {info.get('creation_path')!r}, expected {expected_path!r}")
    return Wrap(info["token"], info.get("accessor", ""), int(info.get("ttl", 0)),
                info.get("creation_time", ""), info["creation_path"])


def _first_error(doc):
    """Vault's first error message (truncated): what it refused, never a token or secret ID."""
    errors = errors_of(doc)
    return errors[0][:200] if errors else ""
