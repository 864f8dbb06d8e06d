"""Property-based tests (hypothesis) of the rules file: random text, TOML-ish text built
from the file's own vocabulary, and random structures of the right and wrong types.

`parse_rules` either returns a RuleSet or raises RulesError (naming where); a RuleSet
it returns can decide and explain for any facts without raising, and grants only when
a rule for that role matches.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from chalicelib.methods.aws.model import AwsFacts as CallerFacts, InstanceFacts
from chalicelib.methods.gcp.model import GceInstanceFacts, GcpFacts as GcpCallerFacts
from chalicelib.policy import Decision, RulesError, RuleSet, parse_rules


def parse(text):
    try:
        rules = parse_rules(text, source="fuzz.toml")
    except RulesError as e:
        assert str(e).startswith("fuzz.toml"), "a rules error must say where"
        return None
    assert isinstance(rules, RuleSet)
    return rules


# ---- random text -------------------------------------------------------------------------------

VOCABULARY = ["version = 1", "version = 2", "version = true", "[[rule]]", "[rule.aws]", "[rule.gcp]", "[rule.issue]",
              "[security]", 'name = "web-nodes"', 'name = "web-nodes"', 'role = "web"', 'role = "batch"',
              'accounts = ["123456789012"]', 'accounts = ["1234"]', 'principal_arns = ["arn:aws:iam::123456789012:role/*"]',
              'principal_arns = ["arn:aws:iam::123456789012:role/demo-node"]', "require_instance = true",
              "require_instance = 1", 'instance_tags = { "vault-role" = "web" }', 'role_tags = { team = "plat*" }',
              'projects = ["demo-*"]', 'zones = ["us-*"]', 'labels = { vault-role = "web" }', 'wrap_ttl = "60s"',
              'wrap_ttl = "9999h"', "secret_id_ttl = 30", 'secret_id_ttl = "5m"', "bind_source_cidr = false",
              'description = "x"', "rule = 3", "[rule]", "x = 1", '"" = ""', "[[rule.aws]]", "accounts = []",
              'service_accounts = ["*@demo-project.iam.gserviceaccount.com"]', "instance_tags = []",
              'wrap_ttl = "١٠s"', "wrap_ttl = -1", "wrap_ttl = 1e3", "[rule.aws.instance_tags]", '"k" = "v"']


@given(st.text(max_size=400))
@example("")
@example("version = 1\n[[rule]]\n" * 3)
def test_any_text_is_rules_or_a_rules_error(text):
    parse(text)


@given(st.lists(st.sampled_from(VOCABULARY) | st.text(alphabet='[]{}=",.# \nabcv1', max_size=12), max_size=25))
def test_toml_ish_text_is_rules_or_a_rules_error(lines):
    rules = parse("\n".join(lines))
    if rules is not None:
        _exercise(rules)


# ---- random structures, rendered as TOML --------------------------------------------------------


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def render(doc):
    tables = doc.get("rule")
    as_tables = isinstance(tables, list) and all(isinstance(r, dict) for r in tables)
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if k != "rule" or not as_tables]
    for rule in tables if as_tables else []:
        lines.append("[[rule]]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


anything = st.recursive(st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=6)


def strategies(maybe):
    """The rules file's structures; `maybe(valid)` decides how often a value is of the wrong kind."""
    wrong = maybe is _wrong_sometimes
    odd = (lambda s: s) if wrong else (lambda s: st.nothing())  # values of the wrong shape, only when `wrong`
    globs = st.sampled_from(["*", "web", "web-*", "[a-z]*", "?", "**", "\\", "[", "[]", "[!x]"]) | odd(st.text(max_size=10))
    tag_tables = st.dictionaries(st.sampled_from(["vault-role", "team", "env"]) | odd(st.text(max_size=6)), maybe(globs),
                                 max_size=3)
    arns = st.sampled_from(["arn:aws:iam::123456789012:role/demo-node", "arn:aws:iam::123456789012:role/*",
                            "arn:aws:iam::*:user/admin", "arn:aws:sts::123456789012:assumed-role/x/y", "arn:*",
                            "arn:aws:iam::123456789012:role/security-team", "arn:aws:iam:::role/x"]) | odd(st.text(max_size=20))
    durations = st.sampled_from(["10s", "60s", "5m", "1h", "24h", "9s", "301s", 30, 60, 300]) | odd(
        st.sampled_from(["1d", "", " 60s ", "\u0666\u0660", "60S"]) | st.integers(-10, 100_000))
    names = st.sampled_from(["web-nodes", "batch-jobs", "x", "web.gce_1"]) | odd(
        st.sampled_from(["-bad", "a" * 65]) | st.text(max_size=10))
    roles = st.sampled_from(["web", "batch", "security-team"]) | odd(st.sampled_from(["", "web/x"]))
    accounts = st.sampled_from(["123456789012", "210987654321"]) | odd(st.sampled_from(["1234", "12345678901a"]))
    aws_tables = st.fixed_dictionaries({
        "accounts": maybe(st.lists(accounts, min_size=1, max_size=3)),
        "principal_arns": maybe(st.lists(arns, min_size=1, max_size=3)),
    }, optional={
        "require_instance": maybe(st.booleans() if wrong else st.just(True) | st.booleans()),
        "instance_tags": maybe(tag_tables),
        "role_tags": maybe(tag_tables),
    })
    gcp_tables = st.fixed_dictionaries({"projects": maybe(st.lists(globs, min_size=1, max_size=3))}, optional={
        "service_accounts": maybe(st.lists(globs, max_size=2)),
        "require_instance": maybe(st.booleans() if wrong else st.just(True) | st.booleans()),
        "zones": maybe(st.lists(globs, max_size=2)),
        "regions": maybe(st.lists(globs, max_size=2)),
        "instance_names": maybe(st.lists(globs, max_size=2)),
        "labels": maybe(tag_tables),
    })
    issue_tables = st.fixed_dictionaries({}, optional={
        "wrap_ttl": maybe(durations), "secret_id_ttl": maybe(durations), "bind_source_cidr": maybe(st.booleans()),
    })
    kinds = ["aws", "gcp", "both", "neither"] if wrong else ["aws", "gcp"]
    rule_tables = st.fixed_dictionaries({"name": maybe(names), "role": maybe(roles)}, optional={
        "description": maybe(st.text(max_size=10)), "issue": maybe(issue_tables),
        **({"unknown": anything} if wrong else {}),
    }).flatmap(lambda rule: st.sampled_from(kinds).flatmap(lambda kind: st.fixed_dictionaries({
        **({"aws": maybe(aws_tables)} if kind in ("aws", "both") else {}),
        **({"gcp": maybe(gcp_tables)} if kind in ("gcp", "both") else {}),
    }).map(lambda extra: {**rule, **extra})))
    documents = st.fixed_dictionaries({"version": maybe(st.just(1))}, optional={
        "rule": maybe(st.lists(rule_tables, min_size=0 if wrong else 1, max_size=4, unique_by=lambda r: str(r.get("name")))),
        "security": maybe(st.fixed_dictionaries({}, optional={"principal_arns": maybe(st.lists(
            arns if wrong else st.sampled_from(["arn:aws:iam::123456789012:role/security-team"]), max_size=2))})),
    })
    return documents, arns


