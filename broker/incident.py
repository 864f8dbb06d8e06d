"""Report a possible interception to the broker: ``POST /v1/incidents``.

When ``broker login`` finds a wrapping token already used, expired, or created at
the wrong path (exit code 6), somebody else may hold the secret ID. Before it
exits, the client tells the broker, with a fresh proof of the same identity the
credentials were issued to: the broker destroys the issued secret ID at once and
records an ``incident`` linked to the issuance. Best effort: one attempt (and one
more if the proof collided with another process's), a short timeout, and a
failure to report never changes the exit code.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from broker.errors import ClientError, InterceptionError
from broker.http import CONNECTION_ERRORS, broker_error_fields, post_json

INCIDENT_PATH = "/v1/incidents"
REPORT_TIMEOUT = 5.0


def _printable(text: str, limit: int = 480) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:limit]


def report_interception(client: Any, make_proof: Callable[[], dict[str, str]], exc: InterceptionError,
                        *, timeout: float = REPORT_TIMEOUT) -> dict[str, Any]:
    """Report `exc` for its request ID; returns what happened (never raises a ClientError):
    ``{"reported": True, "request_id": ..., "secret_id": "destroyed"|...}`` or
    ``{"reported": False, "error": ...}``."""
    if not exc.request_id:
        return {"reported": False, "error": "no broker request ID to report"}
    payload_base: dict[str, str] = {
        "request_id": exc.request_id,
        "reason": _printable(f"client: possible interception of the wrapped {exc.what}: {exc.detail}"),
    }
    if exc.accessor:
        payload_base["accessor"] = exc.accessor
    url = client.base_url + INCIDENT_PATH
    for attempt in (1, 2):
        try:
            payload = dict(make_proof(), **payload_base)
        except ClientError as e:
            return {"reported": False, "error": f"could not make a fresh proof: {e.message}"}
        try:
            result = post_json(client._opener, url, payload, timeout=min(timeout, client.timeout))
        except CONNECTION_ERRORS as e:
            return {"reported": False, "error": f"cannot reach the broker: {type(e).__name__}"}
        if result.status == 200:
            try:
                doc = json.loads(result.body.decode("utf-8"))
                return {"reported": True, "request_id": str(doc["request_id"]), "secret_id": str(doc["secret_id"])}
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                return {"reported": True, "request_id": None, "secret_id": "unknown"}
        code, message, request_id = broker_error_fields(result)
        if result.status == 401 and code == "proof_replayed" and attempt == 1:
            continue  # another process signed the same proof in the same second: sign again
        return {"reported": False, "error": f"HTTP {result.status} {code}: {message}",
                **({"request_id": request_id} if request_id else {})}
    return {"reported": False, "error": "proof replayed twice"}


def reporting(call: Callable[[], Any], *, client: Any, make_proof: Callable[[], dict[str, str]], out: Any) -> Any:
    """Run `call` (the wrapping checks and unwrap); on an InterceptionError report it to the
    broker, note the outcome on the error (its JSON summary shows it), and re-raise."""
    try:
        return call()
    except InterceptionError as exc:
        outcome = report_interception(client, make_proof, exc)
        exc.incident = outcome  # type: ignore[attr-defined]
        if outcome["reported"]:
            out.warn(f"reported to the broker as incident {outcome.get('request_id')}: "
                     f"the issued secret ID is {outcome.get('secret_id')}")
        else:
            out.warn(f"could not report the possible interception to the broker: {outcome['error']}")
        raise
