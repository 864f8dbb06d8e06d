"""Every account, every container: the identity model's attacks, tried for real.

The real app in process, real OpenBao, real moto (SigV4 verified) with two AWS
accounts kept apart, ECS tasks that stay RUNNING, and the broker reading each
caller's facts through the reader role of the caller's own account.
"""

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from devstack.stack import SECOND_ACCOUNT_ID
from tests.service.conftest import forget_trust_history, use_environment
from tests.service.test_aws_issuance import assert_error, body_of
from tests.sigv4 import signed_login

FIRST = "123456789012"
OPEN_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"},
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}


def login(broker, role_name, session, role, account=None, **extra):
    creds = broker.stack.assume(role_name, session, account)
    return broker.post(dict(signed_login(creds, role, broker.server_id), **extra))


def record_of(broker, response):
    return broker.audit.get(body_of(response)["request_id"])


# ---- every account --------------------------------------------------------------------------


def test_an_instance_of_the_second_account_gets_web(broker):
    instance = broker.stack.launch_instance({"vault-role": "web"}, account=SECOND_ACCOUNT_ID)
    response = login(broker, "demo-node", instance, "web", SECOND_ACCOUNT_ID)
    assert response.status_code == 200, response.body
    record = record_of(broker, response)
    assert record["account"] == SECOND_ACCOUNT_ID and record["instance"] == instance
    assert record["facts"]["instance"]["tags"] == {"vault-role": "web"}


def test_a_second_account_role_does_not_get_the_first_accounts_role_tags(broker):
    # demo-batch in the first account is tagged vault-role=batch; its namesake in the second is not.
    response = login(broker, "demo-batch", f"job-{uuid.uuid4().hex[:8]}", "batch", SECOND_ACCOUNT_ID)
    doc = assert_error(response, 403, "not_authorized")
    record = broker.audit.get(doc["request_id"])
    assert record["facts"]["role_tags"] == {} and record["account"] == SECOND_ACCOUNT_ID
    assert "role tag vault-role is missing" in record["reason"]
    # ...while the first account's demo-batch does get it: the tag is read where the role lives.
    assert login(broker, "demo-batch", f"job-{uuid.uuid4().hex[:8]}", "batch").status_code == 200


def test_a_second_account_session_naming_a_first_account_instance_is_refused(broker):
    instance = broker.web_instance()  # first account, tagged vault-role=web
    response = login(broker, "demo-node", instance, "web", SECOND_ACCOUNT_ID)
    doc = assert_error(response, 403, "not_authorized")
    record = broker.audit.get(doc["request_id"])
    assert f"does not exist in account {SECOND_ACCOUNT_ID}" in record["reason"]
    assert "instance" not in record["facts"] or record["facts"]["instance"] is None


def test_rules_naming_an_account_without_a_reader_stop_the_start(broker, fresh_service):
    restore = use_environment({"BROKER_ACCOUNT_READERS": "{}"})
    try:
        instance = broker.stack.launch_instance({"vault-role": "web"}, account=SECOND_ACCOUNT_ID)
        response = login(broker, "demo-node", instance, "web", SECOND_ACCOUNT_ID)
        assert_error(response, 503, "unavailable", "misconfigured")
    finally:
        restore()


def test_a_caller_of_an_account_without_a_reader_gets_no_facts_from_any_other(broker, tmp_path, fresh_service):
    # Rules that only ever speak of the first account, no reader for the second.
    rules = tmp_path / "rules.toml"
    text = (broker.stack.project_dir / "policies" / "rules.toml").read_text()
    rules.write_text(text.replace(f'"123456789012", "{SECOND_ACCOUNT_ID}"', '"123456789012"')
                     .replace(f', "arn:aws:iam::{SECOND_ACCOUNT_ID}:role/demo-node"', "")
                     .replace(f', "arn:aws:iam::{SECOND_ACCOUNT_ID}:role/demo-batch"', ""))
    restore = use_environment({"BROKER_ACCOUNT_READERS": "{}", "BROKER_RULES_FILE": str(rules)})
    try:
        instance = broker.web_instance()  # a first-account instance the session names
        doc = assert_error(login(broker, "demo-node", instance, "web", SECOND_ACCOUNT_ID), 403, "not_authorized")
        record = broker.audit.get(doc["request_id"])
        # nothing was read about it anywhere: no instance, no tags
        assert record["facts"]["unreadable_account"] is True
        assert record["facts"]["instance"] is None and record["facts"]["role_tags"] == {}
    finally:
        restore()


# ---- instance claims that can't be borrowed ---------------------------------------------------


@pytest.fixture
def no_fact_cache(broker, fresh_service):
    """Trust policies read afresh on every request (they are cached for 5 s otherwise)."""
    restore = use_environment({"BROKER_FACT_CACHE_SECONDS": "0"})
    yield
    restore()


