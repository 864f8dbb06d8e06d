"""The identity model's pure parts: trust policies, task ARNs, the AWS conditions, the
rules engine reporting every problem at once, and the registry of methods."""

import pytest

from chalicelib.methods import REGISTRY, conditions, facts_from_dict
from chalicelib.methods.aws.arn import parse_principal_arn, parse_task_arn
from chalicelib.methods.aws.match import mismatches, parse
from chalicelib.methods.aws.model import AwsFacts, InstanceFacts, TaskFacts
from chalicelib.methods.aws.proof import caller_from_arn
from chalicelib.methods.aws.trust import EC2_SERVICE, ECS_TASKS_SERVICE, only_service_may_assume
from chalicelib.policy import RulesError, parse_rules


def trust(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(principal, action="sts:AssumeRole", **extra):
    return {"Effect": "Allow", "Principal": principal, "Action": action, **extra}


@pytest.mark.parametrize("doc", [
    trust(allow({"Service": EC2_SERVICE})),
    trust(allow({"Service": [EC2_SERVICE]}), {"Effect": "Deny", "Principal": "*", "Action": "sts:AssumeRole"}),
    trust(allow({"Service": EC2_SERVICE}, Condition={"StringEquals": {"aws:SourceAccount": "123456789012"}})),
    trust(allow({"Service": EC2_SERVICE}), allow({"AWS": "arn:aws:iam::1:root"}, action="sts:TagSession")),
])
def test_only_ec2_may_assume(doc):
    assert only_service_may_assume(doc, EC2_SERVICE) is None


@pytest.mark.parametrize("doc, why", [
    (trust(allow({"Service": EC2_SERVICE}), allow({"AWS": "*"})), "AWS *"),
    (trust(allow("*")), "any principal"),
    (trust(allow({"Service": [EC2_SERVICE, "lambda.amazonaws.com"]})), "lambda.amazonaws.com"),
    (trust(allow({"AWS": "arn:aws:iam::123456789012:root"}, action="sts:Assume*")), "arn:aws:iam::123456789012:root"),
    (trust(allow({"Federated": "accounts.google.com"}, action="sts:AssumeRoleWithWebIdentity")), "Federated"),
    (trust(allow({"AWS": "arn:aws:iam::1:root"}, action="STS:ASSUMEROLE")), "arn:aws:iam::1:root"),
    (trust(allow({"AWS": "arn:aws:iam::1:root"}, action="*")), "arn:aws:iam::1:root"),
    (trust({"Effect": "Allow", "NotPrincipal": {"AWS": "x"}, "Action": "sts:AssumeRole"}), "NotPrincipal"),
    (trust(allow({"Service": ECS_TASKS_SERVICE})), ECS_TASKS_SERVICE),
    (trust(), "lets nobody"),
    ("not json", "unreadable"),
])
def test_anyone_else_breaks_the_claim(doc, why):
    problem = only_service_may_assume(doc, EC2_SERVICE)
    assert problem is not None and why in problem


def test_url_encoded_trust_policies_are_read():
    assert only_service_may_assume('%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A'
                                   '%7B%22Service%22%3A%22ec2.amazonaws.com%22%7D%2C%22Action%22%3A'
                                   '%22sts%3AAssumeRole%22%7D%5D%7D', EC2_SERVICE) is None


@pytest.mark.parametrize("arn, ok", [
    ("arn:aws:ecs:us-east-1:123456789012:task/demo-cluster/0123456789abcdef0123456789abcdef", True),
    ("arn:aws:ecs:eu-west-1:123456789012:task/c/0c9e6a34-6f86-4b3e-9d9e-2f4a3d6c0b1a", True),
    ("arn:aws:ecs:us-east-1:123456789012:task/0123456789abcdef0123456789abcdef", False),  # short format
    ("arn:aws:ecs:us-east-1:123456789012:task/c/not-a-task-id", False),
    ("arn:aws:ec2:us-east-1:123456789012:task/c/0123456789abcdef0123456789abcdef", False),
    ("arn:aws:ecs:us-east-1:12345:task/c/0123456789abcdef0123456789abcdef", False),
])
def test_task_arns(arn, ok):
    assert (parse_task_arn(arn) is not None) == ok


def test_the_verified_caller_names_the_claimed_machine():
    ec2 = caller_from_arn("arn:aws:sts::123456789012:assumed-role/r/i-0123456789abcdef0", proof_hash="h",
                          valid_until=1)
    task = caller_from_arn("arn:aws:sts::123456789012:assumed-role/r/0123456789abcdef0123456789abcdef",
                           proof_hash="h", valid_until=1)
    user = caller_from_arn("arn:aws:iam::123456789012:user/alice", proof_hash="h", valid_until=1)
    assert (ec2.claimed.kind, task.claimed.kind, user.claimed) == ("ec2-instance", "ecs-task", None)
    assert ec2.identity_key != task.identity_key != user.identity_key
    assert ec2.canonical_principal == "arn:aws:iam::123456789012:role/r"


def test_budgets_session_names_cannot_multiply():
    """Issue 23, item 8: a machine-less session counts its own budget and its role's, which
    every session name shares; a claimed machine counts its own; an IAM user its own."""
    def budgets(arn):
        return caller_from_arn(arn, proof_hash="h", valid_until=1).budgets

    one = budgets("arn:aws:sts::123456789012:assumed-role/r/job-1")
    two = budgets("arn:aws:sts::123456789012:assumed-role/r/job-2")
    assert [name for name, _ in one] == ["identity", "principal"]
    assert one[0] != two[0] and one[1] == two[1] == ("principal", "role:arn:aws:iam::123456789012:role/r")
    assert budgets("arn:aws:sts::123456789012:assumed-role/other/job-1")[1] != one[1]
    ec2 = caller_from_arn("arn:aws:sts::123456789012:assumed-role/r/i-0123456789abcdef0", proof_hash="h",
                          valid_until=1)
    assert ec2.budgets == (("identity", ec2.identity_key),)
    assert budgets("arn:aws:iam::123456789012:user/path/alice") == (
        ("principal", "user:arn:aws:iam::123456789012:user/alice"),)


def test_gcp_budgets_a_service_account_is_one_principal():
    from chalicelib.methods.gcp.proof import caller_from_claims

    sa = caller_from_claims({"email": "job@p-123456.iam.gserviceaccount.com", "sub": "1", "exp": 9}, "h")
    assert sa.budgets == (("principal", "service-account:job@p-123456.iam.gserviceaccount.com"),)
    gce = caller_from_claims({"email": "vm@p-123456.iam.gserviceaccount.com", "sub": "1", "exp": 9, "google": {
        "compute_engine": {"project_id": "p-123456", "zone": "z", "instance_id": "42", "instance_name": "n",
                           "instance_creation_timestamp": 1, "project_number": 2}}}, "h")
    assert gce.budgets == (("identity", gce.identity_key),) and "42" in gce.identity_key


def facts(**kw):
    arn = kw.pop("arn", "arn:aws:sts::123456789012:assumed-role/r/i-0123456789abcdef0")
    parsed = parse_principal_arn(arn)
    return AwsFacts(account=parsed.account, principal_arn=arn, canonical_arn=parsed.canonical_arn,
                    principal_type=parsed.kind, role_name=parsed.role_name, session_name=parsed.session_name, **kw)


WEB = {"accounts": ["123456789012"], "principal_arns": ["arn:aws:iam::123456789012:role/r"],
       "require_instance": True, "instance_tags": {"vault-role": "web"}}
INSTANCE = InstanceFacts("i-0123456789abcdef0", "us-east-1", "running", None, {"vault-role": "web"}, False)


def test_an_unreadable_account_is_refused_by_name():
    reasons = mismatches(parse(WEB, "w"), facts(unreadable_account=True))
    assert any("no reader role" in r for r in reasons)


def test_a_shared_trust_needs_the_opt_in():
    shared = facts(instance=INSTANCE, claim_trust_error="role r can't vouch for its session name: ...")
    assert any("claim is refused" in r for r in mismatches(parse(WEB, "w"), shared))
    assert mismatches(parse(dict(WEB, allow_shared_role_trust=True), "w"), shared) == []


def test_imdsv2_and_task_conditions():
    assert any("IMDSv1" in r for r in mismatches(parse(dict(WEB, require_imdsv2=True), "w"), facts(instance=INSTANCE)))
    task = TaskFacts("0" * 32, "arn", "us-east-1", "demo-cluster", None, "demo-web", 3, "EC2", "RUNNING",
                     {"vault-role": "web"})
    rule = parse({"accounts": ["123456789012"], "principal_arns": ["arn:aws:iam::123456789012:role/r"],
                  "require_task": True, "ecs_clusters": ["demo-*"], "ecs_services": ["web"],
                  "task_tags": {"vault-role": "web"}}, "t")
    assert mismatches(rule, facts(task=task)) == ["task belongs to no service"]


@pytest.mark.parametrize("table, field", [
    ({"require_imdsv2": True}, "require_imdsv2: needs require_instance"),
    ({"task_tags": {"a": "b"}}, "task_tags: needs require_task"),
    ({"require_task": True, "require_instance": True}, "can't both hold"),
])
def test_conditions_are_validated(table, field):
    with pytest.raises(RulesError, match=field):
        parse(dict({"accounts": ["123456789012"], "principal_arns": ["arn:aws:iam::1:role/r"]}, **table), "w")


def test_every_problem_of_a_rules_file_is_reported_at_once():
    text = ('version = 1\n[[rule]]\nname = "a"\nrole = "web"\n[rule.aws]\naccounts = ["1"]\nprincipal_arns = ["x"]\n'
            '[[rule]]\nname = "b"\nrole = "bad role"\n[rule.gcp]\nprojects = ["p"]\n'
            '[[rule]]\nname = "c"\nrole = "web"\n')
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    problems = caught.value.problems
    assert len(problems) == 3 and "rule #1 (a)" in problems[0] and "rule #2 (b)" in problems[1]
    assert "[rule.aws] or [rule.gcp]" in problems[2]


def test_the_registry_has_one_line_per_method_and_facts_come_back_by_method():
    assert set(conditions()) == set(REGISTRY) == {"aws", "gcp"}
    gcp = facts_from_dict({"method": "gcp", "email": "x@p.iam.gserviceaccount.com", "project_id": "p"})
    assert gcp.method == "gcp" and gcp.principal == "x@p.iam.gserviceaccount.com"
    aws = facts_from_dict({"principal_arn": "arn:aws:iam::123456789012:role/r"})
    assert aws.canonical_principal == "arn:aws:iam::123456789012:role/r"
    with pytest.raises(ValueError, match="unknown proof method"):
        facts_from_dict({"method": "azure"})
