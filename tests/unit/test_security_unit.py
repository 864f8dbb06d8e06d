"""Unit tests of the security team's side that need no server: the [security] table of the
rules file, the audit query parameters and cursors, the index attributes, quarantine keys."""

import base64
import json
from decimal import Decimal

import pytest

from chalicelib import audit_query as aq
from chalicelib.audit_schema import (INDEX_INSTANCE, INDEX_PRINCIPAL, INDEX_ROLE, INDEX_TIME, PRINCIPAL_SHARDS,
                                     ROLE_SHARDS, TIME_SHARDS, cloudformation_properties, index_attributes,
                                     table_definitions)
from chalicelib.errors import InvalidRequest
from chalicelib.methods import identity
from chalicelib.stores.quarantine import keys_of, quarantine_key
from chalicelib.policy import RulesError, parse_rules

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SESSION = "arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0"
ROLE_ARN = "arn:aws:iam::123456789012:role/demo-node"


# ---- [security] in the rules file -------------------------------------------------------------


def test_security_allow_list_is_globs_on_the_canonical_arn():
    rules = parse_rules('version = 1\n[security]\nprincipal_arns = ["arn:aws:iam::123456789012:role/sec-*"]\n')
    assert rules.is_security_principal("arn:aws:iam::123456789012:role/sec-team")
    assert not rules.is_security_principal("arn:aws:iam::123456789012:role/demo-node")
    assert not rules.is_security_principal(None)


def test_exact_arns_and_globs_in_a_role_name_are_accepted():
    rules = parse_rules('version = 1\n[security]\nprincipal_arns = ["arn:aws:iam::123456789012:role/sec-*", '
                        '"arn:aws:iam::123456789012:user/alice", "arn:aws-us-gov:iam::123456789012:role/ir?"]\n')
    assert rules.is_security_principal("arn:aws:iam::123456789012:user/alice")
    assert rules.is_security_principal("arn:aws-us-gov:iam::123456789012:role/ir1")
    assert not rules.is_security_principal("arn:aws:iam::210987654321:role/sec-team")


def test_no_security_table_means_nobody():
    rules = parse_rules("version = 1\n")
    assert rules.security_principals == ()
    assert not rules.is_security_principal("arn:aws:iam::123456789012:role/anything")


@pytest.mark.parametrize("body, match", [
    ('principal_arns = ["*"]', "not an IAM ARN"),
    ('principal_arns = ["arn:aws:iam::*:role/x"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::123456789012:*"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::123456789012:role/*"]', "too broad"),
    ('principal_arns = ["arn:aws:sts::123456789012:assumed-role/r/s"]', "not an STS session"),
    ('principal_arns = "arn:aws:iam::123456789012:role/x"', "list of non-empty strings"),
    ('admins = []', "unknown field"),
    ('principal_arns = ["arn:aws:iam::123456789012:role*"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::123456789012:*/*"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::[0-9]*:role/security-team"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::12345678901?:role/security-team"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::123456789012:role/teams/*"]', "without a path"),
    ('principal_arns = ["arn:aws:iam::123456789012:role/teams/security"]', "without a path"),
    ('principal_arns = ["arn:aws:iam::123456789012:role/sec-[a-z]"]', "without a path"),
    ('principal_arns = ["arn:aws:iam::123456789012:user/al*"]', "a user ARN must be exact"),
    ('principal_arns = ["arn:aws:iam::123456789012:role/**"]', "too broad"),
    ('principal_arns = ["arn:aws:iam::123456789012:group/sec"]', "without a path"),
])
def test_bad_security_tables_are_refused(body, match):
    with pytest.raises(RulesError, match=match):
        parse_rules(f"version = 1\n[security]\n{body}\n")


def test_the_shipped_rules_name_the_security_team():
    from chalicelib.config import DEFAULT_RULES_FILE
    from chalicelib.policy import load_rules

    rules = load_rules(DEFAULT_RULES_FILE)
    assert rules.is_security_principal("arn:aws:iam::123456789012:role/security-team")
    assert not rules.is_security_principal("arn:aws:iam::123456789012:role/demo-node")


# ---- query parameters -----------------------------------------------------------------------------


def parse(**params):
    return aq.parse_query({k: [v] for k, v in params.items()}, now=NOW, retention_days=400)


