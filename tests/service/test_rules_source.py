"""Rules without a redeploy: the broker re-reads its rules from S3 or SSM (moto, SigV4
verified); a version that fails validation is refused and the last good rules stay."""

import logging
import time
import uuid

import pytest

from tests.service.conftest import use_environment
from tests.service.test_aws_issuance import assert_error

BUCKET = "secret-zero-rules-test"
PARAMETER = "/secret-zero-broker/test/rules"


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, record):
        self.events.append((record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def log_lines():
    handler = Lines()
    logger = logging.getLogger("secret_zero_broker")
    logger.addHandler(handler)
    yield handler.events
    logger.removeHandler(handler)


def shipped(broker):
    return (broker.stack.project_dir / "policies" / "rules.toml").read_text()


def without_aws_batch(text):
    start = text.index('[[rule]]\nname = "batch-jobs"')
    end = text.index("[[rule]]", start + 1)
    return text[:start] + text[end:]


def batch_login(broker):
    return broker.login_as("demo-batch", f"job-{uuid.uuid4().hex[:8]}", "batch")


def wait_for(check, seconds=6):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(params=["s3", "ssm"])
def source(request, broker, fresh_service):
    stack = broker.stack
    if request.param == "s3":
        s3 = stack.client("s3")
        try:
            s3.create_bucket(Bucket=BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

        def push(text):
            s3.put_object(Bucket=BUCKET, Key="rules.toml", Body=text.encode())
        location = f"s3://{BUCKET}/rules.toml"
    else:
        ssm = stack.client("ssm")

        def push(text):
            ssm.put_parameter(Name=PARAMETER, Value=text, Type="String", Overwrite=True)
        location = f"ssm:{PARAMETER}"
    push(shipped(broker))
    restore = use_environment({"BROKER_RULES_SOURCE": location, "BROKER_RULES_REFRESH_SECONDS": "1"})
    yield push
    restore()


def test_new_rules_apply_without_a_redeploy_and_a_bad_push_changes_nothing(broker, source, log_lines):
    assert batch_login(broker).status_code == 200
    source("version = 1\n[[rule]]\nname = 'broken'\n")  # no role, no method: invalid
    time.sleep(1.2)
    assert batch_login(broker).status_code == 200  # the last good rules stay in force
    assert wait_for(lambda: any(event == "new rules refused; the last good rules stay in force" and
                                fields.get("RulesRejected") == 1 for event, fields in log_lines))
    refused = [f for e, f in log_lines if e.startswith("new rules refused")][0]
    assert "rule #1" in refused["problem"]
    source(without_aws_batch(shipped(broker)))
    assert wait_for(lambda: batch_login(broker).status_code == 403)
    doc = assert_error(batch_login(broker), 403, "not_authorized")
    assert "batch-jobs" not in broker.audit.get(doc["request_id"])["reason"]
    assert any(e == "rules reloaded" for e, _ in log_lines)


def run_client(broker, *argv):
    """The real client, as the security team runs it (the stack's admin keys, moto's endpoint)."""
    import os
    import subprocess
    import sys

    keys = broker.stack.admin_keys_for(None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    env.update(AWS_ACCESS_KEY_ID=keys.access_key_id, AWS_SECRET_ACCESS_KEY=keys.secret_access_key,
               AWS_REGION="us-east-1")
    endpoint = broker.stack.broker_env()["BROKER_AWS_ENDPOINT_URL"]
    return subprocess.run([sys.executable, "-m", "broker", *argv, "--aws-endpoint-url", endpoint, "--json"],
                          capture_output=True, text=True, env=env, cwd=broker.stack.project_dir, timeout=60)


def test_policy_push_validates_uploads_and_reads_back_what_is_deployed(broker, tmp_path):
    import json

    s3 = broker.stack.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    good = tmp_path / "rules.toml"
    good.write_text(shipped(broker))
    target = f"s3://{BUCKET}/pushed.toml"
    pushed = run_client(broker, "policy", "push", str(good), "--to", target)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"]
    assert s3.get_object(Bucket=BUCKET, Key="pushed.toml")["Body"].read().decode() == good.read_text()

    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[[rule]]\nname = 'a'\n[[rule]]\nname = 'b'\n")
    refused = run_client(broker, "policy", "push", str(bad), "--to", target)
    assert refused.returncode == 8 and "rule #1 (a)" in refused.stderr and "rule #2 (b)" in refused.stderr
    assert s3.get_object(Bucket=BUCKET, Key="pushed.toml")["Body"].read().decode() == good.read_text()

    checked = run_client(broker, "policy", "check", target)
    assert checked.returncode == 0 and "web" in json.loads(checked.stdout)["roles"]
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"principal_arn": "arn:aws:sts::123456789012:assumed-role/demo-batch/job",
                                 "role_tags": {"vault-role": "batch"}}))
    explained = run_client(broker, "policy", "explain", "--facts", str(facts), "--role", "batch", "--rules", target)
    assert explained.returncode == 0 and json.loads(explained.stdout)["granted_by"] == ["batch-jobs"]


# ---- the rules' order: no silent rollback (issue 23, item 11) -------------------------

def with_serial(text, serial):
    return f"serial = {serial}\n" + text


@pytest.fixture
def ordered_source(broker, fresh_service):
    """A versioned S3 object of its own (its own high-water mark), removed afterwards."""
    stack = broker.stack
    s3 = stack.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    key = f"ordered-{uuid.uuid4().hex[:8]}.toml"
    location = f"s3://{BUCKET}/{key}"

    def push(text):
        return s3.put_object(Bucket=BUCKET, Key=key, Body=text.encode())["VersionId"]
    restore = use_environment({"BROKER_RULES_SOURCE": location, "BROKER_RULES_REFRESH_SECONDS": "1"})
    yield push, location
    restore()
    from devstack import aws as stack_aws
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE,
                                         Key={"pk": {"S": f"rules#high-water#{location}"}})


