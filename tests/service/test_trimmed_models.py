"""One call per trimmed service model through the broker's own client factory
(chalicelib/backends.botocore_client_factory, trimmed models: deploy/botocore_models.py) against
moto with SigV4 verification: the requests a trimmed model forms and the answers it parses
are those of the full one. The issuance, revocation and rules-source tests go through the
same clients for everything else."""

import json

import pytest

from chalicelib.backends import botocore_client_factory
from chalicelib.config import Settings
from devstack import aws as stack_aws
from tests.service.conftest import use_environment


@pytest.fixture(scope="module")
def make(stack):
    restore = use_environment(stack.broker_env())
    try:
        yield botocore_client_factory(Settings.from_env())
    finally:
        restore()


def test_sts_and_secrets_manager(make, stack):
    assert make("sts").get_caller_identity()["Account"]
    secret = make("secretsmanager").get_secret_value(SecretId=stack.broker_env()["BROKER_VAULT_SECRET_ID_SECRET"])
    assert secret["SecretString"]


def test_ec2_and_iam(make, stack):
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    found = make("ec2").describe_instances(InstanceIds=[instance])
    [described] = [i for r in found["Reservations"] for i in r["Instances"]]
    assert described["InstanceId"] == instance and described["State"]["Name"] == "running"
    assert isinstance(described["LaunchTime"], str)  # the broker keeps timestamps as strings
    assert any(t == {"Key": "vault-role", "Value": "web"} for t in described["Tags"])
    iam = make("iam")
    profile = iam.get_instance_profile(InstanceProfileName="demo-node")["InstanceProfile"]
    [role] = profile["Roles"]
    assert iam.get_role(RoleName=role["RoleName"])["Role"]["AssumeRolePolicyDocument"]
    # GetRole's answer carries the role's tags: the broker reads them there (no ListRoleTags)
    assert iam.get_role(RoleName="demo-batch")["Role"]["Tags"] == [{"Key": "vault-role", "Value": "batch"}]
    with pytest.raises(Exception) as missing:
        iam.get_role(RoleName="no-such-role-anywhere")
    assert missing.value.response["Error"]["Code"] == "NoSuchEntity"  # the error shapes are kept


def test_dynamodb(make, stack):
    ddb = make("dynamodb")
    assert ddb.describe_table(TableName=stack_aws.AUDIT_TABLE)["Table"]["TableName"] == stack_aws.AUDIT_TABLE
    key = {"request_id": {"S": "trimmed-model-test"}}
    ddb.put_item(TableName=stack_aws.AUDIT_TABLE, Item={**key, "outcome": {"S": "test"}})
    assert ddb.get_item(TableName=stack_aws.AUDIT_TABLE, Key=key, ConsistentRead=True)["Item"]["outcome"] == {"S": "test"}
    ddb.delete_item(TableName=stack_aws.AUDIT_TABLE, Key=key)


def test_ecs(make, stack):
    definition = make("ecs").describe_task_definition(taskDefinition=stack_aws.TASK_FAMILY)["taskDefinition"]
    assert definition["family"] == stack_aws.TASK_FAMILY


def test_s3_and_ssm_rules_sources(make, stack):
    stack.client("s3").create_bucket(Bucket="trimmed-model-rules")
    stack.client("s3").put_object(Bucket="trimmed-model-rules", Key="rules.toml", Body=b"# rules\n")
    assert make("s3").get_object(Bucket="trimmed-model-rules", Key="rules.toml")["Body"].read() == b"# rules\n"
    stack.client("ssm").put_parameter(Name="/trimmed-model/rules", Value=json.dumps({"a": 1}), Type="String",
                                      Overwrite=True)
    assert make("ssm").get_parameter(Name="/trimmed-model/rules")["Parameter"]["Value"] == '{"a": 1}'
