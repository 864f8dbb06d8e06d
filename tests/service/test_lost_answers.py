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
