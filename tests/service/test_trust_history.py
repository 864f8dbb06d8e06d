"""Issue 23, item 10: a trust policy closed too late, tried for real against the local
stack (moto with SigV4 verified, the real app in process, real OpenBao).

While demo-node's trust policy lets anyone assume it, a session can be named after any
running instance of the role. Such a session lives on after the policy is restored to
EC2-only (up to the role's MaxSessionDuration): the broker remembers when it saw the policy
open and refuses instance claims of the role until then + MaxSessionDuration.
"""

import time

from devstack import aws as stack_aws
from tests.service.test_accounts_and_tasks import OPEN_TRUST
from tests.service.test_aws_issuance import assert_error
from tests.sigv4 import signed_login

ROLE_ARN = f"arn:aws:iam::{stack_aws.ACCOUNT_ID}:role/demo-node"
KEY = {"pk": {"S": f"trust#{ROLE_ARN}"}}


def history(broker):
    item = broker.stack.client("dynamodb").get_item(TableName=stack_aws.QUARANTINE_TABLE, Key=KEY,
                                                    ConsistentRead=True).get("Item")
    return {k: int(v["N"]) for k, v in (item or {}).items() if k in ("open_seen", "closed_seen")}


def move_back(broker, seconds):
    """The broker's memory of the open policy, `seconds` older (as if that much time had passed)."""
    item = history(broker)
    broker.stack.client("dynamodb").update_item(
        TableName=stack_aws.QUARANTINE_TABLE, Key=KEY, UpdateExpression="SET open_seen = :o, closed_seen = :c",
        ExpressionAttributeValues={":o": {"N": str(item["open_seen"] - seconds)},
                                   ":c": {"N": str(item["closed_seen"] - seconds)}})


def test_a_session_made_under_an_open_trust_policy_is_refused_after_it_is_closed(broker, fresh_service):
    instance = broker.web_instance()
    max_session = broker.stack.client("iam").get_role(RoleName="demo-node")["Role"]["MaxSessionDuration"]
    try:
        with broker.stack.changed_trust_policy("demo-node", OPEN_TRUST):
            time.sleep(5.5)  # past the fact cache: the open policy is read
            # The attacker (anyone: the open policy lets every AWS principal in; the stack's
            # stand-in is the other account's admin) makes a session named after the
            # instance, and tries it at once: refused, and seen.
            creds = broker.stack.assume("demo-node", instance)
            doc = assert_error(broker.post(signed_login(creds, "web", broker.server_id)), 403, "not_authorized")
            assert "trust policy" in broker.audit.get(doc["request_id"])["reason"]
        seen = history(broker)
        assert seen["open_seen"] <= time.time() and "closed_seen" not in seen
        time.sleep(5.5)  # EC2-only again, and read afresh
        # The same session, after the trust policy was restored: refused, and why.
        doc = assert_error(broker.post(signed_login(creds, "web", broker.server_id)), 403, "not_authorized")
        reason = broker.audit.get(doc["request_id"])["reason"]
        assert "let others than the service assume it" in reason and f"MaxSessionDuration {max_session} s" in reason
        record = broker.audit.get(doc["request_id"])
        assert not record.get("secret_id_accessor") and record["instance"] == instance
        assert history(broker)["closed_seen"] > seen["open_seen"]
        # So is the real instance (the broker can't tell its session from the borrowed one).
        assert broker.login_as("demo-node", instance, "web").status_code == 403
        # MaxSessionDuration later, no session made under the open policy lives: claims pass.
        move_back(broker, max_session + 1)
        time.sleep(5.5)  # past the window the broker keeps a role's trust history read
        response = broker.login_as("demo-node", instance, "web")
        assert response.status_code == 200, response.body
    finally:
        broker.stack.terminate_instance(instance)


def test_a_machineless_login_sees_an_open_policy_too(broker, fresh_service):
    """The open policy is remembered whichever login read it: one claiming no machine too."""
    with broker.stack.changed_trust_policy("demo-node", OPEN_TRUST):
        time.sleep(5.5)
        broker.login_as("demo-node", "no-machine-here", "web")  # refused (web needs an instance), but read
    assert history(broker).get("open_seen")
