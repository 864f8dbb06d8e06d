"""Register the Vault token ``broker login`` obtained: ``POST /v1/tokens``.

After a ``--sink`` or ``--exec`` login the client tells the broker the accessor (not the
token) of the Vault token it logged in with, with a fresh proof of its identity. A
revocation of the issuance then revokes that token at once, instead of finding it by
scanning every token in Vault. Best effort: one attempt (one more if the proof collided
with another process's), a short timeout; a failure is a warning, never an exit code.
"""

from __future__ import annotations

from typing import Any, Callable

from broker.errors import ClientError
from broker.http import CONNECTION_ERRORS, broker_error_fields, post_json

TOKENS_PATH = "/v1/tokens"
TIMEOUT = 5.0


def register_token(client: Any, make_proof: Callable[[], dict[str, str]], request_id: str, accessor: str,
                   out: Any) -> bool:
    for attempt in (1, 2):
        try:
            payload = dict(make_proof(), request_id=request_id, accessor=accessor)
            result = post_json(client._opener, client.base_url + TOKENS_PATH, payload,
                               timeout=min(TIMEOUT, client.timeout))
        except ClientError as e:
            out.warn(f"could not register the token with the broker: {e.message}")
            return False
        except CONNECTION_ERRORS as e:
            out.warn(f"could not register the token with the broker: {type(e).__name__}")
            return False
        if result.status == 200:
            out.info(f"token accessor {accessor} registered with the broker (a revocation reaches it at once)")
            return True
        code, message, _ = broker_error_fields(result)
        if result.status == 401 and code == "proof_replayed" and attempt == 1:
            continue
        out.warn(f"could not register the token with the broker: HTTP {result.status} {code}: {message} "
                 "(a revocation still finds it, by a slower scan)")
        return False
    return False
