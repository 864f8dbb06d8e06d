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
