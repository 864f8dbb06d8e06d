"""Shared fixtures: the local stack (OpenBao + moto with SigV4 on + seed) and the
broker under ``chalice local``. Both are session-scoped and always torn down.

Tests that change the shared stack put it back before they end: use the
``sealed_vault`` / ``vault_down`` fixtures, or restore in a ``finally``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import Stack  # noqa: E402

# The secret scanner (issue 7): collects the suite's secrets, fails the session if any
# shows up in a log, a test's output or another answer of the broker. SECRET_SCAN=0: off.
from tests.secret_scan import pytest_configure, pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402,F401

# Hypothesis: the suite's budget; `make fuzz` runs HYPOTHESIS_PROFILE=fuzz.
from hypothesis import HealthCheck, settings as _hypothesis  # noqa: E402

_hypothesis.register_profile("suite", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
_hypothesis.register_profile("fuzz", deadline=None, max_examples=3000, suppress_health_check=list(HealthCheck))
_hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


# The fixtures that start a server: a test using any of them (directly or through another
# fixture) is marked `stack`, so `make test-fast` (-m "not stack") leaves it out. A test that
# asks for the stack at run time (request.getfixturevalue) marks itself.
STACK_FIXTURES = frozenset({"stack", "local_broker", "broker"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """OpenBao + moto (SigV4 verified) + seed; no broker process."""
    s = Stack.start(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


NAMESPACE = "team-a"


@pytest.fixture(scope="session")
def ns_stack(tmp_path_factory):
    """A second stack with every Vault object in the namespace team-a (the root namespace holds
    none of it); started only for the tests that ask (tests/service/test_vault_namespace.py)."""
    s = Stack.start(tmp_path_factory.mktemp("ns-stack"), vault_namespace=NAMESPACE)
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
