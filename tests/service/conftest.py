"""Service tests: the real app through chalice.test.Client, against the real local stack."""

import json
import os

import pytest
from chalice.test import Client

import app as broker_app
from chalicelib.audit import AuditStore
from devstack import aws as stack_aws
from tests.sigv4 import signed_login


class Broker:
    """The in-process broker plus the helpers a test needs to play a caller."""

    def __init__(self, stack, client):
        self.stack = stack
        self.client = client
        self.server_id = stack.broker_env()["BROKER_SERVER_ID"]
        self.audit = AuditStore(stack.client("dynamodb"), stack_aws.AUDIT_TABLE, 400)

    def post(self, body, raw=None, headers=None):
        data = raw if raw is not None else json.dumps(body)
        return self.client.http.post("/v1/credentials/aws", body=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})

    def login_as(self, role_name, session_name, role, **sign_kwargs):
        creds = self.stack.assume(role_name, session_name)
        return self.post(signed_login(creds, role, sign_kwargs.pop("server_id", self.server_id), **sign_kwargs))

    def web_instance(self, tags=None, profile="demo-node"):
        return self.stack.launch_instance(tags if tags is not None else {"vault-role": "web"}, profile=profile)


def use_environment(env):
    """Point the app at a new environment; returns a function that restores the old one."""
    saved = dict(os.environ)
    os.environ.update(env)
    broker_app._service = None

    def restore():
        os.environ.clear()
        os.environ.update(saved)
        broker_app._service = None

    return restore


@pytest.fixture(scope="session")
def broker(stack):
    restore = use_environment(stack.broker_env())
    try:
        with Client(broker_app.app, stage_name="local") as client:
            yield Broker(stack, client)
    finally:
        restore()


def forget_trust_history(stack, role_name, account=None):
    """Delete what the broker remembers of a role's trust policy (chalicelib/stores/
    trust_history.py): as if its open policy were older than its MaxSessionDuration."""
    account = str(account or stack_aws.ACCOUNT_ID)
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={
        "pk": {"S": f"trust#arn:aws:iam::{account}:role/{role_name}"}})


SHARED_ROLES = ("demo-batch", "demo-node", "demo-other", "demo-task", "security-team")


@pytest.fixture(autouse=True)
def _shared_roles_budgets_are_fresh(request):
    """Every session of a role that claims no machine counts the role's budget (200 an hour
    by default): the suite's many machine-less logins of the stack's shared roles would spend
    it for every later test. Their role budgets start fresh at each test (a test of the
    budget itself makes a role of its own)."""
    if "stack" not in request.fixturenames and "broker" not in request.fixturenames:
        yield
        return
    import time

    from chalicelib.admission import PRINCIPAL_SCOPE
    from chalicelib.stores.rate_limits import counter_key

    stack = request.getfixturevalue("stack")
    now, keys = int(time.time()), []  # the admission counts on whole seconds
    for account in (stack_aws.ACCOUNT_ID, stack_aws.SECOND_ACCOUNT_ID):
        for role in SHARED_ROLES:
            caller = f"role:arn:aws:iam::{account}:role/{role}"
            keys += [counter_key(PRINCIPAL_SCOPE, caller, at, 3600) for at in (now, now - 3600)]
    requests = [{"DeleteRequest": {"Key": key}} for key in keys]
    db = stack.client("dynamodb")
    for start in range(0, len(requests), 25):
        db.batch_write_item(RequestItems={stack_aws.QUARANTINE_TABLE: requests[start:start + 25]})
    yield


@pytest.fixture(autouse=True)
def _trust_policies_opened_are_forgotten(request):
    """A test that opens a role's trust policy makes the broker refuse that role's instance
    and task claims for its MaxSessionDuration (issue 23): forgotten after the test, so the
    stack's later tests boot demo-node instances and demo-task tasks as before."""
    if "stack" not in request.fixturenames and "broker" not in request.fixturenames:
        yield  # no stack started for this test
        return
    stack = request.getfixturevalue("stack")
    touched = []
    original = stack.set_trust_policy

    def set_trust_policy(role_name, document, account=None):
        touched.append((role_name, account))
        return original(role_name, document, account)

    stack.set_trust_policy = set_trust_policy
    try:
        yield
    finally:
        stack.set_trust_policy = original
        for role_name, account in touched:
            forget_trust_history(stack, role_name, account)


@pytest.fixture
def fresh_service(broker):
    """Rebuild the service for one test (e.g. after changing its environment), and after it."""
    broker_app._service = None
    yield
    broker_app._service = None
