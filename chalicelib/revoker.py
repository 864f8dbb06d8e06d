"""The revoking identity: a Vault session used only by the revocation route.

Revoking what was issued needs powers the issuing identity (chalicelib/minter.py) must
not have: list every token accessor, look any token up by accessor, and revoke any
token by accessor (`sudo` on `auth/token/accessors`). So a revocation logs in with its
own AppRole (`secret-zero-revoker`, policy policies/vault/secret-zero-revoker.hcl,
created by `broker vault setup`), whose secret ID sits in its own Secrets Manager secret
(BROKER_REVOKER_SECRET_ID_SECRET); the issuing path never loads it.

How tokens are found: AppRole copies a secret ID's metadata into the metadata of the
token it logs in, and the broker puts its `request_id` in every secret ID's metadata.
A scan lists the token accessors, looks each up (in parallel) and keeps those whose
`meta.request_id` is one the revocation reaches. Revoking a token by accessor revokes
its child tokens too. The cost is one lookup per live token (docs/audit.md has the
figures at 10,000 tokens).
"""

import threading
import time
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

from .errors import Unavailable
from .vault_client import MAX_ANSWER_BYTES, VaultSession, outcome

TOKEN_REFRESH_FRACTION = 0.2
SCAN_WORKERS = 16
SCAN_CHUNK = 256  # lookups between two looks at the deadline
# The token accessor list grows with the live tokens (~30 bytes each: 2 MB at 75,000).
MAX_LIST_BYTES = 64 << 20


@dataclass
class Scan:
    found: dict  # {request_id: [accessors]}
    looked_up: int
    total: int
    finished: bool


