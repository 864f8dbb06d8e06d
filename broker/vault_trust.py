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
"""

from __future__ import annotations

from typing import Optional, Tuple
from urllib.parse import urlsplit

from broker.api import Issued
from broker.errors import UntrustedVaultError, UsageError
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
