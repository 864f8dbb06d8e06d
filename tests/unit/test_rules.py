"""The rules engine: deny by default, strict validation, explainable decisions."""

import pytest

from chalicelib.methods import facts_from_dict
from chalicelib.methods.aws.model import AwsFacts as CallerFacts, InstanceFacts
from chalicelib.policy import RulesError, load_rules, parse_rules

RULES = """
version = 1
[[rule]]
name = "web-nodes"
role = "web"
[rule.aws]
accounts = ["123456789012"]
principal_arns = ["arn:aws:iam::123456789012:role/demo-*"]
require_instance = true
instance_tags = { "vault-role" = "web", "env" = "prod*" }
[rule.issue]
wrap_ttl = "30s"
secret_id_ttl = "2m"
bind_source_cidr = true

[[rule]]
name = "batch"
role = "batch"
[rule.aws]
accounts = ["123456789012"]
principal_arns = ["arn:aws:iam::123456789012:role/demo-batch"]
role_tags = { "vault-role" = "batch" }
"""


def node(tags=None, role="demo-node", account="123456789012", claim_error=None):
    instance = None if tags is None else InstanceFacts("i-0123456789abcdef0", "us-east-1", "running", None, tags)
    return CallerFacts.from_dict({
        "principal_arn": f"arn:aws:sts::{account}:assumed-role/{role}/i-0123456789abcdef0",
        "instance": None if instance is None else instance.__dict__,
        "claim_error": claim_error,
    })


def batch(role_tags):
    return CallerFacts.from_dict({"principal_arn": "arn:aws:sts::123456789012:assumed-role/demo-batch/job-1",
                                  "role_tags": role_tags})


rules = parse_rules(RULES)


def test_grant_with_matching_tags_and_issuance_parameters():
    d = rules.decide(node({"vault-role": "web", "env": "prod-eu"}), "web")
    assert d.granted and d.rule == "web-nodes"
    assert (d.issuance.wrap_ttl, d.issuance.secret_id_ttl, d.issuance.secret_id_num_uses, d.issuance.bind_source_cidr) == (30, 120, 1, True)


def test_defaults_for_issuance():
    d = rules.decide(batch({"vault-role": "batch"}), "batch")
    assert d.granted and (d.issuance.wrap_ttl, d.issuance.secret_id_ttl, d.issuance.secret_id_num_uses) == (60, 300, 1)


@pytest.mark.parametrize("facts, why", [
    (node({"vault-role": "batch", "env": "prod"}), "instance tag vault-role is 'batch', needs 'web'"),
    (node({"env": "prod"}), "instance tag vault-role is missing"),
    (node({"vault-role": "web", "env": "dev"}), "instance tag env is 'dev', needs 'prod*'"),
    (node(None), "not a verified running EC2 instance"),
    (node({"vault-role": "web", "env": "prod"}, role="other-node"), "matches none of"),
    (node({"vault-role": "web", "env": "prod"}, account="210987654321"), "account 210987654321 is not one of"),
    (node({"vault-role": "web", "env": "prod"}, claim_error="instance i-0123456789abcdef0 is stopped, not running"), "stopped"),
])
def test_refusals_say_why(facts, why):
    d = rules.decide(facts, "web")
    assert not d.granted and why in d.reason


def test_unknown_role_is_refused():
    d = rules.decide(node({"vault-role": "web", "env": "prod"}), "admin")
    assert not d.granted and d.reason == "no rule grants role 'admin'"


def test_role_tags_only_count_for_roles():
    assert not rules.decide(batch({"vault-role": "web"}), "batch").granted
    user = CallerFacts.from_dict({"principal_arn": "arn:aws:iam::123456789012:user/demo-batch"})
    assert not rules.decide(user, "batch").granted


def test_explain_lists_every_rule_for_the_role():
    verdicts = rules.explain(node({"vault-role": "web", "env": "prod"}))
    assert [(v.rule, v.granted) for v in verdicts] == [("web-nodes", True), ("batch", False)]
    assert rules.explain(node({}), role="web")[0].reasons


def test_used_facts_keep_only_tag_keys_named_by_rules():
    used = rules.used_facts(node({"vault-role": "web", "env": "prod", "secret-ish": "x"}))
    assert used["instance"]["tags"] == {"vault-role": "web", "env": "prod"}


def test_the_shipped_rules_file_is_valid():
    shipped = load_rules("policies/rules.toml")
    assert shipped.roles == ["batch", "web"]
    assert [r.name for r in shipped.rules] == ["web-nodes", "batch-jobs", "web-tasks", "web-gce",
                                                    "batch-cloud-run"]


