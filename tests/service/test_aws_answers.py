"""What the broker does with an AWS answer that is lost, or that is no answer, through its
botocore clients (chalicelib/aws_clients.py) against moto with SigV4 verified, behind a
proxy (tests/service/aws_proxy.py) that drops or replaces answers:

- an answer that is no answer (a captive portal's page, an empty 200) is a 503 with its
  audit record, never "no such instance", "no tags" or "not quarantined";
- a write whose answer was lost, sent again by botocore's retry, is counted once and is
  not the caller's replay;
- the error codes the broker reads are the ones AWS (moto) sends;
- a reader role's clients are assumed once under threads and again before expiry."""

import json
import time
import uuid

import pytest

from devstack import aws as stack_aws
from tests.service.aws_proxy import AnswerDropper


class _Endpoint:
    """The two settings aws_client_factory reads."""

    def __init__(self, url):
        self.aws_region, self.aws_endpoint_url = stack_aws.REGION, url


def _client(stack, service, url=None):
    from chalicelib.aws_clients import aws_client_factory

    env = stack.broker_env()
    return aws_client_factory(_Endpoint(url or env["BROKER_AWS_ENDPOINT_URL"]))(
        service, aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


# ---- no answer: the whole broker behind a proxy ---------------------------------------------------

class CaptivePortal(AnswerDropper):
    """Forwards every request to moto, but answers each whose form names `action` with
    HTTP 200 and an XHTML sign-in page (a captive portal, a wrong endpoint)."""

    PAGE = (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>Sign in</title>'
            b'</head><body><p>Log in to the network</p></body></html>')

    def __init__(self, upstream, action):
        super().__init__(upstream, drop="\0never")
        self.action = action

    def intercept(self, body, target):
        return self.PAGE if f"Action={self.action}&".encode() in body else None


@pytest.mark.parametrize("action", ["DescribeInstances", "GetRole", "GetInstanceProfile"])
def test_a_captive_portal_answering_a_facts_read_is_a_503_never_a_refusal(broker, fresh_service, action):
    """botocore parses the page as an answer with nothing in it: "no such instance", "the
    role no longer exists", "the profile holds no role", or a role without tags (the
    credentials issued on a read that never happened). It has no AWS request ID: the broker
    says it can't tell (503) and issues nothing."""
    from tests.service.conftest import use_environment
    from tests.service.test_aws_issuance import assert_error
    from tests.sigv4 import signed_login

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    proxy = CaptivePortal(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], action)
    restore = use_environment({"BROKER_AWS_ENDPOINT_URL": proxy.url})
    try:
        response = broker.post(signed_login(creds, "web", broker.server_id))
        assert_error(response, 503, "unavailable")
        assert "credentials" not in json.loads(response.body)
    finally:
        restore()
        proxy.close()
        stack.terminate_instance(instance)


class EmptyQuarantineReads(AnswerDropper):
    """Forwards everything to moto but the quarantine list's reads (GetItem on the quarantine
    table), answered with HTTP 200 and no body at all (a proxy's, a load balancer's)."""

    def __init__(self, upstream):
        super().__init__(upstream, drop="\0never")
        self.intercepted = 0

    def intercept(self, body, target):
        if target.endswith(".GetItem") and json.loads(body).get("TableName") == stack_aws.QUARANTINE_TABLE:
            self.intercepted += 1
            return b""
        return None


def test_an_empty_200_for_a_quarantine_read_never_clears_a_quarantined_role(broker, fresh_service):
    """botocore reads an empty 200 as a GetItem without Item: the role's quarantine would
    read as clear, and its machine get credentials. It is no answer: a 503, nothing issued."""
    from tests.service.conftest import use_environment
    from tests.service.security_helpers import SecurityClient, fresh_when
    from tests.service.test_aws_issuance import assert_error
    from tests.sigv4 import signed_login

    stack = broker.stack
    security = SecurityClient(broker, stack.assume("security-team", f"answers-{uuid.uuid4().hex[:6]}"))
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    revoked = json.loads(security.post("/v1/revocations", {
        "principal": "arn:aws:iam::123456789012:role/demo-node", "reason": "no-answer test", "quarantine": "1h"}).body)
    proxy = EmptyQuarantineReads(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"])
    restore = use_environment({"BROKER_AWS_ENDPOINT_URL": proxy.url})
    try:
        response = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
        assert proxy.intercepted >= 1
        assert_error(response, 503, "unavailable", "quarantine store")
    finally:
        restore()
        proxy.close()
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")
        stack.terminate_instance(instance)


def test_an_answer_without_a_request_id_is_refused_before_it_is_read(stack):
    from chalicelib.aws_calls import call
    from chalicelib.errors import Unavailable

    proxy = CaptivePortal(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], "DescribeInstances")
    try:
        ec2 = _client(stack, "ec2", proxy.url)
        with pytest.raises(Unavailable) as refused:
            call("ec2", ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"])
        assert refused.value.backend == "ec2" and "NotAnAwsAnswer" in refused.value.detail
        # the same client reads a real answer (moto's, with its request ID)
        assert "Reservations" in call("ec2", _client(stack, "ec2").describe_instances)
    finally:
        proxy.close()


# ---- a lost answer, sent again by botocore's retry -------------------------------------------------

def test_a_lost_transaction_answer_sent_again_admits_once(stack):
    from chalicelib.admission import Admission
    from chalicelib.policy import Limit

    proxy = AnswerDropper(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], "TransactWriteItems")
    try:
        admission = Admission(_client(stack, "dynamodb", proxy.url), stack_aws.REPLAY_TABLE,
                              stack_aws.QUARANTINE_TABLE)
        proof, request_id, identity = uuid.uuid4().hex, str(uuid.uuid4()), f"lost-{uuid.uuid4().hex}"
        admission.admit(proof, request_id=request_id, method="aws", valid_until=time.time() + 300,
                        identity_key=identity, limit=Limit(20, 3600),
                        quarantine_keys=[f"quarantine#instance#i-{uuid.uuid4().hex[:17]}"])
        assert proxy.dropped == 1 and proxy.targets.count("DynamoDB_20120810.TransactWriteItems") == 2
        start = int(time.time()) // 3600 * 3600
        counter = stack.client("dynamodb").get_item(
            TableName=stack_aws.QUARANTINE_TABLE, ConsistentRead=True,
            Key={"pk": {"S": f"ratelimit#issue-identity#{identity}#{start}"}})["Item"]
        assert counter["hits"]["N"] == "1"  # counted once
    finally:
        proxy.close()