def test_older_rules_pushed_again_are_refused_and_the_newer_stay(broker, ordered_source, log_lines):
    import hashlib
    import json

    push, location = ordered_source
    v1 = with_serial(shipped(broker), 1)  # grants batch
    v2 = with_serial(without_aws_batch(shipped(broker)), 2)  # batch-jobs removed
    v1_version = push(v1)
    granted = batch_login(broker)
    assert granted.status_code == 200
    record = broker.audit.get(json.loads(granted.body)["request_id"])
    assert record["rules_serial"] == 1 and record["rules_sha256"] == hashlib.sha256(v1.encode()).hexdigest()

    push(v2)
    assert wait_for(lambda: batch_login(broker).status_code == 403)
    doc = assert_error(batch_login(broker), 403, "not_authorized")
    assert broker.audit.get(doc["request_id"])["rules_serial"] == 2

    # v1 again, as a new push of the old file: refused, v2 stays in force.
    push(v1)
    # (the broker reads its source again on the request path: each check makes a request)
    assert wait_for(lambda: batch_login(broker).status_code == 403 and any(
        event == "older rules refused; the rules in force stay" for event, _ in log_lines))
    refused = [f for e, f in log_lines if e == "older rules refused; the rules in force stay"][0]
    assert refused["RulesRollbackRefused"] == 1 and refused["serial"] == 1 and refused["serial_in_force"] == 2
    assert "serial 1 is below 2, the highest this broker applied" in refused["problem"]
    assert "BROKER_RULES_ALLOW_SERIAL=1" in refused["problem"]
    time.sleep(1.2)
    doc = assert_error(batch_login(broker), 403, "not_authorized")
    record = broker.audit.get(doc["request_id"])
    assert record["rules_serial"] == 2 and record["rules_sha256"] == hashlib.sha256(v2.encode()).hexdigest()

    # The old S3 object version restored (copied over the current one), and a cold start
    # (a new Lambda instance) reading it: refused too, from the mark in DynamoDB.
    s3 = broker.stack.client("s3")
    key = location.split("/", 3)[3]
    s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key, "VersionId": v1_version})
    import app as broker_app
    broker_app._service = None
    assert_error(batch_login(broker), 503, "unavailable")
    assert any(e == "broker misconfigured" and "serial 1 is below 2" in f.get("problem", "") for e, f in log_lines)

    # Going back on purpose: a setting of the function names the serial; logged as forced.
    restore = use_environment({"BROKER_RULES_ALLOW_SERIAL": "1"})
    try:
        granted = batch_login(broker)
        assert granted.status_code == 200, granted.body
        assert broker.audit.get(json.loads(granted.body)["request_id"])["rules_serial"] == 1
        assert any(e.startswith("older rules applied") and f.get("RulesRollbackForced") == 1 for e, f in log_lines)
    finally:
        restore()


def test_policy_push_refuses_to_go_back_unless_forced(broker, tmp_path):
    import json

    s3 = broker.stack.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    target = f"s3://{BUCKET}/push-order-{uuid.uuid4().hex[:8]}.toml"
    v1, v2 = tmp_path / "v1.toml", tmp_path / "v2.toml"
    v1.write_text(with_serial(shipped(broker), 1))
    v2.write_text(with_serial(shipped(broker), 2))
    assert run_client(broker, "policy", "push", str(v1), "--to", target).returncode == 0
    pushed = run_client(broker, "policy", "push", str(v2), "--to", target)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["serial"] == 2
    back = run_client(broker, "policy", "push", str(v1), "--to", target)
    assert back.returncode == 8
    assert "serial 1 goes back behind the rules deployed at" in back.stderr and "(serial 2)" in back.stderr
    key = target.split("/", 3)[3]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode() == v2.read_text()
    forced = run_client(broker, "policy", "push", str(v1), "--to", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["forced"] is True and "BROKER_RULES_ALLOW_SERIAL=1" in forced.stderr
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"] == {"rules-serial": "1", "forced-over-serial": "2"}
