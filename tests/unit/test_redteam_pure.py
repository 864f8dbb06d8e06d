"""Red team of issue 10, the pure parts: trust-policy parsing, identity keys, and the
admission transaction's reading of DynamoDB's cancellation reasons."""

import pytest
from botocore.exceptions import ClientError

from chalicelib.admission import Admission
from chalicelib.errors import ProofReplayed, Quarantined, RateLimited, Unavailable
from chalicelib.methods.aws.proof import caller_from_arn
from chalicelib.methods.aws.trust import EC2_SERVICE, ECS_TASKS_SERVICE, only_service_may_assume
from chalicelib.methods.gcp.proof import caller_from_claims
from chalicelib.policy import RateLimits
from chalicelib.methods import identity
from chalicelib.stores.quarantine import keys_of

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all

EC2_ONLY = {"Effect": "Allow", "Principal": {"Service": EC2_SERVICE}, "Action": "sts:AssumeRole"}


def policy(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


# ---- trust policies --------------------------------------------------------------------------------


def test_an_ec2_only_trust_policy_vouches():
    assert only_service_may_assume(policy(EC2_ONLY), EC2_SERVICE) is None
    assert only_service_may_assume(policy(dict(EC2_ONLY, Principal={"Service": [EC2_SERVICE]})), EC2_SERVICE) is None


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "Principal": {"Service": [EC2_SERVICE, "lambda.amazonaws.com"]}, "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": ["*"], "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:Assume*"},
    {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "STS:ASSUMEROLE"},
    {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "*"},
    {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "sts:*"},
    {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "sts:AssumeRol?"},
    {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": ["s3:GetObject", "sts:AssumeRole"]},
    {"Effect": "Allow", "Principal": {"Federated": "accounts.google.com"},
     "Action": "sts:AssumeRoleWithWebIdentity"},
    {"Effect": "Allow", "Principal": {"Federated": "arn:aws:iam::123456789012:saml-provider/x"},
     "Action": "sts:AssumeRoleWithSAML"},
    {"Effect": "Allow", "NotPrincipal": {"Service": EC2_SERVICE}, "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "NotAction": "sts:TagSession"},
    {"Effect": "Allow", "Principal": {"AWS": "*"}},  # no Action: unreadable, assume the worst
    {"Effect": "Allow", "Principal": {"CanonicalUser": "79a59df900b949e55d96a1e698fbaced"}, "Action": "sts:AssumeRole"},
    # An Effect IAM would not write as such: anything but an exact "Deny" must count as a grant.
    {"Effect": "allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
    {"Effect": "ALLOW", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
    {"Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"},
])
def test_a_second_principal_in_the_trust_policy_is_refused(statement):
    assert only_service_may_assume(policy(EC2_ONLY, statement), EC2_SERVICE) is not None


def test_a_deny_statement_only_narrows():
    deny = {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
    assert only_service_may_assume(policy(EC2_ONLY, deny), EC2_SERVICE) is None


def test_an_ecs_claim_needs_the_ecs_service_not_ec2():
    assert only_service_may_assume(policy(EC2_ONLY), ECS_TASKS_SERVICE) is not None


@pytest.mark.parametrize("document", ["%7B", "[]", "null", 5, None, {"Statement": 5}, {"Statement": "x"},
                                      {"Statement": []}, {}])
def test_an_unreadable_or_empty_trust_policy_vouches_for_nobody(document):
    assert only_service_may_assume(document, EC2_SERVICE) is not None


# ---- identity keys: whose budget a request spends ------------------------------------------------------


def test_a_session_named_after_an_instance_does_not_share_the_instances_budget():
    """Any principal of any account can name a session `i-…`: the per-identity budget the
    session counts must not be the one of the instance's real sessions."""
    real = caller_from_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0",
                           proof_hash="a", valid_until=0)
    other_account = caller_from_arn("arn:aws:sts::210987654321:assumed-role/demo-node/i-0123456789abcdef0",
                                    proof_hash="b", valid_until=0)
    other_role = caller_from_arn("arn:aws:sts::123456789012:assumed-role/demo-batch/i-0123456789abcdef0",
                                 proof_hash="c", valid_until=0)
    assert len({real.identity_key, other_account.identity_key, other_role.identity_key}) == 3
    # ...and the instance's own sessions (every one named after it) still share one budget.
    again = caller_from_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0",
                            proof_hash="d", valid_until=0)
    assert again.identity_key == real.identity_key


def test_identity_keys_of_an_ec2_instance_an_ecs_task_and_a_gce_instance_never_collide():
    task = caller_from_arn("arn:aws:sts::123456789012:assumed-role/demo-task/0123456789abcdef0123456789abcdef",
                           proof_hash="a", valid_until=0)
    gce = caller_from_claims({
        "email": "x@p.iam.gserviceaccount.com", "sub": "1", "exp": 2, "google": {"compute_engine": {
            "project_id": "demo-project", "zone": "us-central1-a", "instance_id": "0123456789abcdef0123456789abcdef",
            "instance_name": "n", "instance_creation_timestamp": 1, "project_number": 1}}}, "h")
    assert task.identity_key != gce.identity_key


def test_quarantine_keys_never_repeat_within_one_transaction():
    """DynamoDB refuses a transaction naming one item twice (a ValidationException, i.e. 503)."""
    for method, args in (("aws", ("arn:aws:iam::123456789012:user/bob", "i-1", "arn:aws:iam::123456789012:user/bob")),
                         ("aws", ("arn:aws:sts::123456789012:assumed-role/r/i-1", "i-1",
                                  "arn:aws:iam::123456789012:role/r")),
                         ("gcp", ("a@b.iam.gserviceaccount.com", None, "a@b.iam.gserviceaccount.com"))):
        own, shared = identity(method).quarantine_keys(*args)
        keys = keys_of(own + shared)
        assert len(keys) == len(set(keys))


# ---- the admission transaction ---------------------------------------------------------------------------


def cancelled(*codes):
    return ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                        "CancellationReasons": [{"Code": c} for c in codes]}, "TransactWriteItems")


