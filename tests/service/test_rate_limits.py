"""Rate limits from the rules file, shared through DynamoDB: a looping machine is stopped,
a role is capped, and a storm of distinct machines within the limits goes through."""

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.service.conftest import use_environment
from tests.service.test_aws_issuance import assert_error
from tests.sigv4 import signed_login

RULES = Path(__file__).resolve().parents[2] / "policies" / "rules.toml"
# The shipped rules without their [rate_limits] table, for tests to put their own.
BASE = re.sub(r"\n\[rate_limits\][^\[]*", "\n", RULES.read_text())


@pytest.fixture
def limited(broker, tmp_path, fresh_service):
    """The shipped rules plus tight limits, for this test only."""
    text = BASE + '\n[rate_limits]\nper_identity = "2/24h"\n[rate_limits.per_role]\nweb = "3/24h"\n'
    path = tmp_path / "rules.toml"
    path.write_text(text)
    restore = use_environment({"BROKER_RULES_FILE": str(path)})
    yield
    restore()


def proofs(broker, role_name, session, role, count):
    """`count` distinct proofs of one identity (signed at distinct seconds, within the allowed skew)."""
    creds = broker.stack.assume(role_name, session)
    now = datetime.now(timezone.utc)
    return [signed_login(creds, role, broker.server_id, when=now - timedelta(seconds=i)) for i in range(count)]


def test_one_identity_looping_is_stopped_and_audited(broker, limited):
    session = f"looper-{uuid.uuid4().hex[:8]}"
    first, second, third = (broker.post(p) for p in proofs(broker, "demo-batch", session, "batch", 3))
    assert first.status_code == 200 and second.status_code == 200
    doc = assert_error(third, 429, "rate_limited", "too many credentials asked for by this caller")
    assert int(third.headers["Retry-After"]) > 0
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "denied" and record["code"] == "rate_limited"
    assert "2 per 86400s" in record["reason"] and not record.get("secret_id_accessor")
    # Another identity is not affected.
    other = proofs(broker, "demo-batch", f"other-{uuid.uuid4().hex[:8]}", "batch", 1)[0]
    assert broker.post(other).status_code == 200


def test_a_role_limit_caps_distinct_callers(broker, limited):
    instances = [broker.web_instance() for _ in range(4)]
    answers = [broker.login_as("demo-node", i, "web") for i in instances]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert_error(answers[3], 429, "rate_limited", "role 'web'")


def test_a_storm_of_distinct_machines_within_the_limits_is_never_throttled(broker, fresh_service):
    # The shipped rules: 20 per identity per hour, no role cap.
    instances = [broker.web_instance() for _ in range(12)]
    answers = [broker.login_as("demo-node", i, "web") for i in instances]
    assert [a.status_code for a in answers] == [200] * 12


def test_rate_limit_values_are_validated(tmp_path):
    from chalicelib.policy import RulesError, parse_rules

    base = BASE
    for bad, message in (('per_identity = "lots"', "not a rate like"), ('per_identity = "0/1h"', "not a rate like"),
                         ('per_identity = "5/3d"', "not a rate like"), ('burst = "1/1s"', "unknown field"),
                         ('[rate_limits.per_role]\nadmin = "1/1h"', "no rule grants: admin")):
        with pytest.raises(RulesError, match=message):
            parse_rules(base + f"\n[rate_limits]\n{bad}\n")
    limits = parse_rules(base + '\n[rate_limits]\nper_identity = "5/10m"\n').rate_limits
    assert (limits.per_identity.count, limits.per_identity.window) == (5, 600)
    assert parse_rules(base).rate_limits.per_identity.count == 20
