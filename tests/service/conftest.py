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


@pytest.fixture
def fresh_service(broker):
    """Rebuild the service for one test (e.g. after changing its environment), and after it."""
    broker_app._service = None
    yield
    broker_app._service = None
