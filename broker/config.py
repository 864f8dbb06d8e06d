"""Settings: a flag wins over an environment variable, which wins over the config file.

The config file is written at image build (root-owned, not writable by anyone else)
to pin what the machine may trust before it boots: the broker URL, the server ID and,
above all, the Vault address. Its path is ``BROKER_CONFIG``, else
``/etc/secret-zero-broker/client.conf`` when that file exists. Format: ``NAME=VALUE``
lines with the environment variables' names, ``#`` comments, no quoting::

    BROKER_URL=https://broker.example.com
    BROKER_SERVER_ID=broker.example.com
    VAULT_ADDR=https://vault.example.internal:8200
"""

from __future__ import annotations

import os
import stat
from typing import Dict, Optional

from broker.errors import UsageError

DEFAULT_PATH = "/etc/secret-zero-broker/client.conf"
KEYS = frozenset({
    "BROKER_URL", "BROKER_SERVER_ID", "BROKER_ROLE", "BROKER_CA_CERT", "BROKER_CLOUD", "BROKER_STS_URL",
    "BROKER_STS_REGION", "BROKER_GCP_AUDIENCE", "BROKER_GCP_METADATA_URL", "BROKER_APPROLE_MOUNT",
    "BROKER_TIMEOUT", "BROKER_MAX_ATTEMPTS", "BROKER_MAX_WAIT", "VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE",
})

_loaded: Optional[Dict[str, str]] = None
_loaded_from: Optional[str] = None


def config_path() -> Optional[str]:
    explicit = os.environ.get("BROKER_CONFIG")
    if explicit:
        return explicit
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None


def parse(text: str, path: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in KEYS:
            allowed = ", ".join(sorted(KEYS))
            raise UsageError(f"{path}, line {number}: expected NAME=VALUE with NAME one of {allowed}")
        values[name] = value
    return values


def load(path: Optional[str] = None) -> Dict[str, str]:
    """The config file's settings ({} when there is none). A file that others may write is
    refused: whoever can write it chooses the Vault this machine trusts."""
    global _loaded, _loaded_from
    path = path or config_path()
    if path is None or path == os.devnull:  # BROKER_CONFIG=/dev/null: no config file
        return {}
    if _loaded is not None and _loaded_from == path:
        return _loaded
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read(64 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the config file {path} is not UTF-8 text") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"the config file {path} is writable by its group or others: chmod go-w it")
    _loaded, _loaded_from = parse(text, path), path
    return _loaded


def setting(name: str, default: Optional[str] = None) -> Optional[str]:
    """The environment variable ``name`` if set and not empty, else the config file's, else ``default``."""
    value = os.environ.get(name)
    if value not in (None, ""):
        return value
    if name in KEYS:
        value = load().get(name)
        if value not in (None, ""):
            return value
    return default
