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
from .vault_http import MAX_ANSWER_BYTES, VaultHttp

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
    def __init__(self, *, addr, mount, role_id, fetch_secret_id, pools, timeout, clock=time.monotonic):
        """`pools`: the broker's HTTP client (chalicelib/http_client.py)."""
        self._vault = VaultHttp(pools, addr, timeout)
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

    def _ensure_token(self, force=False):
        with self._lock:
            if not force and self._token and self._clock() < self._good_until:
                return self._token
            if self._secret_id is None:
                self._secret_id = self._fetch_secret_id()
            status, doc = self._post("auth/{}/login".format(self._mount),
                                     {"role_id": self._role_id, "secret_id": self._secret_id}, token=None)
            if status == 400:  # rotated: fetch it again, once
                self._secret_id = self._fetch_secret_id()
                status, doc = self._post(f"auth/{self._mount}/login",
                                         {"role_id": self._role_id, "secret_id": self._secret_id}, token=None)
            auth = (doc or {}).get("auth")
            if status != 200 or not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
                raise Unavailable("Vault refused the revoking identity", backend="vault",
                                  detail=f"revoker login: HTTP {status} {_errors(doc)}")
            self._token = auth["client_token"]
            lease = int(auth.get("lease_duration") or 0)
            self._good_until = self._clock() + max(lease * (1 - TOKEN_REFRESH_FRACTION), 1) if lease else float("inf")
            return self._token

    def _request(self, method, path, body=None, token=None):
        """(status, JSON document or None); no answer (or an oversized one) is Unavailable."""
        max_bytes = MAX_LIST_BYTES if path.startswith("auth/token/accessors") else MAX_ANSWER_BYTES
        return self._vault.call(method, path, what=path, body=body, token=token, max_bytes=max_bytes)

    def _post(self, path, body, token=None):
        return self._request("POST", path, body, token)

    def _call(self, method, path, body=None):
        """An authenticated call: (status, doc); a 403 logs in again once (token revoked or expired)."""
        for attempt in (1, 2):
            status, doc = self._request(method, path, body, self._ensure_token(force=attempt == 2))
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
            status, doc = self._call("POST", f"auth/{self._mount}/role/{role}/secret-id-accessor/destroy",
                                     {"secret_id_accessor": accessor})
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
            status, doc = self._call("POST", "auth/token/revoke-accessor", {"accessor": accessor})
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
        status, doc = self._call("POST", "auth/token/lookup-accessor", {"accessor": accessor})
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
        status, doc = self._call("GET", "auth/token/accessors?list=true")
        if status == 404:
            return result
        if status != 200:
            raise Unavailable("Vault refused to list tokens", backend="vault",
                              detail=f"LIST auth/token/accessors: HTTP {status} {_errors(doc)}")
        accessors = ((doc or {}).get("data") or {}).get("keys") or []
        result.total = len(accessors)
        token = self._ensure_token()

        def lookup(accessor):
            for attempt in (1, 2):
                status, doc = self._request("POST", "auth/token/lookup-accessor", {"accessor": accessor}, token)
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
        status, doc = self._call("GET", "auth/token/accessors?list=true")
        return len(((doc or {}).get("data") or {}).get("keys") or []) if status == 200 else 0

    def health(self):
        try:
            self._ensure_token()
            return None
        except Unavailable as e:
            return e.detail


def _errors(doc):
    errors = (doc or {}).get("errors") if isinstance(doc, dict) else None
    return "; ".join(str(e) for e in errors)[:200] if errors else ""
