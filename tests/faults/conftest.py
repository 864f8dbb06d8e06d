"""Fixtures of the fault tests (helpers in tests/faults/helpers.py)."""

from __future__ import annotations

import json
import os

import pytest

from chalicelib.audit import AuditStore
from devstack import aws as stack_aws
from devstack.broker import ChaliceLocal
from devstack.faultproxy import FaultProxy
from tests.faults.helpers import FIGURES, FaultyBroker
from tests.secret_scan import register_log_dir


@pytest.fixture(scope="session")
def faulty(stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faulty-broker")
    register_log_dir(workdir)
    vault = FaultProxy(stack.vault_addr).start()
    aws = FaultProxy(stack.aws_endpoint_url).start()
    sts = FaultProxy(stack.aws_endpoint_url).start()
    env = {**stack.broker_env(),
           "BROKER_VAULT_ADDR": vault.url,
           "BROKER_VAULT_PUBLIC_ADDR": stack.vault_addr,  # clients unwrap at OpenBao itself
           "BROKER_AWS_ENDPOINT_URL": aws.url,
           "BROKER_STS_FORWARD_URL": sts.url,
           "BROKER_LOG_LEVEL": "INFO"}
    env.update({k: v for k, v in os.environ.items() if k == "BROKER_VAULT_TIMEOUT"})
    broker = ChaliceLocal(workdir, env, url_env=("BROKER_GCP_AUDIENCE",))
    broker.start()
    try:
        broker.wait_ready()
        fb = FaultyBroker(stack, broker, vault, aws, sts, AuditStore(stack.client("dynamodb"), stack_aws.AUDIT_TABLE, 400))
        yield fb
    finally:
        broker.stop()
        for proxy in (vault, aws, sts):
            proxy.stop()


@pytest.fixture(scope="session", autouse=True)
def fault_figures():
    """Write the measured figures to $FAULT_FIGURES (JSON) at the end, when it is set."""
    yield FIGURES
    out = os.environ.get("FAULT_FIGURES")
    if out and FIGURES:
        with open(out, "w") as f:
            json.dump(FIGURES, f, indent=2, sort_keys=True)


@pytest.fixture
def clean_faults(faulty):
    """Every fault test starts and ends with no fault set and Vault unsealed and up."""
    faulty.clear()
    yield faulty
    faulty.clear()
    stack = faulty.stack
    if stack.openbao.proc is None:
        stack.start_vault()
    elif stack.vault().sys.is_sealed():
        stack.unseal_vault()
    stack.gcp_outage("certs", down=False)