def _wrong_sometimes(valid):
    """Mostly the right kind of value, sometimes anything."""
    return valid | valid | valid | anything


def _right_kind(valid):
    return valid


documents, arns = strategies(_wrong_sometimes)
well_typed_documents, _ = strategies(_right_kind)


@given(documents | well_typed_documents)
def test_random_structures_are_rules_or_a_rules_error(doc):
    text = render(doc)
    rules = parse(text)
    event("refused" if rules is None else f"{min(len(rules.rules), 2)}+ rules")
    if rules is None:
        return
    for rule in rules.rules:
        assert rule.method in ("aws", "gcp") and rule.conditions is not None
        assert 10 <= rule.issuance.wrap_ttl <= 300 and 30 <= rule.issuance.secret_id_ttl <= 86400
        assert rule.issuance.secret_id_num_uses == 1
    assert len({r.name for r in rules.rules}) == len(rules.rules)
    _exercise(rules)


def test_a_huge_duration_is_a_rules_error():
    parse('version = 1\n[[rule]]\nname = "x"\nrole = "web"\n[rule.aws]\naccounts = ["123456789012"]\n'
          'principal_arns = ["arn:aws:iam::123456789012:role/x"]\n[rule.issue]\nwrap_ttl = "' + "9" * 5000 + 's"\n')


# ---- deciding on random facts ---------------------------------------------------------------------

text = st.text(max_size=12)
aws_facts = st.builds(
    CallerFacts, method=st.just("aws"), account=st.sampled_from(["123456789012", "210987654321"]) | text,
    principal_arn=text, canonical_arn=arns, principal_type=st.sampled_from(["user", "role", "assumed-role"]),
    role_name=st.none() | text, session_name=st.none() | text,
    instance=st.none() | st.builds(InstanceFacts, instance_id=text, region=text, state=text,
                                   tags=st.dictionaries(text, text, max_size=3)),
    role_tags=st.dictionaries(st.sampled_from(["team", "vault-role"]) | text, text, max_size=3),
    claim_error=st.none() | text)
gcp_facts = st.builds(
    GcpCallerFacts, email=text, project_id=st.none() | st.sampled_from(["demo-project"]) | text,
    instance=st.none() | st.builds(GceInstanceFacts, instance_id=text, name=text, project_id=text, project_number=text,
                                   zone=text, region=text, status=text, service_accounts=st.tuples(text),
                                   labels=st.dictionaries(text, text, max_size=3)),
    claim_error=st.none() | text, claimed_instance=st.none() | text)


def _exercise(rules, facts_list=()):
    for facts in facts_list:
        for role in {"web", "batch", *rules.roles}:
            decision = rules.decide(facts, role)
            assert isinstance(decision, Decision) and decision.role == role
            if decision.granted:
                rule = next(r for r in rules.rules if r.name == decision.rule)
                assert rule.role == role and not rule.mismatches(facts) and not facts.claim_error
            else:
                assert decision.reason
            rules.explain(facts, role)
        rules.used_facts(facts)


@given(well_typed_documents, st.lists(aws_facts | gcp_facts, min_size=1, max_size=3))
def test_any_rules_decide_for_any_facts(doc, facts_list):
    rules = parse(render(doc))
    if rules is not None:
        _exercise(rules, facts_list)


def test_the_shipped_rules_decide_for_any_facts():
    from chalicelib.config import DEFAULT_RULES_FILE
    from chalicelib.policy import load_rules

    rules = load_rules(DEFAULT_RULES_FILE)

    @given(st.lists(aws_facts | gcp_facts, min_size=1, max_size=3))
    def check(facts_list):
        _exercise(rules, facts_list)

    check()


@pytest.mark.parametrize("version", ["true", "1.0"])
def test_version_must_be_the_integer_1(version):
    assert parse(f"version = {version}\n") is None
