"""Register the Vault token ``broker login`` obtained: ``POST /v1/tokens``.

After a ``--sink`` or ``--exec`` login the client tells the broker the accessor (not the
token) of the Vault token it logged in with. A revocation of the issuance then revokes
that token at once, instead of finding it by scanning every token in Vault.

It runs after the hand-off, never before: the token is in its sink (or the command runs)
first. With the issuance answer's ``token_registration_key`` it is one request and no
cloud proof (the broker checks the key's SHA-256 against the issuance's record). From a
broker that sent no key, it proves the caller again (a fresh proof, one more attempt if
that proof collided with another process's). Best effort either way: a short timeout, and
a failure is a warning, never an exit code. After ``--exec`` it runs in a detached process
(:func:`register_in_background`), so the exec waits for nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

from broker.errors import ClientError
from broker.http import CONNECTION_ERRORS, broker_error_fields, post_json

TOKENS_PATH = "/v1/tokens"
TIMEOUT = 5.0


def register_token(client: Any, request_id: str, accessor: str, out: Any, *, registration_key: Optional[str] = None,
                   make_proof: Optional[Callable[[], dict[str, str]]] = None) -> bool:
    attempts = (1,) if registration_key else (1, 2)
    for attempt in attempts:
        try:
            if registration_key:
                payload = {"request_id": request_id, "accessor": accessor, "registration_key": registration_key}
            else:
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
        if result.status == 401 and code == "proof_replayed" and attempt == 1 and not registration_key:
            continue
        out.warn(f"could not register the token with the broker: HTTP {result.status} {code}: {message} "
                 "(a revocation still finds it, by a slower scan)")
        return False
    return False


def register_in_background(register: Callable[[], Any], out: Any) -> bool:
    """Run ``register()`` in a detached grandchild and return at once (before an exec).

    The grandchild is reparented away from this process, so the exec'd command never has
    to reap it; it writes what it has to say (a warning on failure) to the same stderr,
    and ends within the registration's timeout. Where there is no fork (or it fails), the
    registration is skipped with a warning: never lost silently, never in the exec's way.
    """
    if not hasattr(os, "fork"):
        out.warn("could not register the token with the broker: no fork on this platform "
                 "(a revocation still finds it, by a slower scan)")
        return False
    try:
        child = os.fork()
    except OSError as e:
        out.warn(f"could not register the token with the broker: fork failed ({e.strerror or e}); "
                 "a revocation still finds it, by a slower scan")
        return False
    if child == 0:  # the child: fork the registrar and end at once
        code = 0
        try:
            if os.fork() == 0:
                try:
                    os.setsid()  # no signal of the command's terminal or process group ends it early
                    register()
                    out.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(0)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return True
    out.warn("could not register the token with the broker: fork failed "
             "(a revocation still finds it, by a slower scan)")
    return False