class VaultRevoker:
    def __init__(self, *, addr, mount, role_id, fetch_secret_id, timeout, namespace=None, clock=time.monotonic):
        """Vault through hvac on its own requests session (chalicelib/vault_client.py), in
        `namespace` (BROKER_VAULT_NAMESPACE) when it is set."""
        self._session = VaultSession(addr, timeout, namespace=namespace, max_bytes_for=_max_bytes,
                                     connections=SCAN_WORKERS + 4)
        self._anonymous = self._session.client()  # the login
        self._client = self._session.client()  # its token: the revoker's, set at each login
        self._mount = mount
        self._role_id = role_id
        self._fetch_secret_id = fetch_secret_id
        self._clock = clock
        self._lock = threading.Lock()
        self._token = None
        self._good_until = 0.0
        self._secret_id = None
        self._pool = ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="revoker")

    # ---- the session -----------------------------------------------------------------------

    def forget_token(self):
        """Log in again at the next call (after a SnapStart restore; see VaultMinter.forget_token)."""
        with self._lock:
            self._good_until = 0.0

    def close_connections(self):
        """Drop the pooled connections to Vault (after a SnapStart restore)."""
        self._session.close()

    def _login(self):
        return outcome(f"auth/{self._mount}/login", self._anonymous.auth.approle.login, role_id=self._role_id,
                       secret_id=self._secret_id, mount_point=self._mount, use_token=False)

    def _ensure_token(self, force=False):
        with self._lock:
            if not force and self._token and self._clock() < self._good_until:
                return self._token
            if self._secret_id is None:
                self._secret_id = self._fetch_secret_id()
            status, doc = self._login()
            if status == 400:  # rotated: fetch it again, once
                self._secret_id = self._fetch_secret_id()
                status, doc = self._login()
            auth = (doc or {}).get("auth")
            if status != 200 or not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
                raise Unavailable("Vault refused the revoking identity", backend="vault",
                                  detail=f"revoker login: HTTP {status} {_errors(doc)}")
            self._token = self._client.token = auth["client_token"]
            lease = int(auth.get("lease_duration") or 0)
            self._good_until = self._clock() + max(lease * (1 - TOKEN_REFRESH_FRACTION), 1) if lease else float("inf")
            return self._token

    def _call(self, path, call, *args, **kwargs):
        """An authenticated hvac call: (status, doc); a 403 logs in again once (token revoked or
        expired). No answer (or an oversized one) is Unavailable naming `path`."""
        for attempt in (1, 2):
            self._ensure_token(force=attempt == 2)
            status, doc = outcome(path, call, *args, **kwargs)
            if status == 403 and attempt == 1:
                continue
            if status == 403:
                raise Unavailable("Vault refused the revoking identity", backend="vault",
                                  detail=f"permission denied on {path} (check the policy secret-zero-revoker)")
            if status == 503:
                raise Unavailable("Vault is sealed", backend="vault", detail=f"Vault is sealed ({path})")
            return status, doc
        raise AssertionError("unreachable")

    # ---- what a revocation does ---------------------------------------------------------------

    def destroy_secret_id(self, role, accessor):
        """"destroyed", "gone" (used up, expired, destroyed before) or "failed: why"."""
        try:
            status, doc = self._call(f"auth/{self._mount}/role/{role}/secret-id-accessor/destroy",
                                     self._client.auth.approle.destroy_secret_id_accessor, role, accessor,
                                     mount_point=self._mount)
        except Unavailable as e:
            return f"failed: {e.detail}"
        if status in (200, 204):
            return "destroyed"
        if "failed to find accessor entry" in _errors(doc) or status == 404:
            return "gone"
        return f"failed: HTTP {status} {_errors(doc)}"

    def revoke_token(self, accessor):
        """Revoke a token (and its children) by accessor: "revoked", "gone" (used, expired or
        revoked before) or "failed: why". Wrapping tokens are tokens too."""
        try:
            status, doc = self._call("auth/token/revoke-accessor", self._client.auth.token.revoke_accessor, accessor)
        except Unavailable as e:
            return f"failed: {e.detail}"
        if status == 204:
            return "revoked"
        if status == 200 and any("No token found" in str(w) for w in (doc or {}).get("warnings") or []):
            return "gone"
        if status == 400 and "invalid accessor" in _errors(doc):
            return "gone"
        if status == 200:
            return "revoked"
        return f"failed: HTTP {status} {_errors(doc)}"

    def lookup(self, accessor):
        """A token's metadata by accessor, or None when Vault knows no such token."""
        status, doc = self._call("auth/token/lookup-accessor", self._client.auth.token.lookup_accessor, accessor)
        if status == 200:
            return ((doc or {}).get("data") or {}).get("meta") or {}
        if status == 400:
            return None
        raise Unavailable("Vault failed a token lookup", backend="vault",
                          detail=f"lookup-accessor: HTTP {status} {_errors(doc)}")

    def scan(self, request_ids, deadline=None):
        """The live tokens whose metadata names one of `request_ids`, by listing every token
        accessor and looking each up (SCAN_WORKERS at once) until `deadline` (time.monotonic).
        Raises Unavailable if Vault fails; a scan cut short by the deadline says so."""
        wanted = set(request_ids)
        result = Scan({r: [] for r in wanted}, 0, 0, True)
        if not wanted:
            return result
        status, doc = self._call("auth/token/accessors", self._client.auth.token.list_accessors)
        if status == 404:
            return result
        if status != 200:
            raise Unavailable("Vault refused to list tokens", backend="vault",
                              detail=f"LIST auth/token/accessors: HTTP {status} {_errors(doc)}")
        accessors = ((doc or {}).get("data") or {}).get("keys") or []
        result.total = len(accessors)
        client = self._session.client(self._ensure_token())  # this scan's token, whatever a login sets meanwhile

        def lookup(accessor):
            for attempt in (1, 2):
                status, doc = outcome("auth/token/lookup-accessor", client.auth.token.lookup_accessor, accessor)
                if status == 200:
                    return ((doc or {}).get("data") or {}).get("meta") or {}
                if status == 400:  # revoked or expired since the list
                    return {}
                if attempt == 2:
                    raise Unavailable("Vault failed a token lookup", backend="vault",
                                      detail=f"lookup-accessor: HTTP {status} {_errors(doc)}")
            return {}

        for start in range(0, len(accessors), SCAN_CHUNK):
            if deadline is not None and self._clock() >= deadline:
                result.finished = False
                break
            chunk = accessors[start:start + SCAN_CHUNK]
            for accessor, meta in zip(chunk, self._pool.map(lookup, chunk)):
                request_id = meta.get("request_id")
                if request_id in wanted:
                    result.found[request_id].append(accessor)
            result.looked_up += len(chunk)
        return result

    def tokens_of(self, request_ids):
        """{request_id: [token accessors]}: a full scan, however long it takes."""
        return self.scan(request_ids).found

    def count_tokens(self):
        status, doc = self._call("auth/token/accessors", self._client.auth.token.list_accessors)
        return len(((doc or {}).get("data") or {}).get("keys") or []) if status == 200 else 0

    def health(self):
        try:
            self._ensure_token()
            return None
        except Unavailable as e:
            return e.detail


def _max_bytes(path):
    """The bound of an answer: the token accessor list grows with the live tokens."""
    return MAX_LIST_BYTES if path.startswith("/v1/auth/token/accessors") else MAX_ANSWER_BYTES


def _errors(doc):
    errors = (doc or {}).get("errors") if isinstance(doc, dict) else None
    return "; ".join(str(e) for e in errors)[:200] if errors else ""