def test_an_instance_claim_of_a_role_anyone_may_assume_is_refused(broker, no_fact_cache):
    instance = broker.web_instance()
    with broker.stack.changed_trust_policy("demo-node", OPEN_TRUST):
        doc = assert_error(login(broker, "demo-node", instance, "web"), 403, "not_authorized")
        assert "trust policy" in broker.audit.get(doc["request_id"])["reason"]
    # The EC2-only trust is back, but a session made while it was open may live on: claims
    # wait out the role's MaxSessionDuration (issue 23; tests/service/test_trust_history.py).
    doc = assert_error(login(broker, "demo-node", instance, "web"), 403, "not_authorized")
    assert "MaxSessionDuration" in broker.audit.get(doc["request_id"])["reason"]
    forget_trust_history(broker.stack, "demo-node")  # as if that time had passed
    assert login(broker, "demo-node", instance, "web").status_code == 200


def eventually(check, seconds):
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def web_nodes_with(broker, tmp_path, line):
    """The shipped rules with one more condition in web-nodes, in force for the test."""
    rules = tmp_path / "rules.toml"
    text = (broker.stack.project_dir / "policies" / "rules.toml").read_text()
    wanted = 'require_instance = true\ninstance_tags = { "vault-role" = "web" }'
    rules.write_text(text.replace(wanted, f"{wanted}\n{line}", 1))
    return use_environment({"BROKER_RULES_FILE": str(rules)})


def test_a_rule_may_opt_in_to_a_shared_trust_policy(broker, tmp_path, fresh_service):
    restore = web_nodes_with(broker, tmp_path, "allow_shared_role_trust = true")
    instance = broker.web_instance()
    try:
        with broker.stack.changed_trust_policy("demo-node", OPEN_TRUST):
            assert login(broker, "demo-node", instance, "web").status_code == 200
    finally:
        restore()


def test_a_rule_can_require_imdsv2(broker, tmp_path, fresh_service):
    restore = web_nodes_with(broker, tmp_path, "require_imdsv2 = true")
    try:
        v1 = broker.stack.launch_instance({"vault-role": "web"}, metadata_options={"HttpTokens": "optional"})
        doc = assert_error(login(broker, "demo-node", v1, "web"), 403, "not_authorized")
        assert "IMDSv1" in broker.audit.get(doc["request_id"])["reason"]
        v2 = broker.stack.launch_instance({"vault-role": "web"}, metadata_options={"HttpTokens": "required"})
        assert login(broker, "demo-node", v2, "web").status_code == 200
    finally:
        restore()


# ---- ECS tasks --------------------------------------------------------------------------------


def task_login(broker, task_arn, role="web", ecs_task_arn=True, role_name="demo-task", session=None):
    task_id = task_arn.rsplit("/", 1)[1]
    extra = {"ecs_task_arn": task_arn if ecs_task_arn is True else ecs_task_arn} if ecs_task_arn else {}
    return login(broker, role_name, session or task_id, role, **extra)


def test_a_task_tagged_for_web_gets_web(broker):
    task = broker.stack.run_task({"vault-role": "web"})
    response = task_login(broker, task)
    assert response.status_code == 200, response.body
    record = record_of(broker, response)
    assert record["instance"] == task.rsplit("/", 1)[1] and record["rule"] == "web-tasks"
    facts = record["facts"]["task"]
    assert facts["cluster"] == "demo-cluster" and facts["family"] == "demo-web" and facts["tags"] == {"vault-role": "web"}


def test_a_task_is_found_without_its_arn_in_the_clusters_the_rules_name(broker):
    task = broker.stack.run_task({"vault-role": "web"})
    assert task_login(broker, task, ecs_task_arn=None).status_code == 200


def test_a_task_of_the_same_role_tagged_for_another_role_is_refused(broker):
    task = broker.stack.run_task({"vault-role": "batch"})
    doc = assert_error(task_login(broker, task), 403, "not_authorized")
    assert "task tag vault-role is 'batch'" in broker.audit.get(doc["request_id"])["reason"]


def test_a_stopped_task_is_refused(broker):
    task = broker.stack.run_task({"vault-role": "web"})
    broker.stack.stop_task(task)
    doc = assert_error(task_login(broker, task), 403, "not_authorized")
    assert "not RUNNING" in broker.audit.get(doc["request_id"])["reason"]


def test_a_task_of_another_role_is_refused(broker):
    # The task runs with demo-batch as its task role; a demo-task session named after it claims it.
    task = broker.stack.run_task({"vault-role": "web"}, task_role="demo-batch")
    doc = assert_error(task_login(broker, task), 403, "not_authorized")
    assert "runs with task role" in broker.audit.get(doc["request_id"])["reason"]


