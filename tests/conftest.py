"""Shared fixtures: the local stack (OpenBao + moto with SigV4 on + seed) and the
broker under ``chalice local``. Both are session-scoped and always torn down.

Tests that change the shared stack put it back before they end: use the
``sealed_vault`` / ``vault_down`` fixtures, or restore in a ``finally``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import Stack  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """OpenBao + moto (SigV4 verified) + seed; no broker process."""
    s = Stack.start(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


@dataclass
class LocalBroker:
    stack: Stack

    @property
    def url(self) -> str:
        return self.stack.broker_url

    @property
    def log_path(self) -> Path:
        return self.stack.broker.log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def restart(self, **env_overrides: str) -> None:
        """Restart ``chalice local`` (same port) with the current broker env."""
        self.stack.start_broker(env_overrides)


@pytest.fixture(scope="session")
def local_broker(stack):
    """The same stack plus the broker under ``chalice local``: ``.url``, ``.log_path``, ``.stack``."""
    stack.start_broker()
    try:
        yield LocalBroker(stack)
    finally:
        stack.stop_broker()


@pytest.fixture
def sealed_vault(stack):
    """OpenBao sealed for the test, unsealed again after it."""
    stack.seal_vault()
    try:
        yield stack
    finally:
        if stack.openbao.proc is not None and stack.vault().sys.is_sealed():
            stack.unseal_vault()


@pytest.fixture
def vault_down(stack):
    """OpenBao stopped for the test, restarted and re-seeded (same IDs) after it."""
    stack.stop_vault()
    try:
        yield stack
    finally:
        stack.start_vault()
