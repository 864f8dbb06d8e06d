"""Vault as the broker's two Vault identities call it (chalicelib/minter.py,
chalicelib/revoker.py): hvac clients over one requests session per identity.

What the session adds to hvac's defaults, and why:

- no redirect is followed (`allow_redirects=False`): a Vault standby forwards requests to
  the active node; one that answers with a redirect is reported as such, never followed
  to another host;
- explicit timeouts (BROKER_VAULT_TIMEOUT, connect and read);
- bounded answers: a response hook reads at most `max_bytes` (+1) of each body before
  requests would read it all, and an answer over the bound is Unavailable;
- the namespace (BROKER_VAULT_NAMESPACE) as hvac sends it: `X-Vault-Namespace` on every call;
- `close()` drops the pooled connections (after a SnapStart restore, chalicelib/snapstart.py);
  the session stays usable.

`outcome()` turns one hvac call into (status, document) so that each caller maps Vault's
statuses itself; no answer (connection, TLS, timeout) or an oversized one is Unavailable
naming what was asked, never a token or a secret ID (hvac's exception texts hold URLs
and Vault's errors only; they are not passed on either, only their class names).
"""

MAX_ANSWER_BYTES = 1 << 20  # a wrapped secret ID, a login, a token lookup: a few KiB

# hvac's exception classes by the status they stand for (hvac.exceptions.VaultError.from_status).
_STATUS_OF = {"InvalidRequest": 400, "Unauthorized": 401, "Forbidden": 403, "InvalidPath": 404,
              "RateLimitExceeded": 429, "InternalServerError": 500, "VaultNotInitialized": 501,
              "BadGateway": 502, "VaultDown": 503}


class Oversized(Exception):
    """An answer over the bound (raised by the response hook, inside requests)."""

    def __init__(self, status, max_bytes):
        super().__init__(f"HTTP {status}, over {max_bytes} bytes")
        self.status = status
        self.max_bytes = max_bytes


def _bounded(max_bytes_for):
    """A requests response hook: the body read now, at most max_bytes_for(url) + 1 bytes of it."""

    def hook(response, **_):
        limit = max_bytes_for(response.request.path_url if response.request is not None else "")
        if getattr(response, "_content", False) is not False:  # read already
            data = response._content or b""
        else:
            try:
                data = response.raw.read(limit + 1, decode_content=True) or b""
            except Exception:
                response.close()
                raise
        if len(data) > limit:
            response.close()
            raise Oversized(response.status_code, limit)
        response._content = data
        response._content_consumed = True
        return response

    return hook


class VaultSession:
    """One Vault identity's HTTP: a requests session (bounded, no redirects) and the hvac
    clients made on it. Thread-safe as requests' sessions are (one connection pool)."""

    def __init__(self, addr, timeout, *, namespace=None, max_bytes_for=None, connections=10):
        import hvac
        import requests

        self.addr = addr.rstrip("/")
        self.namespace = namespace or None
        self.timeout = timeout
        self._hvac = hvac
        self.session = requests.Session()
        # `connections` kept per host (the revoker's scan runs 16 lookups at once); no retries
        # (each caller decides what to try again).
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=connections))
        # Proxies from the environment, as requests reads them (HTTPS_PROXY, NO_PROXY).
        self.session.hooks["response"].append(_bounded(max_bytes_for or (lambda _path: MAX_ANSWER_BYTES)))

    def client(self, token=None, *, in_namespace=True):
        """An hvac client of this session (shared connections); `token` is its X-Vault-Token.
        Never None to hvac: it would read VAULT_TOKEN or ~/.vault-token instead.
        `in_namespace=False`: no X-Vault-Namespace (sys/health answers only outside one)."""
        return self._hvac.Client(url=self.addr, token=token or "", timeout=self.timeout,
                                 namespace=self.namespace if in_namespace else None,
                                 session=self.session, allow_redirects=False)

    def close(self):
        """Drop the pooled connections (the session stays usable: new ones on the next call)."""
        self.session.close()


def status_of(error):
    """The HTTP status an hvac exception stands for (None: not one of Vault's answers)."""
    return _STATUS_OF.get(type(error).__name__)


def outcome(what, call, *args, **kwargs):
    """(status, document or None) of one hvac call.

    hvac answers a 200 with its JSON document, any other success (204, a 3xx: redirects are
    not followed) with the requests Response, and an error status with an exception
    (hvac.exceptions.*, which carries Vault's `errors`). No answer, or an oversized one, is
    Unavailable naming `what`."""
    import hvac
    import requests

    from .errors import Unavailable

    try:
        result = call(*args, **kwargs)
    except Oversized as e:
        raise Unavailable("Vault answered with an oversized response", backend="vault",
                          detail=f"Vault's answer ({what}, HTTP {e.status}) is over {e.max_bytes} bytes") from None
    except hvac.exceptions.VaultError as e:
        status = status_of(e)
        if status is None:  # hvac.exceptions.UnexpectedError and the like: the status is in neither
            status = 599
        return status, {"errors": [str(x) for x in e.errors]} if isinstance(e.errors, list) else None
    except requests.exceptions.RequestException as e:
        raise Unavailable("Vault could not be reached", backend="vault",
                          detail=f"Vault unreachable ({what}): {type(e).__name__}") from None
    if isinstance(result, dict):
        return 200, result
    if result is None:  # hvac's read(): a 404
        return 404, None
    if isinstance(result, requests.Response):
        return result.status_code, _document(result)
    return 200, None


def _document(response):
    """The JSON object of an answer, or None (empty, not JSON, not an object)."""
    try:
        doc = response.json() if response.content else None
    except ValueError:  # UnicodeDecodeError included
        return None
    return doc if isinstance(doc, dict) else None


def errors_of(doc):
    """Vault's `errors` list of an answer (strings), or []."""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [str(e) for e in errors] if isinstance(errors, list) else []
