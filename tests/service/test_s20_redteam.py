"""Red team (s20) of issue 14's fifth pass: the replay lookup beside STS, the quarantine
epoch read with it, the process-local memo of spent proofs. Attacked for real against
the local stack (moto with SigV4 verification, OpenBao), the broker in-process; DynamoDB
reached through a fault proxy where a test needs DynamoDB to answer as it does under
contention or throttling (the answers are DynamoDB's own error documents).

Each test tries an attack and shows it refused, or a legitimate login served.
Secrets stay in memory, never printed.
"""

import json
import threading
import time
import uuid

import pytest

from app import app as chalice_app  # noqa: F401  (the app the broker fixture serves)
from chalice.test import Client

from chalicelib.stores.quarantine import EPOCH_KEY, QuarantineList, quarantine_key
from devstack import aws as stack_aws
from devstack.faultproxy import Fault, FaultProxy
from tests.service.conftest import use_environment
from tests.sigv4 import signed_login

ACCOUNT = stack_aws.ACCOUNT_ID
ROLE_KEY = quarantine_key("principal", f"arn:aws:iam::{ACCOUNT}:role/demo-node")

TRANSACTION_CONFLICT = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                                   "message": "Transaction is ongoing for the item"})
THROTTLED = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded."})


def _op(req):
    return req.headers.get("x-amz-target", "").rsplit(".", 1)[-1]


def epoch_put(req):
    """The seed of the quarantine epoch (a PutItem of the epoch item)."""
    return _op(req) == "PutItem" and EPOCH_KEY.encode() in req.body


def body_of(response):
    return json.loads(response.body)


def quarantine_list(stack):
    return QuarantineList(stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE)


def epoch(stack):
    item = stack.client("dynamodb").get_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}},
                                             ConsistentRead=True).get("Item")
    return item["epoch"]["S"] if item else None


class Proxied:
    """The in-process broker with its AWS endpoint (DynamoDB, EC2, IAM) behind a fault proxy."""

    def __init__(self, stack, client, proxy):
        self.stack, self.client, self.proxy = stack, client, proxy
        self.server_id = stack.broker_env()["BROKER_SERVER_ID"]

    def post(self, body, path="/v1/credentials/aws"):
        return self.client.http.post(path, body=body if isinstance(body, str) else json.dumps(body),
                                     headers={"Content-Type": "application/json"})

    def web_login(self, instance=None):
        instance = instance or self.stack.launch_instance({"vault-role": "web"}, profile="demo-node")
        return signed_login(self.stack.assume("demo-node", instance), "web", self.server_id)

    def rebuild(self):
        """A fresh service (a new Lambda environment): nothing kept from before."""
        import app as broker_app

        broker_app._service = None


@pytest.fixture
def proxied(broker):
    import app as broker_app

    stack = broker.stack
    proxy = FaultProxy(stack.aws_endpoint_url).start()
    restore = use_environment({**stack.broker_env(), "BROKER_AWS_ENDPOINT_URL": proxy.url})
    try:
        with Client(broker_app.app, stage_name="local") as client:
            yield Proxied(stack, client, proxy)
    finally:
        proxy.clear()
        restore()
        proxy.stop()


# ---- the seed of the epoch ------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [TRANSACTION_CONFLICT, THROTTLED], ids=["conflict", "throttled"])
def test_a_seed_that_fails_does_not_fail_the_login_that_tried_it(proxied, answer):
    """The first login of a process that finds no epoch writes one (an optimisation).
    DynamoDB answers that put with TransactionConflict when a revocation's transaction
    (which creates the epoch) is on the item at that moment, or throttles it: the
    login must still be served, its role's key read as if there were no epoch."""
    stack = proxied.stack
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    proxied.rebuild()
    proxied.proxy.set(Fault("status", match=epoch_put, status=400, body=answer,
                            headers={"Content-Type": "application/x-amz-json-1.0"}))
    response = proxied.post(proxied.web_login())
    assert response.status_code == 200, body_of(response).get("error")
    assert epoch(stack) is None  # the seed did fail
    proxied.proxy.clear()
    # a quarantine placed now is seen by the next login of this (warm) process
    revocation_id = f"s20-{uuid.uuid4().hex[:8]}"
    quarantine_list(stack).place(ROLE_KEY, revocation_id=revocation_id, until=int(time.time()) + 600,
                                 reason="s20", by="s20")
    try:
        refused = proxied.post(proxied.web_login())
        assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "quarantined"
    finally:
        assert quarantine_list(stack).lift(ROLE_KEY, revocation_id)
