"""Issue 23, item 8: budgets that session names can't multiply, tried for real against the
local stack (moto with SigV4 verified, the real app in process, real OpenBao).

A caller who may assume a role and claims no machine names a session as it likes. Each
session has its own per-identity budget, but every session of the role counts the role's
(per_principal), in the same admission transaction: once that is spent, a new session
name is refused too.
"""

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devstack import aws as stack_aws
from tests.service.conftest import use_environment
from tests.service.test_aws_issuance import assert_error
from tests.sigv4 import signed_login

RULES = Path(__file__).resolve().parents[2] / "policies" / "rules.toml"
ACCOUNT = "123456789012"


def proofs(broker, role_name, session, role, count):
    """`count` distinct proofs of one session (signed at distinct seconds within the skew)."""
    creds = broker.stack.assume(role_name, session)
    now = datetime.now(timezone.utc)
    return [signed_login(creds, role, broker.server_id, when=now - timedelta(seconds=i)) for i in range(count)]


@pytest.fixture
def fresh_role(broker, tmp_path, fresh_service):
    """A role of its own (so no other test's logins count in its budget), which the admin
    may assume and a rule grants `batch` to, with the shipped budgets (20 per session,
    200 per role, an hour)."""
    name = f"budget-{uuid.uuid4().hex[:10]}"
    iam = broker.stack.client("iam")
    iam.create_role(RoleName=name, Tags=[{"Key": "vault-role", "Value": "batch"}],
                    AssumeRolePolicyDocument=json.dumps(stack_aws.trust_policy(stack_aws.admin_arn(ACCOUNT))))
    text = RULES.read_text()
    from chalicelib.policy import parse_rules
    shipped = parse_rules(text).rate_limits
    assert (str(shipped.per_identity), str(shipped.per_principal)) == ("20/3600s", "200/3600s")
    text += (f'\n[[rule]]\nname = "budget-test"\nrole = "batch"\n[rule.aws]\naccounts = ["{ACCOUNT}"]\n'
             f'principal_arns = ["arn:aws:iam::{ACCOUNT}:role/{name}"]\nrequire_instance = false\n'
             'role_tags = { "vault-role" = "batch" }\n[rule.issue]\nwrap_ttl = "60s"\nsecret_id_ttl = "5m"\n')
    path = tmp_path / "rules.toml"
    path.write_text(text)
    restore = use_environment({"BROKER_RULES_FILE": str(path)})
    yield name
    restore()


def test_new_session_names_do_not_multiply_the_roles_budget(broker, fresh_role):
    run = uuid.uuid4().hex[:6]
    # Ten sessions spend their own 20 each: the role's 200.
    for n in range(10):
        answers = [broker.post(p).status_code for p in proofs(broker, fresh_role, f"job-{run}-{n}", "batch", 20)]
        assert answers == [200] * 20, (n, answers)
    # Today's dodge: a new session name. Its own budget is untouched, the role's is spent.
    response = broker.post(proofs(broker, fresh_role, f"job-{run}-new", "batch", 1)[0])
    doc = assert_error(response, 429, "rate_limited", "all its sessions")
    assert int(response.headers["Retry-After"]) > 0
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "denied" and record["code"] == "rate_limited"
    assert "issue-principal" in record["reason"] and "200 per 3600s" in record["reason"]
    assert f"role/{fresh_role}" in record["reason"] and not record.get("secret_id_accessor")
    # Another role's sessions are not affected.
    other = broker.post(proofs(broker, "demo-batch", f"other-{run}", "batch", 1)[0])
    assert other.status_code == 200, other.body


def test_a_session_over_its_own_budget_is_still_stopped_first(broker, fresh_role):
    """The role's budget comes on top: one session looping is stopped at its own 20, and the
    refused 21st counts in neither budget (one transaction)."""
    run = uuid.uuid4().hex[:6]
    answers = [broker.post(p) for p in proofs(broker, fresh_role, f"loop-{run}", "batch", 21)]
    assert [a.status_code for a in answers[:20]] == [200] * 20
    doc = assert_error(answers[20], 429, "rate_limited", "by this caller")
    assert "issue-identity" in broker.audit.get(doc["request_id"])["reason"]
    counter = broker.stack.client("dynamodb").scan(
        TableName=broker.stack.broker_env()["BROKER_QUARANTINE_TABLE"],
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": f"ratelimit#issue-principal#role:arn:aws:iam::{ACCOUNT}:role/{fresh_role}#"}})
    assert [int(i["hits"]["N"]) for i in counter["Items"]] == [20]