def test_defaults_cover_the_retention_up_to_now():
    q = parse()
    assert q.until == Decimal("1767225600.000") and q.until - q.since == 400 * 86400
    assert q.limit == aq.DEFAULT_LIMIT and q.after is None


@pytest.mark.parametrize("params, match", [
    ({"since": "yesterday"}, "ISO 8601"),
    ({"since": "2026-01-01T00:00:00"}, "time zone"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "after until"),
    ({"outcome": "issued,stolen"}, "outcome must be"),
    ({"method": "azure"}, "method must be"),
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"role": "../etc"}, "role must be"),
    ({"instance": "i-1 OR 1=1"}, "instance must be"),
    ({"principal": "has space"}, "principal must be"),
    ({"colour": "red"}, "unknown query parameter"),
])
def test_bad_parameters_are_400(params, match):
    with pytest.raises(InvalidRequest, match=match):
        parse(**params)


def test_a_repeated_parameter_is_refused():
    with pytest.raises(InvalidRequest, match="given 2 times"):
        aq.parse_query({"role": ["web", "batch"]}, now=NOW, retention_days=400)


def test_dates_and_lists():
    q = parse(since="2025-12-31", until="2025-12-31T12:00:00+02:00", outcome="denied,error,denied", method="aws")
    assert q.since == Decimal("1767139200.000") and q.until == Decimal("1767175200.000")
    assert q.outcomes == ("denied", "error") and q.methods == ("aws",)


# ---- choosing the index ------------------------------------------------------------------------------


def test_the_most_selective_index_wins_and_the_rest_are_filters():
    p = aq.plan(parse(instance="i-0123456789abcdef0", role="web", principal=SESSION, outcome="issued"))
    assert p.index == INDEX_INSTANCE and p.segments == [["i-0123456789abcdef0"]]
    assert "#principal = :principal0" in p.filter_expression and "#role = :role0" in p.filter_expression
    assert "#outcome IN (:outcome0)" in p.filter_expression

    p = aq.plan(parse(principal=SESSION, role="web"))
    assert p.index == INDEX_PRINCIPAL
    assert p.segments == [[f"{ROLE_ARN}#{s}" for s in range(PRINCIPAL_SHARDS)]]
    assert p.values[":principal0"] == {"S": SESSION}  # a session: only that session

    p = aq.plan(parse(principal=ROLE_ARN))
    assert p.index == INDEX_PRINCIPAL and p.filter_expression is None  # a role ARN: all its sessions

    p = aq.plan(parse(role="web", principal=ROLE_ARN))
    assert p.index == INDEX_PRINCIPAL and p.filter_expression == "#role = :role0"

    p = aq.plan(parse(instance="i-0123456789abcdef0", principal=ROLE_ARN))
    assert p.index == INDEX_INSTANCE and "begins_with(#gsi_principal, :gsi_principal0)" in p.filter_expression

    p = aq.plan(parse(role="web", method="gcp"))
    assert p.index == INDEX_ROLE and len(p.segments[0]) == ROLE_SHARDS


def test_time_queries_walk_the_days_newest_first_over_every_shard():
    p = aq.plan(parse(since="2025-12-30T23:00:00Z", until="2026-01-01T01:00:00Z", outcome="denied"))
    assert p.index == INDEX_TIME
    assert [seg[0] for seg in p.segments] == ["2026-01-01#0", "2025-12-31#0", "2025-12-30#0"]
    assert all(len(seg) == TIME_SHARDS for seg in p.segments)


# ---- cursors --------------------------------------------------------------------------------------------


def test_cursor_round_trip_and_tampering():
    given = {"role": "web"}
    pos = aq.Position(Decimal("1767225599.123"), "5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d")
    cursor = aq.encode_cursor(pos, given)
    assert aq.decode_cursor(cursor, given) == pos
    with pytest.raises(InvalidRequest):
        aq.decode_cursor(cursor, {"role": "batch"})  # another query's cursor
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for change in ({"v": 2}, {"e": "soon"}, {"r": "x"}, {"extra": 1}, {"e": 5}):
        doc = dict(raw, **change)
        forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
        with pytest.raises(InvalidRequest):
            aq.decode_cursor(forged, given)
    for junk in ("", "not a cursor!", cursor[:-3], "A" * 2000, cursor[:10] + "@" + cursor[11:]):
        with pytest.raises(InvalidRequest):
            aq.decode_cursor(junk, given)


# ---- the schema -------------------------------------------------------------------------------------


