"""One set of deployment values per stage (deploy/STAGE.toml): `make package` refuses the
repository's examples, naming each, unless ALLOW_PLACEHOLDERS=1; a deployer's values
build; .chalice/config.json's stage environments are the values' (so `chalice deploy`
and both packages agree)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import package as packaging, values as deploy_values

REPO = Path(__file__).resolve().parents[2]

# What a deployer would write: no example left.
REAL = """
stage = "prod"
[vault]
addr = "https://vault.corp.acme.net:8200"
role_id = "5c9b2f0e-8d1a-4c55-9f0e-3b7a1d2e4f60"
revoker_role_id = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
[broker]
server_id = "secret-zero-broker.acme.net"
[api]
endpoint_type = "PRIVATE"
vpc_endpoints = ["vpce-0a1b2c3d4e5f60718"]
throttle_rate_limit = 80
throttle_burst_limit = 40
[gcp]
audience = "https://secret-zero-broker.acme.net"
[[account_readers]]
account = "987654321098"
external_id = "szb-prod-7f3a9c"
[[account_readers]]
account = "876543210987"
role_arn = "arn:aws:iam::876543210987:role/platform/sz-reader"
external_id = "szb-prod-2b81e4"
[alarms]
sns_topic_arn = "arn:aws:sns:eu-west-1:765432109876:broker-alarms"
"""


def write(tmp_path, text, name="prod.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_repository_values_are_examples_and_each_is_named():
    found = deploy_values.placeholders(deploy_values.load("prod"))
    keys = [line.split(" = ")[0] for line in found]
    assert keys == ["vault.role_id", "vault.revoker_role_id", "vault.addr", "broker.server_id", "api.vpc_endpoints",
                    "api.vpc_endpoints",
                    "gcp.audience", "account_readers[0].account", "account_readers[0].external_id"]
    assert any("'vpce-0123456789abcdef0'" in line for line in found)
    assert any("'set-me-from-broker-vault-setup'" in line for line in found)


def test_make_package_refuses_placeholders_naming_each(tmp_path):
    # the script as `make package` runs it; it stops before building anything
    proc = subprocess.run([sys.executable, "deploy/package.py", "--out", str(tmp_path / "dist")], cwd=REPO,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "deploy/prod.toml still holds example values" in proc.stderr
    assert "ALLOW_PLACEHOLDERS=1" in proc.stderr
    for key in ("vault.role_id = 'set-me-from-broker-vault-setup'", "api.vpc_endpoints = 'vpce-0123456789abcdef0'",
                "api.vpc_endpoints = 'vpce-0fedcba9876543210'", "account_readers[0].account = '210987654321'"):
        assert key in proc.stderr
    assert not (tmp_path / "dist").exists()


def test_a_deployers_values_have_no_placeholder_and_make_the_environment(tmp_path):
    values = packaging.load_values("prod", write(tmp_path, REAL))  # would raise on a placeholder
    env = values.environment()
    assert env["BROKER_VAULT_ROLE_ID"] == "5c9b2f0e-8d1a-4c55-9f0e-3b7a1d2e4f60"
    assert env["BROKER_GCP_AUDIENCE"] == "https://secret-zero-broker.acme.net"
    assert json.loads(env["BROKER_ACCOUNT_READERS"]) == {
        "987654321098": {"role_arn": "arn:aws:iam::987654321098:role/secret-zero-reader",
                         "external_id": "szb-prod-7f3a9c"},
        "876543210987": {"role_arn": "arn:aws:iam::876543210987:role/platform/sz-reader",
                         "external_id": "szb-prod-2b81e4"},
    }
    assert env["BROKER_AUDIT_TABLE"] == "secret-zero-broker-prod-audit"
    assert env["BROKER_VAULT_SECRET_ID_SECRET"] == "secret-zero-broker/prod/vault-secret-id"
    # the revoking identity: its role ID, its secret beside the broker's (broker vault setup stores it)
    assert env["BROKER_REVOKER_ROLE_ID"] == "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    assert env["BROKER_REVOKER_SECRET_ID_SECRET"] == "secret-zero-broker/prod/vault-secret-id-revoker"
    assert values.api_policy()["Statement"][0]["Condition"] == {
        "StringNotEquals": {"aws:SourceVpce": ["vpce-0a1b2c3d4e5f60718"]}}
    # and the chalice config for `chalice deploy` (written into a copy of .chalice here)
    chalice = tmp_path / ".chalice"
    chalice.mkdir()
    for f in (REPO / ".chalice").glob("*.json"):
        (chalice / f.name).write_text(f.read_text())
    changed = packaging.write_chalice_config(values, chalice)
    assert {p.name for p in changed} == {"config.json", "api-policy-prod.json"}
    config = json.loads((chalice / "config.json").read_text())
    assert config["stages"]["prod"]["environment_variables"] == env
    original = json.loads((REPO / ".chalice" / "config.json").read_text())
    # only the prod stage's environment changed
    config["stages"]["prod"]["environment_variables"] = original["stages"]["prod"]["environment_variables"]
    assert config == original
    assert json.loads((chalice / "api-policy-prod.json").read_text()) == values.api_policy()
    assert packaging.write_chalice_config(values, chalice) == []  # idempotent


@pytest.mark.parametrize("stage", ["prod", "dev"])
def test_chalice_config_is_in_step_with_the_values(stage):
    # `make package` writes it; a hand edit of one without the other fails here
    values = deploy_values.load(stage)
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    assert config["stages"][stage]["environment_variables"] == values.environment(), (
        f"run `make package STAGE={stage} ALLOW_PLACEHOLDERS=1` to write deploy/{stage}.toml into .chalice/")
    policy_file = config["stages"][stage].get("api_gateway_policy_file")
    if values.api_policy() is not None:
        assert json.loads((REPO / ".chalice" / policy_file).read_text()) == values.api_policy()


@pytest.mark.parametrize("change, message", [
    (('stage = "prod"', 'stage = "dev"'), "stage: must be 'prod'"),
    (('addr = "https://vault.corp.acme.net:8200"', 'addr = "http://vault.corp.acme.net:8200"'),
     "vault.addr: must be https in prod"),
    (('role_id = "5c9b2f0e-8d1a-4c55-9f0e-3b7a1d2e4f60"', 'role_id = ""'), "vault.role_id: is required"),
    (('vpc_endpoints = ["vpce-0a1b2c3d4e5f60718"]', 'vpc_endpoints = ["vpc-0a1b2c3d"]'), "api.vpc_endpoints"),
    (('vpc_endpoints = ["vpce-0a1b2c3d4e5f60718"]', 'vpc_endpoints = []'), "a PRIVATE API needs"),
    (('account = "987654321098"', 'account = 987654321098'), "account_readers[0].account"),
    (('account = "876543210987"', 'account = "987654321098"'), "987654321098 is listed twice"),
    (('role_arn = "arn:aws:iam::876543210987:', 'role_arn = "arn:aws:iam::111111111119:'),
     "account_readers[1].role_arn: must be a role ARN in account 876543210987"),
    (('external_id = "szb-prod-7f3a9c"', 'external_id = "x y"'), "account_readers[0].external_id"),
    (('[alarms]', '[alarms.thresholds]\nquarantined_per_5min = 0\n[alarm]'), "unknown key"),
    (('[alarms]\n', '[alarms]\nthresholds = { quarantined_per_5min = 0 }\n'),
     "alarms.thresholds.quarantined_per_5min: must be a whole number"),
    (('[alarms]', '[environment]\nBROKER_VAULT_ADDR = "https://x.acme.net"\n[alarms]'),
     "environment.BROKER_VAULT_ADDR: is set by the values file's own keys"),
    (('[alarms]', '[logs]\nretention_days = 42\n[alarms]'), "logs.retention_days: one of CloudWatch"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, change, message):
    old, new = change
    assert old in REAL
    with pytest.raises(deploy_values.ValuesError) as e:
        deploy_values.load("prod", write(tmp_path, REAL.replace(old, new, 1)))
    assert message in str(e.value)


def test_throttling_above_the_reserved_concurrency_is_refused(tmp_path):
    path = write(tmp_path, REAL.replace("throttle_burst_limit = 40", "throttle_burst_limit = 60"))
    with pytest.raises(deploy_values.ValuesError, match=r"throttle_burst_limit \(60\) is above .* \(50\)"):
        packaging.build("prod", tmp_path / "dist", values_path=path)


@pytest.mark.parametrize("old, new, key", [
    ('account = "987654321098"', 'account = "123456789012"', "account_readers[0].account"),
    ('external_id = "szb-prod-7f3a9c"', 'external_id = "secret-zero-local"', "account_readers[0].external_id"),
    ('server_id = "secret-zero-broker.acme.net"', 'server_id = "broker.example.org"', "broker.server_id"),
    ('audience = "https://secret-zero-broker.acme.net"', 'audience = "https://broker.test"', "gcp.audience"),
    ('sns_topic_arn = "arn:aws:sns:eu-west-1:765432109876:', 'sns_topic_arn = "arn:aws:sns:eu-west-1:123456789012:',
     "alarms.sns_topic_arn"),
])
def test_each_kind_of_example_is_caught(tmp_path, old, new, key):
    values = deploy_values.load("prod", write(tmp_path, REAL.replace(old, new, 1)))
    assert [line.split(" = ")[0] for line in deploy_values.placeholders(values)] == [key]


@pytest.mark.parametrize("stage", ["prod", "dev"])
def test_the_broker_accepts_the_environment_the_values_make(stage, tmp_path):
    # the real consumer: the broker's settings, validated as at a cold start
    from chalicelib.config import Settings

    for values in (deploy_values.load(stage), deploy_values.load("prod", write(tmp_path, REAL))):
        if values.stage != stage:
            continue
        settings = Settings.from_env(values.environment())
        assert settings.audit_table == values.table("audit")
        readers = settings.aws.readers
        assert {a: (r.role_arn, r.external_id) for a, r in readers.items()} == {
            r.account: (r.role_arn, r.external_id) for r in values.readers}
        assert (settings.gcp is not None) == bool(values.gcp_audience)


def test_a_reader_the_function_may_not_assume_is_refused(tmp_path):
    # REAL's second reader is role/platform/sz-reader: the prod policy allows assuming
    # role/secret-zero-reader only
    values = deploy_values.load("prod", write(tmp_path, REAL))
    policy = json.loads((REPO / ".chalice" / "policy-prod.json").read_text())
    assert packaging.readers_not_assumable(values, policy) == ["arn:aws:iam::876543210987:role/platform/sz-reader"]
    with pytest.raises(deploy_values.ValuesError, match=r"allows no sts:AssumeRole on "
                                                        r"arn:aws:iam::876543210987:role/platform/sz-reader"):
        packaging.build("prod", tmp_path / "dist", values_path=values.path)
    assert not (tmp_path / "dist").exists()
    # the repository's readers are covered
    assert packaging.readers_not_assumable(deploy_values.load("prod"), policy) == []
