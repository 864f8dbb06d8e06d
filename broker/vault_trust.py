"""Which Vault the client may use: the pinned one, or (nothing pinned) an https one.

The broker's answer names a Vault address, but whoever answers in the broker's place
could name its own Vault there, look its own wrapping tokens up "successfully", and
receive the workload's Vault token. So the client decides which Vault it trusts
*before* it asks the broker: ``--vault-addr`` / ``VAULT_ADDR`` (or ``VAULT_ADDR`` in
the config file written at image build). An answer naming another address is refused
as a possible interception, before anything is sent to either address.

Nothing pinned: the broker's address is accepted only when it is ``https://`` (a
loopback ``http://`` only with ``--allow-insecure-vault``, for local stacks), and the
client says loudly which address it trusted.

Which namespace: a Vault or OpenBao server with namespaces looks wrapping tokens up (and unwraps
them) in the namespace they were minted in, whatever ``X-Vault-Namespace`` says, so a token minted
in a child namespace at the expected namespace-relative creation path passes the creation-path
check. A token names its namespace itself: a ``.<namespace ID>`` suffix (``s.XXXX.abc12``; a token
of the root namespace has none). :func:`check_wrap_namespace` refuses a token of another namespace
than the pinned one (root when none) before it is looked up or unwrapped.
"""

from __future__ import annotations

from typing import Optional, Tuple
from urllib.parse import urlsplit

from broker.api import Issued, WrapInfo
from broker.errors import InterceptionError, UntrustedVaultError, UsageError
from broker.http import check_base_url, is_loopback

_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical(addr: str) -> str:
    """``addr`` as compared: lower-case scheme and host, default port dropped, no trailing slash."""
    parts = urlsplit(addr.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"the Vault address {addr!r} has an invalid port") from None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def check_pinned(pinned: Optional[str]) -> Optional[str]:
    """The pinned address, checked before anything is issued (https, or http on loopback)."""
    if not pinned:
        return None
    return check_base_url(pinned, "Vault address (--vault-addr/VAULT_ADDR)")


def trusted_vault_addr(pinned: Optional[str], issued: Issued, *, allow_insecure: bool) -> Tuple[str, bool]:
    """(the Vault address to use, whether it was pinned). Raises UntrustedVaultError (exit 6)
    for an answer naming another Vault than the pinned one, or (nothing pinned) an
    address that is not https; UsageError when there is no address at all."""
    answered = issued.vault_addr
    accessors = (issued.role_id_wrap.accessor, issued.secret_id_wrap.accessor)
    if pinned:
        if answered and canonical(answered) != canonical(pinned):
            raise UntrustedVaultError(
                f"the broker's answer names Vault {answered!r}, but this client is pinned to {pinned!r}: either "
                "the broker's BROKER_VAULT_ADDR differs from the pinned address (a misconfiguration), or this "
                "answer did not come from your broker",
                accessors=accessors, request_id=issued.request_id)
        return pinned.rstrip("/"), True
    if not answered:
        raise UsageError("no Vault address: the broker returned none; pin one with --vault-addr or VAULT_ADDR",
                         request_id=issued.request_id)
    parts = urlsplit(answered)
    if parts.scheme == "https" and parts.netloc:
        return check_base_url(answered, "Vault address from the broker"), False
    if parts.scheme == "http" and is_loopback(answered) and allow_insecure:
        return check_base_url(answered, "Vault address from the broker"), False
    why = ("http on loopback is accepted only with --allow-insecure-vault" if is_loopback(answered)
           else "only https is accepted from the broker")
    raise UntrustedVaultError(
        f"the broker's answer names Vault {answered!r}, which is not https ({why}; better, pin the Vault "
        "address with --vault-addr or VAULT_ADDR)",
        accessors=accessors, request_id=issued.request_id)


def check_answer_namespace(pinned: Optional[str], issued: Issued) -> None:
    """Refuse (UntrustedVaultError, exit 6) an answer naming another Vault namespace than the client's
    (``--vault-namespace``/``VAULT_NAMESPACE``; none: the root namespace), as another address is refused:
    a broker and a client that disagree on the namespace are misconfigured, or the answer is not your
    broker's. An answer without ``vault_namespace`` (a broker of an earlier version) is left to the
    wrapping tokens' own namespace check (:func:`check_wrap_namespace`)."""
    if not issued.names_namespace:
        return
    mine = (pinned or "").strip("/") or None
    if mine == "root":
        mine = None
    if issued.vault_namespace != mine:
        answered = repr(issued.vault_namespace) if issued.vault_namespace else "the root namespace"
        ours = repr(mine) if mine else "the root namespace"
        raise UntrustedVaultError(
            f"the broker's answer names the Vault namespace {answered}, but this client uses {ours}: either the "
            "broker's BROKER_VAULT_NAMESPACE differs from --vault-namespace/VAULT_NAMESPACE (a misconfiguration), "
            "or this answer did not come from your broker",
            accessors=(issued.role_id_wrap.accessor, issued.secret_id_wrap.accessor), request_id=issued.request_id)


# Token prefixes Vault and OpenBao put before the random part (legacy and current, service and batch).
_TOKEN_PREFIXES = ("hvs.", "hvb.", "s.", "b.")


def token_namespace_id(token: str) -> Optional[str]:
    """The ID of the namespace a Vault/OpenBao token was minted in, or None for the root namespace: what
    follows the last ``.`` after the token's prefix, as Vault's own ``namespace.SplitIDFromString`` reads it."""
    rest = token
    for prefix in _TOKEN_PREFIXES:
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
            break
    head, dot, namespace_id = rest.rpartition(".")
    return namespace_id if dot and head and namespace_id else None


def check_wrap_namespace(wrap: WrapInfo, what: str, request_id: Optional[str], *,
                         namespace: Optional[str] = None, namespace_id: Optional[str] = None) -> None:
    """Refuse (InterceptionError, exit 6) a wrapping token of another namespace than the pinned one.

    ``namespace`` is the pinned namespace's path, None for the root namespace: then the token must carry no
    namespace ID. A pinned child namespace: the token must carry one, equal to ``namespace_id`` when it is
    known (an unauthenticated client cannot learn a path's ID, and the lookup does not tell)."""
    found = token_namespace_id(wrap.token)
    pinned = (namespace or "").strip("/") or None

    def refuse(detail: str) -> InterceptionError:
        return InterceptionError(detail, what=what, accessor=wrap.accessor, request_id=request_id)

    if pinned is None:
        if found is not None:
            raise refuse(f"the wrapping token was minted in the Vault namespace with ID {found!r}, not in the root "
                         "namespace this client uses (set --vault-namespace if the broker mints in a namespace)")
        return
    if found is None:
        raise refuse(f"the wrapping token was minted in the root namespace, not in the namespace {pinned!r} "
                     "this client is pinned to")
    if namespace_id is not None and found != namespace_id:
        raise refuse(f"the wrapping token was minted in the Vault namespace with ID {found!r}, not in the "
                     f"namespace {pinned!r} (ID {namespace_id!r}) this client is pinned to")
