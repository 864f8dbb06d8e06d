"""Vault's HTTP API as the broker's two Vault identities call it (chalicelib/minter.py,
chalicelib/revoker.py): a JSON body in, (status, document) out, through the broker's
pools (chalicelib/http_client.py).

Why not hvac: it is a layer over requests, and importing both is a large share of a
cold start (issue 14). The broker needs a handful of endpoints whose shape is fixed
(`/v1/<path>`, `X-Vault-Token`, `X-Vault-Wrap-TTL`, JSON), and each caller maps the
status codes itself, as it did with hvac's exceptions.

Redirects are not followed (the pools never do): a Vault standby forwards requests
to the active node; one that answers with a redirect is reported as such.
"""

import json

from .errors import Unavailable
from .http_client import HttpError

MAX_ANSWER_BYTES = 1 << 20  # a wrapped secret ID, a login, a token lookup: a few KiB


class VaultHttp:
    """Calls to one Vault address. Thread-safe (the pools are)."""

    def __init__(self, pools, addr, timeout):
        self._pools = pools
        self._base = addr.rstrip("/") + "/v1/"
        self._timeout = timeout

    def answer(self, method, path, *, body=None, token=None, wrap_ttl=None, max_bytes=MAX_ANSWER_BYTES):
        """(status, document or None, oversized) of one call. Raises HttpError when no
        answer came (connection, TLS, timeout): what it names is never a secret."""
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if wrap_ttl:
            headers["X-Vault-Wrap-TTL"] = wrap_ttl
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        answer = self._pools.request(method, self._base + path, body=data, headers=headers,
                                     connect_timeout=self._timeout, read_timeout=self._timeout,
                                     max_bytes=max_bytes)
        if len(answer.data) > max_bytes:
            return answer.status, None, True
        return answer.status, _document(answer.data), False

    def call(self, method, path, *, what, body=None, token=None, wrap_ttl=None, max_bytes=MAX_ANSWER_BYTES):
        """(status, document or None) of one call. No answer, or an answer over `max_bytes`,
        is Unavailable naming `what` (never a token or a secret ID)."""
        try:
            status, doc, oversized = self.answer(method, path, body=body, token=token, wrap_ttl=wrap_ttl,
                                                 max_bytes=max_bytes)
        except HttpError as e:
            raise Unavailable("Vault could not be reached", backend="vault",
                              detail=f"Vault unreachable ({what}): {e.kind}") from None
        if oversized:
            raise Unavailable("Vault answered with an oversized response", backend="vault",
                              detail=f"Vault's answer ({what}, HTTP {status}) is over {max_bytes} bytes")
        return status, doc


def _document(data):
    """The JSON object of an answer, or None (empty, not JSON, not an object)."""
    if not data:
        return None
    try:
        doc = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return None
    return doc if isinstance(doc, dict) else None


def errors_of(doc):
    """Vault's `errors` list of an answer (strings), or []."""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [str(e) for e in errors] if isinstance(errors, list) else []