def test_a_lost_put_answer_sent_again_is_not_a_replay(stack):
    """Without a quarantine table the admission is one conditional PutItem: its answer lost,
    botocore sends it again, and DynamoDB refuses it as a conditional write that already
    happened. The broker must not refuse its own caller (401 proof_replayed)."""
    from chalicelib.admission import Admission

    proxy = AnswerDropper(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], "PutItem")
    try:
        admission = Admission(_client(stack, "dynamodb", proxy.url), stack_aws.REPLAY_TABLE)
        admission.admit(uuid.uuid4().hex, request_id=str(uuid.uuid4()), method="aws", valid_until=time.time() + 300)
        assert proxy.dropped == 1 and proxy.targets.count("DynamoDB_20120810.PutItem") == 2
    finally:
        proxy.close()


# ---- the error codes the broker reads -----------------------------------------------------------

def _code(stack, service, operation, **params):
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError) as failed:
        getattr(_client(stack, service), operation)(**params)
    return failed.value.response["Error"]["Code"]


def test_the_error_codes_the_broker_reads_are_the_ones_aws_sends(stack):
    """facts.py's _NOT_FOUND, ecs.py's _TASK_MISSING and ClientException, IAM's NoSuchEntity."""
    from chalicelib.methods.aws.facts import _NOT_FOUND

    assert _code(stack, "ec2", "describe_instances", InstanceIds=["i-not-hex-at-all"]) in _NOT_FOUND
    assert _code(stack, "ecs", "describe_task_definition", taskDefinition="no-such-family:7") == "ClientException"
    assert _code(stack, "ecs", "describe_tasks", cluster="no-such-cluster",
                 tasks=[f"arn:aws:ecs:{stack_aws.REGION}:123456789012:task/no-such-cluster/"
                        "0123456789abcdef0123456789abcdef"]) == "ClusterNotFoundException"
    assert _code(stack, "iam", "get_role", RoleName="no-such-role-anywhere") == "NoSuchEntity"
    assert _code(stack, "iam", "get_instance_profile", InstanceProfileName="no-such-profile") == "NoSuchEntity"


# ---- a reader role's clients --------------------------------------------------------------------

def test_a_reader_roles_clients_are_assumed_once_under_threads_and_again_before_expiry(stack):
    """Threads asking for another account's clients at once share one AssumeRole; near the
    credentials' expiry they are replaced, and the new keys sign calls moto accepts."""
    from tests.service.conftest import use_environment

    restore = use_environment(stack.broker_env())  # the broker's own keys
    try:
        _reader_roles_under_threads_and_expiry()
    finally:
        restore()


def _reader_roles_under_threads_and_expiry():
    import threading

    import botocore.exceptions

    from chalicelib.backends import aws_client_factory
    from chalicelib.config import Settings
    from chalicelib.methods.aws.readers import REFRESH_MARGIN, AccountReaders
    from chalicelib.methods.aws.settings import Reader

    account = stack_aws.SECOND_ACCOUNT_ID

    class ReaderSettings:
        readers = {account: Reader(account, f"arn:aws:iam::{account}:role/{stack_aws.READER_ROLE}",
                                   stack_aws.READER_EXTERNAL_ID)}
        own_account = "123456789012"
        own_partition = "aws"

    now = [time.time()]
    readers = AccountReaders(ReaderSettings(), aws_client_factory(Settings.from_env()), clock=lambda: now[0])
    got, errors = [], []

    def ask():
        try:
            got.append(readers.for_account(account))
        except Exception as e:  # noqa: BLE001 (asserted below, by name)
            errors.append(type(e).__name__)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 8 and len({id(c) for c in got}) == 1
    first = got[0]
    ec2 = first.client("ec2")

    def signed_and_accepted(client):
        with pytest.raises(botocore.exceptions.ClientError) as answer:  # about the instance: the signature held
            client.describe_instances(InstanceIds=["i-0000000000000dead"])
        return answer.value.response["Error"]["Code"]

    def access_key(client):
        return client._request_signer._credentials.access_key

    assert signed_and_accepted(ec2) == "InvalidInstanceID.NotFound"
    now[0] = first.expires_at - REFRESH_MARGIN + 1
    second = readers.for_account(account)
    assert second is not first and second.client("ec2") is not ec2
    assert access_key(second.client("ec2")) != access_key(ec2)
    assert signed_and_accepted(second.client("ec2")) == "InvalidInstanceID.NotFound"
