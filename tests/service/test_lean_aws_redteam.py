"""Red team of the lean AWS clients against moto (SigV4 verified): the odd shapes of real
answers (lists of one and of none, paged tags, non-ASCII and markup in tags, trust
policies with characters URL-encoding must carry) read as botocore reads them."""

import json
import uuid

from devstack import aws as stack_aws
from tests.service.test_lean_clients_moto import _both, pair  # noqa: F401 (pair: the fixture)

ODD = "a+b %2B&amp; <x> \"q\" é 日本 🚀 ;=/"


def test_paged_role_tags_with_odd_characters_read_as_botocores(pair, stack):  # noqa: F811
    iam = stack.client("iam")
    name = f"redteam-tags-{uuid.uuid4().hex[:8]}"
    tags = {f"k{i}-é": f"{ODD}{i}" for i in range(5)}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(stack_aws.service_trust_policy(
        "ec2.amazonaws.com")), Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    lean, boto = pair
    try:
        for make in (lean, boto):
            seen, marker, pages = {}, None, 0
            while True:
                page = make("iam").list_role_tags(RoleName=name, MaxItems=2, **({"Marker": marker} if marker else {}))
                pages += 1
                seen.update({t["Key"]: t["Value"] for t in page["Tags"]})
                if not page["IsTruncated"]:
                    break
                marker = page["Marker"]
            assert seen == tags and pages == 3
        mine, theirs = _both(pair, "iam", "list_role_tags", RoleName=name, MaxItems=1)
        assert mine == {k: theirs[k] for k in mine} and len(mine["Tags"]) == 1 and mine["IsTruncated"] is True
    finally:
        iam.untag_role(RoleName=name, TagKeys=list(tags))
        iam.delete_role(RoleName=name)


def test_a_trust_policy_with_characters_url_encoding_must_carry_reads_as_botocores(pair, stack):  # noqa: F811
    iam = stack.client("iam")
    name = f"redteam-trust-{uuid.uuid4().hex[:8]}"
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"aws:RequestTag/team": [ODD, "100%", "%41"]}}},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(document))
    try:
        mine, theirs = _both(pair, "iam", "get_role", RoleName=name)
        assert mine["Role"]["AssumeRolePolicyDocument"] == theirs["Role"]["AssumeRolePolicyDocument"] == document
        # and read as untrusted: the second statement lets an account assume it
        from chalicelib.methods.aws.trust import only_service_may_assume

        assert "AWS arn:aws:iam::123456789012:root" in only_service_may_assume(
            mine["Role"]["AssumeRolePolicyDocument"], "ec2.amazonaws.com")
    finally:
        iam.delete_role(RoleName=name)


def test_an_instance_with_one_tag_or_none_reads_as_botocores(pair, stack):  # noqa: F811
    for tags in ({"vault-role": ODD}, None):
        instance = stack.launch_instance(tags, profile="demo-node")
        try:
            mine, theirs = _both(pair, "ec2", "describe_instances", InstanceIds=[instance])
            [mine_i] = mine["Reservations"][0]["Instances"]
            [theirs_i] = theirs["Reservations"][0]["Instances"]
            assert mine_i.get("Tags") == theirs_i.get("Tags")
            assert mine_i.get("Tags") == ([{"Key": "vault-role", "Value": ODD}] if tags else None)
            assert mine_i["State"] == theirs_i["State"] and mine_i["IamInstanceProfile"]["Arn"] == \
                theirs_i["IamInstanceProfile"]["Arn"]
        finally:
            stack.terminate_instance(instance)


def test_describe_instances_of_two_read_each_as_botocore(pair, stack):  # noqa: F811
    first, second = stack.launch_instance({"n": "1"}), stack.launch_instance({"n": "2"})
    try:
        mine, theirs = _both(pair, "ec2", "describe_instances", InstanceIds=[first, second])
        ids = lambda answer: sorted(i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"])  # noqa: E731
        assert ids(mine) == ids(theirs) == sorted([first, second])
    finally:
        stack.terminate_instance(first)
        stack.terminate_instance(second)
