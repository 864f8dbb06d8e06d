"""Helpers of the security-team tests: signed admin proofs in the X-Broker-Proof header."""

import base64
import json
import secrets
import threading
import time
from datetime import datetime, timezone

from tests.sigv4 import sign, signed_login

_used_seconds = set()
_lock = threading.Lock()


def fresh_when():
    """A signing time (within the broker's clock skew) that no other proof of this test
    session used: the broker spends each proof once, and SigV4 signatures of one
    credential within one second are identical."""
    now = int(time.time())
    # The last 4 minutes first, then the next 4 (the broker allows 5 minutes of skew either
    # way): a fast stack signs more than 240 proofs in 4 minutes when the proof-heavy tests
    # run together.
    with _lock:
        for offset in [*range(0, -240, -1), *range(1, 240)]:
            second = now + offset
            if second not in _used_seconds:
                _used_seconds.add(second)
                return datetime.fromtimestamp(second, timezone.utc)
    raise RuntimeError("more than 480 proofs signed within 4 minutes of now: slow down")


def binding(method, path, params=None, body=b"", nonce=None):
    """The X-Broker-Request value a proof signs for one request (chalicelib/admin_auth.py)."""
    from chalicelib.admin_auth import request_binding

    return request_binding(method, path, params or {}, body, nonce or secrets.token_hex(16))


def proof_header(creds, server_id, *, bound=None, **kwargs):
    """The X-Broker-Proof value: base64 of the JSON of the four iam_* fields; `bound` is the
    X-Broker-Request value to sign (binding(...)), None for a proof bound to nothing. A bound
    proof is unique by its nonce: it may be signed at any second."""
    if "when" not in kwargs:
        kwargs["when"] = datetime.now(timezone.utc) if bound is not None else fresh_when()
    if bound is not None:
        kwargs["extra_headers"] = dict(kwargs.get("extra_headers") or {}, **{"X-Broker-Request": bound})
    body = signed_login(creds, "unused", server_id, **kwargs)
    del body["role"]
    return base64.b64encode(json.dumps(body).encode()).decode()


def proof_fields(creds, server_id, **kwargs):
    """The four iam_* fields of a fresh proof (for an incident report's body)."""
    kwargs.setdefault("when", fresh_when())
    body = signed_login(creds, "unused", server_id, **kwargs)
    del body["role"]
    return body


class SecurityClient:
    """Calls the security routes of the in-process broker as a given AWS identity, each call
    with a fresh proof bound to it (unless a `proof` is given)."""

    def __init__(self, broker, creds):
        self.broker = broker
        self.creds = creds

    def headers(self, method="GET", path="/v1/audit/events", params=None, body=b"", proof=None):
        return {"X-Broker-Proof": proof or proof_header(self.creds, self.broker.server_id,
                                                        bound=binding(method, path, params, body))}

    def get(self, path, proof=None):
        from urllib.parse import parse_qsl, urlsplit

        parts = urlsplit(path)
        params = {}
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            params.setdefault(k, []).append(v)
        return self.broker.client.http.get(path, headers=self.headers("GET", parts.path, params, b"", proof))

    def post(self, path, body, proof=None):
        data = json.dumps(body).encode()
        return self.broker.client.http.post(path, body=data, headers={
            "Content-Type": "application/json", **self.headers("POST", path, None, data, proof)})

    def delete(self, path, body=None, proof=None):
        data = json.dumps(body).encode() if body else b""
        return self.broker.client.http.request("DELETE", path, body=data, headers={
            "Content-Type": "application/json", **self.headers("DELETE", path, None, data, proof)})

    def search(self, **params):
        from urllib.parse import urlencode

        return self.get("/v1/audit/events" + (f"?{urlencode(params)}" if params else ""))


__all__ = ["SecurityClient", "binding", "fresh_when", "proof_header", "proof_fields", "sign"]


class RevocationInFlight:
    """A revocation placed while an issuance is in flight: the next minting (after it has
    minted, before its record is written) starts `POST /v1/revocations` with `body` on a
    thread and waits until `placed()` says its quarantine is in place. `answer` is the
    revocation's answer once `wait()` returned. Use with the test's monkeypatch.

    With `after_first_pass`, the issuance also waits until the revocation's first pass has
    read the audit table, so that its record lands after that read and only the second
    sweep can find it (else which DynamoDB call lands first is the machine's choice)."""

    def __init__(self, monkeypatch, service, security, body, placed, after_first_pass=False):
        self.answer = {}
        self._thread = None
        real_issue = service._minter.issue
        if after_first_pass:
            placed = self._after_first_pass(monkeypatch, service.security.revocations, placed)

        def revoke():
            self.answer.update(json.loads(security.post("/v1/revocations", body).body))

        def issue_while_revoked(*args, **kwargs):
            result = real_issue(*args, **kwargs)
            if self._thread is None:
                self._thread = threading.Thread(target=revoke)
                self._thread.start()
                deadline = time.monotonic() + 15
                while not placed() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert placed(), ("the revocation placed no quarantine" if not after_first_pass else
                                  "the revocation placed no quarantine, or its first pass never read the audit table")
            return result

        monkeypatch.setattr(service._minter, "issue", issue_while_revoked)
        self._monkeypatch = monkeypatch

    @staticmethod
    def _after_first_pass(monkeypatch, revocations, placed):
        first_pass_read, real_issued = threading.Event(), revocations._issued

        def issued_then_say_so(*args, **kwargs):
            try:
                return real_issued(*args, **kwargs)
            finally:
                first_pass_read.set()

        monkeypatch.setattr(revocations, "_issued", issued_then_say_so)
        return lambda: placed() and first_pass_read.is_set()

    @property
    def started(self):
        return self._thread is not None

    def wait(self):
        """Undo the patch, then wait for the revocation's answer."""
        self._monkeypatch.undo()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.answer
