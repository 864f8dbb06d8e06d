"""The lean clients (chalicelib/lean_aws/) against moto with SigV4 verification, beside
botocore's clients (the trimmed models) on the same calls: the same answers for every field
the broker reads, the same error codes, and a signature moto checks (a wrong key is refused)."""

import json
import uuid

import pytest

from chalicelib import lean_aws
from chalicelib.backends import aws_client_factory, botocore_client_factory
from chalicelib.config import Settings
from chalicelib.http_pool import Pools
from devstack import aws as stack_aws
from tests.service.conftest import use_environment


@pytest.fixture(scope="module")
def pair(stack):
    """(make a lean client, make a botocore client), both of the broker's own credentials."""
    restore = use_environment(stack.broker_env())
    try:
        settings = Settings.from_env()
        lean, boto = aws_client_factory(settings), botocore_client_factory(settings)
        assert isinstance(lean("dynamodb"), lean_aws.LeanClient)
        yield lean, boto
    finally:
        restore()


def _both(pair, service, operation, **params):
    lean, boto = pair
    answers = []
    for make in (lean, boto):
        answer = getattr(make(service), operation)(**params)
        answer.pop("ResponseMetadata", None)
        answers.append(answer)
    return answers


def _errors(pair, service, operation, **params):
    codes = []
    for make in pair:
        with pytest.raises(Exception) as failed:
            getattr(make(service), operation)(**params)
        codes.append(failed.value.response["Error"]["Code"])
    return codes


def test_ec2_describe_instances_reads_as_botocore_reads_it(pair, stack):
    instance = stack.launch_instance({"vault-role": "web", "team": "a b&c<d>"}, profile="demo-node")
    try:
        lean, boto = _both(pair, "ec2", "describe_instances", InstanceIds=[instance])
        [(lean_r, boto_r)] = zip(lean["Reservations"], boto["Reservations"])
        assert lean_r["OwnerId"] == boto_r["OwnerId"] and lean_r["ReservationId"] == boto_r["ReservationId"]
        [(mine, theirs)] = zip(lean_r["Instances"], boto_r["Instances"])
        for key, value in mine.items():
            assert value == theirs[key] if not isinstance(value, dict) else \
                value == {k: theirs[key][k] for k in value}, key
        assert set(mine) >= {"InstanceId", "State", "IamInstanceProfile", "Tags", "MetadataOptions"}
        assert {"Key": "team", "Value": "a b&c<d>"} in mine["Tags"]
    finally:
        stack.terminate_instance(instance)
    assert _errors(pair, "ec2", "describe_instances", InstanceIds=["i-0000000000000dead"]) == [
        "InvalidInstanceID.NotFound"] * 2


def test_iam_reads_as_botocore_reads_them(pair):
    lean, boto = _both(pair, "iam", "get_instance_profile", InstanceProfileName="demo-node")
    assert lean["InstanceProfile"]["Roles"] == [{k: r[k] for k in ("RoleName", "RoleId", "Arn", "Path")}
                                                for r in boto["InstanceProfile"]["Roles"]]
    lean, boto = _both(pair, "iam", "get_role", RoleName="demo-node")
    assert lean["Role"]["AssumeRolePolicyDocument"] == boto["Role"]["AssumeRolePolicyDocument"]
    assert isinstance(lean["Role"]["AssumeRolePolicyDocument"], dict)
    lean, boto = _both(pair, "iam", "get_role", RoleName="demo-batch")  # a role with tags
    assert lean["Role"]["Tags"] == boto["Role"]["Tags"] == [{"Key": "vault-role", "Value": "batch"}]
    assert _errors(pair, "iam", "get_role", RoleName="no-such-role-anywhere") == ["NoSuchEntity"] * 2


def test_sts_reads_as_botocore_reads_it(pair):
    lean, boto = _both(pair, "sts", "get_caller_identity")
    assert lean == boto
    role = f"arn:aws:iam::{stack_aws.SECOND_ACCOUNT_ID}:role/{stack_aws.READER_ROLE}"
    lean, boto = _both(pair, "sts", "assume_role", RoleArn=role, RoleSessionName="lean-test", DurationSeconds=900,
                       ExternalId=stack_aws.READER_EXTERNAL_ID)
    assert set(lean["Credentials"]) == set(boto["Credentials"]) == {
        "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert lean["AssumedRoleUser"]["Arn"].endswith("/lean-test")
    assert lean["Credentials"]["Expiration"][:16] == boto["Credentials"]["Expiration"][:16]  # ISO text, both


def test_dynamodb_and_its_errors(pair, stack):
    lean, boto = pair
    table = stack_aws.AUDIT_TABLE
    key = {"request_id": {"S": f"lean-{uuid.uuid4()}"}}
    lean("dynamodb").put_item(TableName=table, Item={**key, "outcome": {"S": "test"}, "n": {"N": "7"}},
                              ConditionExpression="attribute_not_exists(request_id)")
    mine, theirs = _both(pair, "dynamodb", "get_item", TableName=table, Key=key, ConsistentRead=True)
    assert mine == theirs and mine["Item"]["n"] == {"N": "7"}
    assert _errors(pair, "dynamodb", "put_item", TableName=table, Item=key,
                   ConditionExpression="attribute_not_exists(request_id)") == ["ConditionalCheckFailedException"] * 2
    reasons = []
    for make in pair:
        with pytest.raises(Exception) as cancelled:
            make("dynamodb").transact_write_items(TransactItems=[{"Put": {
                "TableName": table, "Item": key, "ConditionExpression": "attribute_not_exists(request_id)"}}])
        reasons.append([r.get("Code") for r in cancelled.value.response["CancellationReasons"]])
    assert reasons == [["ConditionalCheckFailed"]] * 2
    lean("dynamodb").delete_item(TableName=table, Key=key)
    assert "Item" not in lean("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True)


def test_secrets_manager_and_ecs(pair, stack):
    secret = stack.broker_env()["BROKER_VAULT_SECRET_ID_SECRET"]
    mine, theirs = _both(pair, "secretsmanager", "get_secret_value", SecretId=secret)
    assert mine["SecretString"] == theirs["SecretString"]
    mine, theirs = _both(pair, "ecs", "describe_task_definition", taskDefinition=stack_aws.TASK_FAMILY)
    assert mine["taskDefinition"]["taskRoleArn"] == theirs["taskDefinition"]["taskRoleArn"]
    assert _errors(pair, "secretsmanager", "get_secret_value", SecretId="no-such-secret") == [
        "ResourceNotFoundException"] * 2


def test_moto_checks_the_lean_signature(stack):
    """A request signed with the wrong secret key is refused; the right one is served."""
    env = stack.broker_env()
    real = lean_aws.OwnCredentials(environ={"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                                            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]})
    forged = lean_aws.OwnCredentials(environ={"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                                              "AWS_SECRET_ACCESS_KEY": "not-the-secret-key"})
    for credentials, refused in ((real, False), (forged, True)):
        client = lean_aws.make_client("sts", "us-east-1", endpoint_url=env["BROKER_AWS_ENDPOINT_URL"], pools=Pools(),
                                      own_credentials=credentials)
        if refused:
            with pytest.raises(lean_aws.AwsError) as denied:
                client.get_caller_identity()
            assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            assert "not-the-secret-key" not in json.dumps(denied.value.response) + str(denied.value)
        else:
            assert client.get_caller_identity()["Account"]