@pytest.mark.parametrize("text, message", [
    ("version = 2", "'version' must be 1"),
    ("version = 1\n[[rule]]\nname='a b'\nrole='web'", "'name' must be"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'", "rule #1 (a): needs exactly one of [rule.aws] or [rule.gcp]"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\ncolour='red'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']",
     "unknown field(s) colour"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['12345']\nprincipal_arns=['arn:*']", "not a 12-digit account"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=[]", "principal_arns: must name at least one"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']\ninstance_tags={a='b'}",
     "needs require_instance = true"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']\n[rule.issue]\nwrap_ttl='1h'",
     "wrap_ttl: 3600s is outside 10s..300s"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']\n[rule.issue]\nsecret_id_ttl='soon'",
     "is not a duration"),
    ("version = 1\n[[rule]]\nname='a'\nrole='web'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']\n"
     "[[rule]]\nname='a'\nrole='x'\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']", "used twice"),
    ("version = ", "not valid TOML"),
])
def test_invalid_files_name_the_rule_and_field(text, message):
    with pytest.raises(RulesError) as e:
        parse_rules(text, source="rules.toml")
    assert message in str(e.value)


def test_missing_file_is_a_rules_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")


GCP_RULES = """
version = 1
[[rule]]
name = "web-gce"
role = "web"
[rule.gcp]
projects = ["demo-*"]
service_accounts = ["demo-node@demo-project.iam.gserviceaccount.com"]
require_instance = true
zones = ["us-central1-*"]
instance_names = ["web-*"]
labels = { "vault-role" = "web" }

[[rule]]
name = "runner"
role = "batch"
[rule.gcp]
projects = ["demo-project"]
service_accounts = ["batch-runner@demo-project.iam.gserviceaccount.com"]

[[rule]]
name = "aws-batch"
role = "batch"
[rule.aws]
accounts = ["123456789012"]
principal_arns = ["arn:aws:iam::123456789012:role/demo-batch"]
"""
gcp_rules = parse_rules(GCP_RULES)


def gce(labels=None, name="web-1", zone="us-central1-a", email="demo-node@demo-project.iam.gserviceaccount.com",
        claim_error=None):
    instance = None if claim_error else {
        "instance_id": "42", "name": name, "project_id": "demo-project", "project_number": "1", "zone": zone,
        "region": zone.rsplit("-", 1)[0], "status": "RUNNING", "service_accounts": [email],
        "labels": labels if labels is not None else {"vault-role": "web"}}
    return facts_from_dict({"method": "gcp", "email": email, "project_id": "demo-project", "instance": instance,
                            "claim_error": claim_error})


def test_gce_instance_granted_by_labels_zone_and_name():
    d = gcp_rules.decide(gce(), "web")
    assert d.granted and d.rule == "web-gce"


@pytest.mark.parametrize("facts, why", [
    (gce({"vault-role": "batch"}), "label vault-role is 'batch', needs 'web'"),
    (gce({}), "label vault-role is missing"),
    (gce(zone="europe-west1-b"), "zone europe-west1-b matches none of us-central1-*"),
    (gce(name="db-1"), "instance name db-1 matches none of web-*"),
    (gce(email="other@demo-project.iam.gserviceaccount.com"), "service account other@"),
    (gce(claim_error="instance demo-project/us-central1-a/web-1 is TERMINATED, not running"), "TERMINATED"),
])
def test_gce_refusals_say_why(facts, why):
    d = gcp_rules.decide(facts, "web")
    assert not d.granted and why in d.reason


def test_service_account_tokens_and_aws_rules_for_one_role():
    runner = facts_from_dict({"method": "gcp", "email": "batch-runner@demo-project.iam.gserviceaccount.com",
                              "project_id": "demo-project"})
    assert gcp_rules.decide(runner, "batch").rule == "runner"
    aws = CallerFacts.from_dict({"principal_arn": "arn:aws:sts::123456789012:assumed-role/demo-batch/job"})
    assert gcp_rules.decide(aws, "batch").rule == "aws-batch"
    # A service account token is not an instance: the instance rule refuses it.
    sa = facts_from_dict({"method": "gcp", "email": "demo-node@demo-project.iam.gserviceaccount.com",
                          "project_id": "demo-project"})
    assert "not a verified running GCE instance" in gcp_rules.decide(sa, "web").reason
    verdicts = gcp_rules.explain(runner, role="batch")
    assert [(v.rule, v.granted) for v in verdicts] == [("runner", True), ("aws-batch", False)]
    assert verdicts[1].reasons == ["rule is for aws callers, caller is gcp"]


def test_used_facts_keep_only_label_keys_named_by_rules():
    used = gcp_rules.used_facts(gce({"vault-role": "web", "owner": "alice"}))
    assert used["instance"]["labels"] == {"vault-role": "web"}


@pytest.mark.parametrize("table, message", [
    ("[rule.gcp]\nprojects=[]", "projects: must name at least one"),
    ("[rule.gcp]\nprojects=['p']\nlabels={a='b'}", "labels: needs require_instance = true"),
    ("[rule.gcp]\nprojects=['p']\nzones=['us-*']", "zones: needs require_instance = true"),
    ("[rule.gcp]\nprojects=['p']\nsubnet='x'", "unknown field(s) subnet"),
    ("[rule.gcp]\nprojects=['p']\n[rule.aws]\naccounts=['123456789012']\nprincipal_arns=['arn:*']", "exactly one of"),
])
def test_invalid_gcp_rules(table, message):
    with pytest.raises(RulesError) as e:
        parse_rules(f"version = 1\n[[rule]]\nname='g'\nrole='web'\n{table}")
    assert message in str(e.value)
