"""A DynamoDB write that landed but whose answer was lost (a read timeout under load):
botocore sends the same request again, and DynamoDB refuses it as a conditional write
that already happened. Against the stack's moto, the second request is sent exactly as
a retry would send it: the broker must count the first as done, not refuse its own
caller (401 proof_replayed) or take back an issuance its audit record calls issued."""

import time
import uuid

import pytest

from chalicelib.admission import Admission
from chalicelib.audit import AuditRecord, AuditStore
from chalicelib.errors import ProofReplayed
from chalicelib.policy import Limit
from devstack import aws as stack_aws


@pytest.fixture
def admission(stack):
    return Admission(stack.client("dynamodb"), stack_aws.REPLAY_TABLE, stack_aws.QUARANTINE_TABLE)


def admit(admission, proof_hash, request_id, identity):
    return admission.admit(proof_hash, request_id=request_id, method="aws", valid_until=time.time() + 300,
                           identity_key=identity, limit=Limit(20, 3600),
                           quarantine_keys=[f"quarantine#instance#i-{uuid.uuid4().hex[:17]}"])


def test_the_admission_sent_again_by_the_same_request_is_admitted_once(stack, admission):
    proof, request_id, identity = uuid.uuid4().hex, str(uuid.uuid4()), f"lost-{uuid.uuid4().hex}"
    admit(admission, proof, request_id, identity)
    admit(admission, proof, request_id, identity)  # the retry of a transaction that had committed
    start = int(time.time()) // 3600 * 3600
    counter = stack.client("dynamodb").get_item(
        TableName=stack_aws.QUARANTINE_TABLE, ConsistentRead=True,
        Key={"pk": {"S": f"ratelimit#issue-identity#{identity}#{start}"}})["Item"]
    assert counter["hits"]["N"] == "1"
    with pytest.raises(ProofReplayed):  # another request with the same proof is a replay
        admit(admission, proof, str(uuid.uuid4()), identity)


def test_an_audit_record_sent_again_is_written_once_and_the_write_succeeds(stack):
    store = AuditStore(stack.client("dynamodb"), stack_aws.AUDIT_TABLE, retention_days=1)
    record = AuditRecord(request_id=str(uuid.uuid4()), method="aws", outcome="issued", code="issued",
                         secret_id_accessor="acc-1")
    store.write(record)
    store.write(record)  # the retry of a PutItem that had landed: no error, so nothing is taken back
    assert store.get(record.request_id)["secret_id_accessor"] == "acc-1"


class _AnswersLost:
    """The stack's DynamoDB client, but every PutItem's answer is lost after it landed, on
    each attempt (no answer at all, as when both of a client's attempts time out under load)."""

    def __init__(self, client, land=True):
        self._client = client
        self._land = land

    def put_item(self, **kwargs):
        if self._land:
            self._client.put_item(**kwargs)
        raise TimeoutError("read timeout")  # what aws_calls turns into Unavailable

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_audit_write_whose_answers_were_all_lost_counts_as_written_when_the_record_landed(stack):
    from chalicelib.errors import Unavailable

    client = stack.client("dynamodb")
    landed = AuditRecord(request_id=str(uuid.uuid4()), method="aws", outcome="issued", code="issued",
                         secret_id_accessor="acc-2")
    AuditStore(_AnswersLost(client), stack_aws.AUDIT_TABLE, retention_days=1).write(landed)  # no error: not taken back
    assert AuditStore(client, stack_aws.AUDIT_TABLE, retention_days=1).get(landed.request_id)["outcome"] == "issued"
    lost = AuditRecord(request_id=str(uuid.uuid4()), method="aws", outcome="issued", code="issued")
    with pytest.raises(Unavailable):  # never landed: the caller must take the issuance back
        AuditStore(_AnswersLost(client, land=False), stack_aws.AUDIT_TABLE, retention_days=1).write(lost)
    assert AuditStore(client, stack_aws.AUDIT_TABLE, retention_days=1).get(lost.request_id) is None


class _AnswersAndReadsLost(_AnswersLost):
    """As _AnswersLost, and the read-back gets no answer either (the store overloaded)."""

    def get_item(self, **kwargs):
        raise TimeoutError("read timeout")


def test_a_record_that_landed_unseen_is_named_by_a_take_back_record_once_its_issuance_was_taken_back(stack):
    import logging

    from chalicelib.errors import Unavailable
    from chalicelib.pipeline.frame import AuditedRequests

    client = stack.client("dynamodb")
    reader = AuditStore(client, stack_aws.AUDIT_TABLE, retention_days=1)

    def run(undone):
        frame = AuditedRequests(AuditStore(_LostThenFine(client), stack_aws.AUDIT_TABLE, retention_days=1),
                                logging.getLogger("test"))
        record = frame.new_record("aws", {}, role="web", principal="arn:aws:iam::123456789012:role/demo-node")

        def work():
            record.outcome, record.code, record.secret_id_accessor = "issued", "issued", "acc-3"
            return {}

        with pytest.raises(Unavailable):  # no answer, no read-back: the caller is told 503
            frame.run(record, work, on_unrecorded=lambda: undone)
        # every page of the scan: after a whole suite the table holds more than one page (1 MB)
        found = [item for page in client.get_paginator("scan").paginate(
                     TableName=stack_aws.AUDIT_TABLE, FilterExpression="related_request_id = :id",
                     ExpressionAttributeValues={":id": {"S": record.request_id}})
                 for item in page["Items"]]
        return reader.get(record.request_id), [reader.get(item["request_id"]["S"]) for item in found]

    landed, follows = run(undone=True)
    assert landed["outcome"] == "issued"  # the broker never rewrites a record (append-only)
    assert [(f["action"], f["outcome"], f["code"], f["role"]) for f in follows] == [
        ("take_back", "error", "unavailable", "web")]
    assert "taken back" in follows[0]["reason"] and landed["request_id"] in follows[0]["reason"]
    # Not fully taken back (a destroy failed): no take_back record, so the record still in
    # force says issued and a revocation's sweep finds the issuance and destroys what is left.
    landed, follows = run(undone=False)
    assert landed["outcome"] == "issued" and follows == []


class _LostThenFine(_AnswersAndReadsLost):
    """The first PutItem lands and its answer is lost (reads too); later ones go through."""

    def __init__(self, client):
        super().__init__(client)
        self._puts = 0

    def put_item(self, **kwargs):
        self._puts += 1
        if self._puts == 1:  # the issuance's record: landed, no answer
            return super().put_item(**kwargs)
        return self._client.put_item(**kwargs)