def test_a_session_named_like_a_task_with_another_tasks_arn_is_refused(broker):
    mine = broker.stack.run_task({"vault-role": "batch"})
    theirs = broker.stack.run_task({"vault-role": "web"})
    doc = assert_error(task_login(broker, mine, ecs_task_arn=theirs), 403, "not_authorized")
    assert "ECS names a task role's session after its task" in broker.audit.get(doc["request_id"])["reason"]


def test_a_task_claim_of_an_open_role_is_refused(broker, no_fact_cache):
    task = broker.stack.run_task({"vault-role": "web"})
    open_to_all = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"},
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{FIRST}:root"}, "Action": "sts:AssumeRole"}]}
    with broker.stack.changed_trust_policy("demo-task", open_to_all):
        doc = assert_error(task_login(broker, task), 403, "not_authorized")
        assert "trust policy" in broker.audit.get(doc["request_id"])["reason"]


@pytest.mark.parametrize("arn", ["arn:aws:ecs:us-east-1:123456789012:task/abc", "not an arn", "x" * 600])
def test_a_malformed_task_arn_is_refused_by_name(broker, arn):
    task = broker.stack.run_task({"vault-role": "web"})
    response = task_login(broker, task, ecs_task_arn=arn)
    assert response.status_code in (400, 403), response.body
    assert body_of(response)["error"]["code"] in ("invalid_request", "not_authorized")


# ---- the pipeline's order: cheap refusals first, budgets spent last ---------------------------


def test_replays_to_the_environment_that_spent_the_proof_cost_no_sts_call_and_no_budget(
        broker, tmp_path, fresh_service, monkeypatch):
    """Issue 10's rule, as issue 14 left it: replays sent to the Lambda environment that saw
    the proof spent make no STS call (its memo refuses them first); one sent to any other
    environment makes one, beside its lookup, and nothing else
    (tests/service/test_lookup_beside_sts.py). Either way no budget is spent."""
    from chalicelib.methods.aws.proof import AwsProofVerifier

    rules = tmp_path / "rules.toml"
    text = (broker.stack.project_dir / "policies" / "rules.toml").read_text()
    rules.write_text(text.replace('per_identity = "20/1h"', 'per_identity = "3/1h"'))
    restore = use_environment({"BROKER_RULES_FILE": str(rules)})
    asked = []
    real = AwsProofVerifier.ask_sts
    monkeypatch.setattr(AwsProofVerifier, "ask_sts", lambda self, proof: asked.append(1) or real(self, proof))
    try:
        session = f"job-{uuid.uuid4().hex[:8]}"
        creds = broker.stack.assume("demo-batch", session)
        proof = signed_login(creds, "batch", broker.server_id, when=datetime.now(timezone.utc) - timedelta(seconds=30))
        assert broker.post(proof).status_code == 200
        assert len(asked) == 1
        for _ in range(10):  # someone replays the captured proof
            assert_error(broker.post(proof), 401, "proof_replayed")
        assert len(asked) == 1, "a replayed proof reached STS"
        # The real caller's budget (3/h) is untouched by the ten replays.
        now = datetime.now(timezone.utc)
        fresh = [signed_login(creds, "batch", broker.server_id, when=now - timedelta(seconds=i)) for i in range(1, 4)]
        assert [broker.post(p).status_code for p in fresh[:2]] == [200, 200]
        assert_error(broker.post(fresh[2]), 429, "rate_limited")
    finally:
        restore()


@pytest.mark.parametrize("value", [" leading-space", "control\x01char", "snowman \u2603", "trailing\t"])
def test_header_values_no_client_could_send_are_an_invalid_proof(broker, value):
    creds = broker.stack.assume("demo-batch", f"job-{uuid.uuid4().hex[:8]}")
    body = signed_login(creds, "batch", broker.server_id)
    headers = json.loads(__import__("base64").b64decode(body["iam_request_headers"]))
    headers["X-Amz-Date"] = [value]
    body["iam_request_headers"] = __import__("base64").b64encode(json.dumps(headers).encode()).decode()
    doc = assert_error(broker.post(body), 401, "invalid_proof", "no HTTP client sends")
    assert broker.audit.get(doc["request_id"])["code"] == "invalid_proof"


def test_one_route_serves_every_method(broker):
    instance = broker.web_instance()
    creds = broker.stack.assume("demo-node", instance)
    response = broker.client.http.post("/v1/credentials/aws", body=json.dumps(signed_login(creds, "web", broker.server_id)),
                                       headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    creds = broker.stack.assume("demo-batch", f"job-{uuid.uuid4().hex[:8]}")
    for path, status in (("/v1/credentials/aws", 200), ("/v1/credentials/azure", 400)):
        response = broker.client.http.post(path, body=json.dumps(signed_login(creds, "batch", broker.server_id)),
                                           headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.body
    doc = body_of(response)
    assert doc["error"]["code"] == "invalid_request" and "unknown proof method" in doc["error"]["message"]
    assert broker.audit.get(doc["request_id"])["method"] == "unknown"
