"""Readers are keyed by (partition, account): a caller of `aws-cn` (or `aws-us-gov`) whose
account has the digits of one the broker reads in `aws` gets no facts at all, never the
commercial account's role tags, against moto (the broker's own account and a reader role)."""

import pytest

from chalicelib.backends import aws_client_factory
from chalicelib.config import Settings
from chalicelib.methods.aws.facts import AwsFactsReader
from chalicelib.methods.aws.proof import caller_from_arn
from chalicelib.methods.aws.readers import AccountReaders
from chalicelib.methods.aws.settings import AwsSettings, parse_readers
from devstack import aws as stack_aws

ACCOUNT = stack_aws.ACCOUNT_ID
SECOND = stack_aws.SECOND_ACCOUNT_ID


class _Settings:
    own_account = ACCOUNT
    own_partition = "aws"
    readers = parse_readers(
        f'{{"{SECOND}": {{"role_arn": "arn:aws:iam::{SECOND}:role/{stack_aws.READER_ROLE}", '
        f'"external_id": "{stack_aws.READER_EXTERNAL_ID}"}}}}')


class _Login:
    ecs_task_arn = None


@pytest.fixture
def world(stack):
    from tests.service.conftest import use_environment

    restore = use_environment(stack.broker_env())
    readers = AccountReaders(_Settings(), aws_client_factory(Settings.from_env()))
    reader = AwsFactsReader(readers, regions=[stack_aws.REGION], cache_seconds=0)
    calls = []
    readers.for_account(ACCOUNT).client("iam").meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    yield readers, reader, calls
    restore()


def _caller(arn):
    return caller_from_arn(arn, proof_hash="0" * 64, valid_until=0.0)


def test_a_caller_of_another_partition_gets_no_facts_of_the_commercial_account(world):
    readers, reader, calls = world
    # The control: the commercial caller's role tags are read in the broker's own account.
    commercial = reader.read(_caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-batch/job-1"), _Login())
    assert commercial.role_tags.get("vault-role") == "batch" and not commercial.unreadable_account
    calls.clear()
    for partition in ("aws-cn", "aws-us-gov"):
        facts = reader.read(_caller(f"arn:{partition}:sts::{ACCOUNT}:assumed-role/demo-batch/job-1"), _Login())
        assert facts.unreadable_account and facts.role_tags == {}, facts
        assert facts.canonical_arn == f"arn:{partition}:iam::{ACCOUNT}:role/demo-batch"
    assert calls == []  # nothing was asked of the commercial account's IAM
    assert readers.for_account(ACCOUNT, "aws-cn") is None
    # A reader role reads its own partition's account only.
    assert readers.for_account(SECOND, "aws-cn") is None
    assert readers.for_account(SECOND, "aws").partition == "aws"


def test_the_rules_deny_such_a_caller_with_a_reason(world):
    """Even a rule whose principal glob spans partitions can't grant on facts that were
    never read: the answer is a denial (the role tags it needs are unknown), not a 500."""
    from chalicelib.policy import parse_rules

    _, reader, _ = world
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "policies" / "rules.toml").read_text()
    text = text.replace(f'"arn:aws:iam::{ACCOUNT}:role/demo-batch"', f'"arn:*:iam::{ACCOUNT}:role/demo-batch"')
    rules = parse_rules(text)
    granted = rules.decide(reader.read(_caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-batch/job-1"), _Login()),
                           "batch")
    assert granted.granted  # the glob does span partitions
    decision = rules.decide(reader.read(_caller(f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/demo-batch/job-1"),
                                        _Login()), "batch")
    assert not decision.granted and "no reader role" in decision.reason


def test_reader_settings_carry_the_partition():
    readers = parse_readers(f'{{"{SECOND}": {{"role_arn": "arn:aws-cn:iam::{SECOND}:role/reader"}}}}')
    assert readers[SECOND].partition == "aws-cn"
    env = {"BROKER_SERVER_ID": "x"}
    assert AwsSettings.from_env(env, "cn-north-1").own_partition == "aws-cn"
    assert AwsSettings.from_env(env, "us-gov-west-1").own_partition == "aws-us-gov"
    assert AwsSettings.from_env(env, "eu-west-1").own_partition == "aws"
