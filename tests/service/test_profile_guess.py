"""The instance profile read beside DescribeInstances (chalicelib/methods/aws/facts.py):
a guess at the profile named like the caller's role, against moto. It only saves a step
on a cold cache; the membership check always reads the profile the instance really has."""

import json
import threading
import uuid

import pytest

from chalicelib.backends import aws_client_factory
from chalicelib.config import Settings
from chalicelib.errors import Unavailable
from chalicelib.methods.aws.facts import AwsFactsReader
from chalicelib.methods.aws.readers import AccountReaders
from devstack import aws as stack_aws

ACCOUNT = stack_aws.ACCOUNT_ID
EC2_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                    "Action": "sts:AssumeRole"}]}


class _OwnAccountOnly:
    readers = {}
    own_account = ACCOUNT
    own_partition = "aws"


class _Caller:
    def __init__(self, role, instance_id):
        self.principal = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{instance_id}"


@pytest.fixture
def world(stack):
    iam, ec2 = stack.client("iam"), stack.client("ec2")

    def role(name):
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_ONLY))

    def instance(profile, *roles):
        iam.create_instance_profile(InstanceProfileName=profile)
        for name in roles:
            iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=name)
        arn = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Arn"]
        return ec2.run_instances(ImageId=stack_aws.AMI_ID, MinCount=1, MaxCount=1,
                                 IamInstanceProfile={"Arn": arn})["Instances"][0]["InstanceId"]

    from tests.service.conftest import use_environment

    restore = use_environment(stack.broker_env())  # the broker's own credentials
    readers = AccountReaders(_OwnAccountOnly(), aws_client_factory(Settings.from_env()))
    reader = AwsFactsReader(readers, regions=[stack_aws.REGION], cache_seconds=60)
    calls = []
    for service in ("iam", "ec2"):
        readers.for_account(ACCOUNT).client(service, None if service == "iam" else stack_aws.REGION) \
            .meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    yield role, instance, reader, calls
    restore()


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_profile_named_like_its_role_is_read_beside_describe_instances(world, monkeypatch):
    role, instance, reader, calls = world
    name = _name("guess")
    role(name)
    instance_id = instance(name, name)
    # DescribeInstances may not finish before GetInstanceProfile has begun: read one after
    # the other (the way before), this waits out its 5 s and the assertion below fails.
    profile_asked, in_time = threading.Event(), []
    find = reader._find_instance

    threads = []

    def find_after_the_guess_began(clients, wanted):
        threads.append(threading.current_thread().name)
        in_time.append(profile_asked.wait(5))
        return find(clients, wanted)

    monkeypatch.setattr(reader, "_find_instance", find_after_the_guess_began)
    original = reader._profile_roles

    def profile_roles(clients, profile):
        profile_asked.set()
        return original(clients, profile)

    monkeypatch.setattr(reader, "_profile_roles", profile_roles)
    facts = reader.read(_Caller(name, instance_id), None)
    assert in_time == [True]  # GetInstanceProfile began while DescribeInstances was still to come
    # The claim, which waits on calls of its own, ran outside the pool (the role's tags, not
    # kept yet, went there): no pool thread waits on the pool (chalicelib/concurrency.py).
    assert threads == [threading.current_thread().name]
    assert facts.claim_error is None and facts.instance.instance_id == instance_id
    assert calls.count("GetInstanceProfile") == 1  # the guess served the membership check


def test_a_profile_named_otherwise_is_read_after_describe_instances_and_decides(world):
    role, instance, reader, calls = world
    name = _name("other")
    role(name)
    instance_id = instance(_name("profile"), name)
    facts = reader.read(_Caller(name, instance_id), None)
    assert facts.claim_error is None and facts.instance.instance_id == instance_id
    assert calls.count("GetInstanceProfile") == 2  # the guess (no such profile), then the real one


def test_a_profile_named_like_the_role_but_holding_another_is_not_membership(world):
    """SECURITY: the guess's name proves nothing; the instance's own profile must hold the role."""
    role, instance, reader, _ = world
    claimed, other = _name("claimed"), _name("holder")
    role(claimed)
    role(other)
    instance_id = instance(claimed, other)  # the profile "claimed" holds role "other"
    facts = reader.read(_Caller(claimed, instance_id), None)
    assert facts.instance is None and "does not hold role" in facts.claim_error


def test_a_failed_guess_is_nobodys_error(world, monkeypatch):
    role, instance, reader, _ = world
    name, profile = _name("failing"), _name("profile")
    role(name)
    instance_id = instance(profile, name)
    original = reader._profile_roles

    def profile_roles(clients, wanted):
        if wanted == name:  # only the guess fails (IAM throttling it, say)
            raise Unavailable("IAM is throttling", backend="iam")
        return original(clients, wanted)

    monkeypatch.setattr(reader, "_profile_roles", profile_roles)
    facts = reader.read(_Caller(name, instance_id), None)
    assert facts.claim_error is None and facts.instance.instance_id == instance_id
