"""The replay lookup beside STS, and the quarantine epoch read with it (issue 14, fifth
pass), against the real stack: fresh broker processes with the Lambda runtime's
variables, every backend request counted at the latency proxies (devstack/latency.py).

- a warm issuance makes seven requests and reads no quarantine key: the epoch read with
  the replay lookup (one BatchGetItem) vouches for the role's key read earlier;
- a quarantine placed on a role is seen by the very next login of a warm environment
  (before, up to a second later), because placing it changes the epoch;
- a replayed proof reads no fact, counts no budget, mints nothing: in an environment
  that never saw it, it costs one STS call (as a forged proof does) and the lookup; in
  one that did, nothing at all;
- the lookup and the STS call are in flight together (a barrier proves it);
- a table with no epoch gets one from the first login.
"""

import json
import threading
import time
import uuid

import pytest

from chalicelib.stores.quarantine import EPOCH_KEY, quarantine_key
from devstack import aws as stack_aws
from devstack.latency import LatencyStack
from tests.service.test_cold_init import LAMBDA_RUNTIME, Child, _env
from tests.service.test_s20_redteam import epoch, quarantine_list
from tests.sigv4 import signed_login

SEVEN = {"sts GetCallerIdentity (forwarded proof)": 1, "dynamodb BatchGetItem": 1, "ec2 DescribeInstances": 1,
         "dynamodb TransactWriteItems": 1, "vault GET auth/approle/role/web/role-id": 1,
         "vault POST auth/approle/role/web/secret-id": 1, "dynamodb PutItem": 1}


@pytest.fixture(scope="module")
def proxies(stack):
    with LatencyStack(stack) as latency:
        yield latency


@pytest.fixture
def environment(stack, proxies):
    """A fresh Lambda environment (process) of the broker, behind the counting proxies."""
    children = []

    def start():
        child = Child(_env({**stack.broker_env(), **proxies.env(), **LAMBDA_RUNTIME}))
        assert child.imported["built"], child.imported
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


def _web_login(stack):
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    return json.dumps(signed_login(stack.assume("demo-node", instance), "web", stack.broker_env()["BROKER_SERVER_ID"]))


def _issue(child, body, status=200):
    answer = child.ask("POST", "/v1/credentials/aws", body)
    doc = json.loads(answer["body"])
    # never the body of a 200 in a failure's message: it holds wrapping tokens
    assert answer["status"] == status, (answer["status"], doc.get("error") or "issued")
    return doc


def test_a_warm_issuance_makes_seven_requests_and_reads_no_quarantine_key(stack, proxies, environment):
    child = environment()
    _issue(child, _web_login(stack))  # the role's facts and its quarantine key, read once
    bodies = [_web_login(stack) for _ in range(3)]
    time.sleep(1.2)  # past the second a role's key was kept without an epoch
    proxies.reset()
    for body in bodies:
        _issue(child, body)
    counts = proxies.counts()
    assert counts == {op: 3 * n for op, n in SEVEN.items()}, counts


def test_a_role_quarantine_is_seen_by_the_next_login_of_a_warm_environment(stack, proxies, environment):
    child = environment()
    _issue(child, _web_login(stack))  # the role's key read and found clear, kept in this process
    body = _web_login(stack)
    role = quarantine_key("principal", f"arn:aws:iam::{stack_aws.ACCOUNT_ID}:role/demo-node")
    before = epoch(stack)
    revocation_id = f"test-{uuid.uuid4().hex[:8]}"
    quarantine_list(stack).place(role, revocation_id=revocation_id, until=int(time.time()) + 600,
                                 reason="test", by="test")
    try:
        assert epoch(stack) not in (None, before)  # the entry and a new epoch, in one transaction
        proxies.reset()
        doc = _issue(child, body, 403)  # at once: no second's grace for the kept read
        assert doc["error"]["code"] == "quarantined", doc
        counts = proxies.counts()
        assert counts.get("dynamodb GetItem", 0) >= 1, counts  # the role's key, read again
        assert not any(op.startswith("vault") for op in counts), counts
    finally:
        assert quarantine_list(stack).lift(role, revocation_id)
    _issue(child, _web_login(stack))  # lifted: seen at once too (a quarantined key is never kept)


def test_a_replay_reads_no_fact_and_costs_one_sts_call_only_where_it_was_never_seen(stack, proxies, environment):
    first, second = environment(), environment()
    body = _web_login(stack)
    _issue(first, body)
    proxies.reset()
    assert _issue(first, body, 401)["error"]["code"] == "proof_replayed"
    # every request ends in its audit record; a replay this process saw spent makes no other call
    assert proxies.counts() == {"dynamodb PutItem": 1}
    proxies.reset()
    for _ in range(3):
        assert _issue(second, body, 401)["error"]["code"] == "proof_replayed"
    counts = proxies.counts()
    # Only the first replay in `second` reached the backends: the lookup, and the STS call
    # that went out beside it. No fact, no transaction (no budget), no Vault.
    assert counts == {"sts GetCallerIdentity (forwarded proof)": 1, "dynamodb BatchGetItem": 1,
                      "dynamodb PutItem": 3}, counts


def test_the_replay_lookup_and_the_sts_call_are_in_flight_together(broker, fresh_service, monkeypatch):
    from chalicelib.admission import Admission
    from chalicelib.methods.aws.proof import AwsProofVerifier

    both = threading.Barrier(2, timeout=10)  # sequential calls break it: the first waits alone
    real_lookup, real_sts = Admission.look_up, AwsProofVerifier.ask_sts

    def look_up(self, proof_hash):
        both.wait()
        return real_lookup(self, proof_hash)

    def ask_sts(self, proof):
        both.wait()
        return real_sts(self, proof)

    monkeypatch.setattr(Admission, "look_up", look_up)
    monkeypatch.setattr(AwsProofVerifier, "ask_sts", ask_sts)
    instance = broker.web_instance()
    response = broker.post(signed_login(broker.stack.assume("demo-node", instance), "web", broker.server_id))
    assert response.status_code == 200, response.body
    assert not both.broken


def test_a_table_without_an_epoch_gets_one_from_the_first_login(stack, proxies, environment):
    db = stack.client("dynamodb")
    db.delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    child = environment()
    _issue(child, _web_login(stack))
    seeded = epoch(stack)
    assert seeded is not None
    body = _web_login(stack)
    time.sleep(1.2)
    proxies.reset()
    _issue(child, body)
    counts = proxies.counts()
    assert counts == SEVEN, counts  # vouched for by the epoch it wrote
    assert epoch(stack) == seeded