class FakeDynamo:
    """Answers transact_write_items from a script (errors are raised), put_item succeeds."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.transactions = 0
        self.puts = 0

    def transact_write_items(self, **kwargs):
        self.transactions += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def put_item(self, **kwargs):
        self.puts += 1
        return {}

    def get_item(self, **kwargs):
        return {}


def admit(db):
    limits = RateLimits()
    return Admission(db, "replay", "quarantine").admit(
        "hash", request_id="r", method="aws", valid_until=0, identity_key="k", limit=limits.per_identity,
        quarantine_keys=["quarantine#instance#i-1", "quarantine#principal#arn:aws:iam::1:role/r"])


def test_a_transaction_conflict_with_another_instances_request_is_retried_not_a_503():
    """Every instance of a role checks the same `quarantine#principal#<role ARN>` item: two
    instances booting at once make concurrent transactions on one item, which DynamoDB
    cancels with TransactionConflict. That is contention, not an outage."""
    db = FakeDynamo(cancelled("None", "None", "None", "TransactionConflict"), {})
    admit(db)
    assert db.transactions == 2


def test_a_transaction_that_keeps_conflicting_is_a_503():
    db = FakeDynamo(*[cancelled("None", "TransactionConflict", "None", "None")] * 10)
    with pytest.raises(Unavailable):
        admit(db)
    assert 1 < db.transactions <= 5


@pytest.mark.parametrize("codes, error", [
    (("ConditionalCheckFailed", "None", "None", "None"), ProofReplayed),
    (("None", "ConditionalCheckFailed", "None", "None"), RateLimited),
    (("None", "None", "ConditionalCheckFailed", "None"), Quarantined),
    (("None", "ConditionalCheckFailed", "None", "ConditionalCheckFailed"), Quarantined),
    (("None", "None", "None", "ThrottlingError"), Unavailable),
    (("None", "ValidationError", "None", "None"), Unavailable),
])
def test_cancellation_reasons_are_read_by_position(codes, error):
    with pytest.raises(error):
        admit(FakeDynamo(cancelled(*codes)))


# ---- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("same", [("BROKER_QUARANTINE_TABLE", "BROKER_REPLAY_TABLE"),
                                  ("BROKER_REPLAY_TABLE", "BROKER_AUDIT_TABLE"),
                                  ("BROKER_QUARANTINE_TABLE", "BROKER_AUDIT_TABLE")])
def test_one_table_named_twice_stops_the_start(same):
    """The quarantine table given as the replay table: every admission transaction would
    fail (a 503 per request) instead of the start failing with the variable's name."""
    from chalicelib.config import Settings
    from chalicelib.errors import ConfigError

    env = {"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r", "BROKER_VAULT_SECRET_ID_SECRET": "s",
           "BROKER_SERVER_ID": "x", "BROKER_AUDIT_TABLE": "audit", "BROKER_REPLAY_TABLE": "replay",
           "BROKER_QUARANTINE_TABLE": "quarantine"}
    Settings.from_env(dict(env))  # three tables: fine
    env[same[0]] = env[same[1]]
    with pytest.raises(ConfigError, match=same[0]):
        Settings.from_env(env)