def test_index_attributes_shard_the_shared_keys():
    rid = "5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d"
    attrs = index_attributes(rid, "1767225599.123", identity("aws").index_principal(SESSION), "web")
    assert attrs["gsi_time"].startswith("2025-12-31#")
    assert attrs["gsi_principal"].startswith(ROLE_ARN + "#")
    assert attrs["gsi_role"].startswith("web#")
    assert index_attributes(rid, "1767225599.123", ROLE_ARN, "web") == attrs  # stable
    assert set(index_attributes(rid, "1767225599.123")) == {"gsi_time"}  # sparse


def test_table_definitions_agree_with_the_indexes():
    audit = table_definitions()["audit"]
    assert audit["KeySchema"] == [{"AttributeName": "request_id", "KeyType": "HASH"}]
    names = {i["IndexName"] for i in audit["GlobalSecondaryIndexes"]}
    assert names == {INDEX_TIME, INDEX_PRINCIPAL, INDEX_ROLE, INDEX_INSTANCE}
    defined = {a["AttributeName"] for a in audit["AttributeDefinitions"]}
    keyed = {k["AttributeName"] for i in audit["GlobalSecondaryIndexes"] for k in i["KeySchema"]}
    assert defined == keyed | {"request_id"}
    assert cloudformation_properties("quarantine")["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at", "Enabled": True}


def caller_keys(method, instance, principal):
    """Every quarantine key of a caller, as its method derives them (own, then shared)."""
    own, shared = identity(method).quarantine_keys(principal, instance)
    return keys_of(own + shared)


def test_quarantine_keys_cover_instance_session_and_role():
    assert caller_keys("aws", "i-0123456789abcdef0", SESSION) == [
        "quarantine#instance#i-0123456789abcdef0", f"quarantine#principal#{SESSION}",
        f"quarantine#principal#{ROLE_ARN}"]
    # a service account's caller naming no instance: its instance-less entry too (a GCE quarantine places it)
    assert caller_keys("gcp", None, "sa@p.iam.gserviceaccount.com") == [
        "quarantine#principal#sa@p.iam.gserviceaccount.com", "quarantine#instanceless#sa@p.iam.gserviceaccount.com"]
    assert caller_keys("gcp", "1234567890", "sa@p.iam.gserviceaccount.com") == [
        "quarantine#instance#1234567890", "quarantine#principal#sa@p.iam.gserviceaccount.com"]


def test_quarantine_keys_spell_iam_names_in_one_case():
    """IAM role and user names are case-insensitive: role/Demo-Batch is role/demo-batch."""
    principal_key = identity("aws").principal_key
    assert principal_key("arn:aws:iam::123456789012:role/Demo-Batch") == \
        principal_key("arn:aws:iam::123456789012:role/path/demo-batch")
    session = "arn:aws:sts::123456789012:assumed-role/Demo-Batch/Nightly-1"
    assert principal_key(session) == "arn:aws:sts::123456789012:assumed-role/demo-batch/Nightly-1"  # session kept
    assert caller_keys("aws", None, session)[1] == quarantine_key(
        "principal", principal_key("arn:aws:iam::123456789012:role/DEMO-BATCH"))


@pytest.mark.parametrize("params", [
    {"since": "0001-01-01T00:00:00+00:00"}, {"until": "9999-12-31T23:59:59-23:59"},
    {"since": "0001-01-01T00:00:00+23:59"}, {"until": "0001-01-01"},
    {"since": "9999-12-31T23:59:59-23:59"}, {"since": "1000-01-01", "until": "1000-01-02"},
])
def test_extreme_times_are_a_400_or_a_bounded_range(params):
    """Year 1 and year 9999 are a 400 or clamped to what the trail holds; never an error
    other than InvalidRequest, never a range of more days than the retention."""
    try:
        q = aq.parse_query({k: [v] for k, v in params.items()}, now=NOW, retention_days=400)
    except InvalidRequest:
        return
    assert NOW - 400 * 86400 <= q.since <= q.until <= NOW + 86400
    assert len(aq._days(q.since, q.until)) <= 402


def test_a_since_older_than_the_retention_starts_at_the_oldest_record_kept():
    q = aq.parse_query({"since": ["1000-01-01"]}, now=NOW, retention_days=30)
    assert q.since == Decimal(f"{NOW - 30 * 86400:.3f}") and q.until == Decimal(f"{NOW:.3f}")
