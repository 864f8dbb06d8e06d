"""The AWS and GCP issuance and revocation tests once more, on a stack whose every Vault object is
in the namespace team-a (``make stack-up VAULT_NAMESPACE=team-a``): the broker has it as
BROKER_VAULT_NAMESPACE, the machines as VAULT_NAMESPACE. The test functions are the same ones,
collected here where ``stack`` and ``broker`` are that stack and an in-process broker on it.
Then the real client against it under ``chalice local``: pinned to the namespace it logs in there;
pinned to the root namespace it refuses the broker's answer (exit 6).
"""

import json
import os
import subprocess
import sys

import pytest
import requests
from chalice.test import Client

import app as broker_app
from broker.errors import EXIT_INTERCEPTION
from devstack import Stack, gcp, machines
from devstack.broker import PROJECT_DIR
from devstack.vault import APPROLE_MOUNT, BROKER_ROLE
from tests.conftest import NAMESPACE
from tests.service.conftest import Broker, use_environment
# The tests run again here (pytest collects what a module holds): the namespace's own run of them.
from tests.service.test_aws_issuance import test_web_instance_gets_wrapped_credentials_that_work_once  # noqa: F401
from tests.service.test_gcp_issuance import audience, test_gce_instance_gets_web_credentials  # noqa: F401
from tests.service.test_revocation import (  # noqa: F401
    security,
    test_a_revocation_revokes_the_tokens_logged_in_with_its_secret_ids,
    test_gce_instances_report_incidents_and_are_quarantined_by_instance,
)


@pytest.fixture(scope="module")
def stack(ns_stack):
    return ns_stack


@pytest.fixture(scope="module")
def broker(ns_stack):
    """The in-process broker with the namespace stack's environment (the suite's own broker gets
    its environment back after this module)."""
    restore = use_environment(ns_stack.broker_env())
    try:
        with Client(broker_app.app, stage_name="local") as client:
            yield Broker(ns_stack, client)
    finally:
        restore()


def test_every_vault_object_of_the_stack_is_in_the_namespace(ns_stack, tmp_path):
    assert ns_stack.endpoints["vault_namespace"] == NAMESPACE
    assert ns_stack.broker_env()["BROKER_VAULT_NAMESPACE"] == NAMESPACE
    assert machines.client_env(ns_stack)["VAULT_NAMESPACE"] == NAMESPACE
    assert machines.operator_env(ns_stack)["VAULT_NAMESPACE"] == NAMESPACE
    inside, root = ns_stack.vault(), ns_stack.openbao.client()
    assert f"{APPROLE_MOUNT}/" in inside.sys.list_auth_methods()["data"]
    assert BROKER_ROLE in inside.sys.list_policies()["data"]["policies"]
    assert inside.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)
    # From the root namespace none of it is visible: an AppRole of team-a is not one of root's.
    assert f"{APPROLE_MOUNT}/" not in root.sys.list_auth_methods()["data"]
    assert BROKER_ROLE not in root.sys.list_policies()["data"]["policies"]
    attached = Stack.attach(ns_stack.write_endpoints(tmp_path / "endpoints.json").parent)
    assert attached.vault_namespace == NAMESPACE
    assert machines.client_env(attached)["VAULT_NAMESPACE"] == NAMESPACE
    login = requests.post(f"{ns_stack.vault_addr}/v1/auth/{APPROLE_MOUNT}/login", timeout=10,
                          json={"role_id": ns_stack.vault_seed.broker_role_id,
                                "secret_id": ns_stack.vault_seed.broker_secret_id})
    assert login.status_code in (400, 403, 404)


def test_health_is_ok_in_a_namespace(broker):
    """sys/health is the server's: OpenBao answers 400 to it inside a namespace, so the
    broker asks it without X-Vault-Namespace (chalicelib/minter.py)."""
    response = broker.client.http.get("/v1/health")
    assert response.status_code == 200, response.body


def _login(env, *args):
    return subprocess.run([sys.executable, "-m", "broker", "login", "--role", "web", "--json", *args],
                          env=machines.process_env(env, base={"PATH": os.environ.get("PATH", "")}),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)


def test_the_real_client_logs_in_in_the_namespace_and_refuses_it_pinned_to_root(ns_stack, tmp_path):
    # Started last (the in-process tests above read the default audience, kept here too).
    ns_stack.start_broker({"BROKER_GCP_AUDIENCE": gcp.DEFAULT_AUDIENCE})
    try:
        instance = ns_stack.launch_instance({"vault-role": "web"}, profile="demo-node")
        env = machines.instance_env(ns_stack, instance)
        agent = tmp_path / "agent"
        proc = _login(env, "--agent-dir", str(agent))
        assert proc.returncode == 0, proc.stderr
        assert "warning:" not in proc.stderr.lower()
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["vault_namespace"] == NAMESPACE
        assert (agent / "vault_namespace").read_text() == NAMESPACE
        # What the Agent would do: unwrap the secret ID, log in in that namespace, read the role's secret.
        secret_id = ns_stack.vault(token=(agent / "secret_id").read_text()).sys.unwrap()["data"]["secret_id"]
        app = ns_stack.vault(token=None)
        app.auth.approle.login(role_id=(agent / "role_id").read_text(), secret_id=secret_id)
        assert app.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)

        pinned_to_root = {k: v for k, v in env.items() if k != "VAULT_NAMESPACE"}
        other = tmp_path / "other"
        proc = _login(pinned_to_root, "--agent-dir", str(other))
        assert proc.returncode == EXIT_INTERCEPTION, proc.stderr
        assert "the broker's answer names the Vault namespace" in proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1])["error"] == "UntrustedVaultError"
        assert not other.exists()
    finally:
        ns_stack.stop_broker()
