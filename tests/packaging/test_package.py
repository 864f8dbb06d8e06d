"""`make package`: the SAM and Terraform packages of the prod stage build (no AWS
credentials, no network but the package index), carry the configuration they should,
hold the rules the function enforces, stay small, and pass cfn-lint."""

from __future__ import annotations

import json
import re
import stat
import zipfile
from pathlib import Path

import pytest

from deploy import package as packaging
from tests.packaging.cfn import load_cfn, report

REPO = Path(__file__).resolve().parents[2]
CHALICE = REPO / ".chalice"
MAX_ZIP_BYTES = 15 * 1024 * 1024


def chalice_config() -> dict:
    return json.loads((CHALICE / "config.json").read_text())


def prod_stage() -> dict:
    return chalice_config()["stages"]["prod"]


# ---- .chalice/config.json ----------------------------------------------------------------


def test_stages_and_hand_written_policies():
    config = chalice_config()
    assert {"local", "dev", "prod"} <= set(config["stages"])
    assert config["autogen_policy"] is False
    assert config["stages"]["dev"]["iam_policy_file"] == "policy-dev.json"
    assert config["stages"]["prod"]["iam_policy_file"] == "policy-prod.json"
    for stage in ("dev", "prod"):
        assert config["stages"][stage].get("reserved_concurrency", 0) >= 1
        env = config["stages"][stage]["environment_variables"]
        for required in ("BROKER_VAULT_ADDR", "BROKER_VAULT_ROLE_ID", "BROKER_VAULT_SECRET_ID_SECRET",
                         "BROKER_SERVER_ID", "BROKER_AUDIT_TABLE", "BROKER_REPLAY_TABLE"):
            assert env.get(required), f"{stage}: {required}"
    assert config.get("lambda_memory_size", 128) >= 512


def test_prod_is_private_and_admits_only_the_listed_vpc_endpoints():
    prod = prod_stage()
    assert prod["api_gateway_endpoint_type"] == "PRIVATE"
    # Chalice 1.34 accepts api_gateway_endpoint_vpce or api_gateway_policy_file, not both:
    # the VPC endpoints are listed in the policy file.
    assert "api_gateway_endpoint_vpce" not in prod
    policy = json.loads((CHALICE / prod["api_gateway_policy_file"]).read_text())
    by_effect = {s["Effect"]: s for s in policy["Statement"]}
    assert set(by_effect) == {"Allow", "Deny"} and len(policy["Statement"]) == 2
    deny, allow = by_effect["Deny"], by_effect["Allow"]
    for statement in (deny, allow):
        assert statement["Principal"] == "*"
        assert statement["Action"] == "execute-api:Invoke"
        assert statement["Resource"] == "execute-api:/*"
    listed = deny["Condition"]["StringNotEquals"]["aws:SourceVpce"]
    assert listed == allow["Condition"]["StringEquals"]["aws:SourceVpce"]
    assert listed and all(re.fullmatch(r"vpce-[0-9a-f]{8,17}", v) for v in listed)


# ---- the packages ----------------------------------------------------------------------------


def test_sam_package(package):
    template = load_cfn(package.sam_template)
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    resources = template["Resources"]
    fn = resources["APIHandler"]["Properties"]
    prod, config = prod_stage(), chalice_config()
    assert fn["Runtime"] == "python3.11"
    assert fn["MemorySize"] == config["lambda_memory_size"]
    assert fn["ReservedConcurrentExecutions"] == prod["reserved_concurrency"]
    assert fn["Environment"]["Variables"] == prod["environment_variables"]
    assert fn["CodeUri"] == "./deployment.zip"
    role_policies = resources["ApiHandlerRole"]["Properties"]["Policies"]
    assert [p["PolicyDocument"] for p in role_policies] == [json.loads((CHALICE / "policy-prod.json").read_text())]
    api = resources["RestAPI"]["Properties"]
    assert api["EndpointConfiguration"] == "PRIVATE"
    assert api["DefinitionBody"]["x-amazon-apigateway-policy"] == json.loads(
        (CHALICE / prod["api_gateway_policy_file"]).read_text())
    assert set(api["DefinitionBody"]["paths"]) >= {"/v1/credentials/aws", "/v1/health"}
    (throttle,) = api["MethodSettings"]  # merged from deploy/sam-merge-prod.yaml
    assert 0 < throttle["ThrottlingBurstLimit"] <= prod["reserved_concurrency"]


def test_terraform_package(package):
    tf = json.loads(package.terraform_file.read_text())
    fn = tf["resource"]["aws_lambda_function"]["api_handler"]
    prod, config = prod_stage(), chalice_config()
    assert fn["memory_size"] == config["lambda_memory_size"]
    assert fn["reserved_concurrent_executions"] == prod["reserved_concurrency"]
    assert fn["environment"]["variables"] == prod["environment_variables"]
    assert tf["resource"]["aws_api_gateway_rest_api"]["rest_api"]["endpoint_configuration"] == {"types": ["PRIVATE"]}
    assert json.loads(tf["resource"]["aws_iam_role_policy"]["api_handler_role"]["policy"]) == json.loads(
        (CHALICE / "policy-prod.json").read_text())
    assert (package.terraform_dir / "deployment.zip").is_file()
    # the throttling beside it refers to resources chalice.tf.json defines
    extra = json.loads((package.terraform_dir / "throttling.tf.json").read_text())
    settings = extra["resource"]["aws_api_gateway_method_settings"]["broker_throttling"]
    for ref in re.findall(r"\$\{(aws_[a-z_]+)\.([a-z_]+)\.", json.dumps(settings)):
        assert ref[1] in tf["resource"][ref[0]], ref
    assert 0 < settings["settings"]["throttling_burst_limit"] <= prod["reserved_concurrency"]


def test_zip_holds_the_rules_the_function_enforces(package):
    shipped = (REPO / "policies" / "rules.toml").read_bytes()
    with zipfile.ZipFile(package.zip_path) as z:
        info = z.getinfo("chalicelib/policies/rules.toml")  # the default BROKER_RULES_FILE
        assert not stat.S_ISLNK(info.external_attr >> 16), "the symlink itself was zipped, not the rules"
        assert z.read(info) == shipped
        names = z.namelist()
    assert "app.py" in names and "chalicelib/pipeline/issuance.py" in names
    assert "chalicelib/methods/aws/match.py" in names and "chalicelib/methods/gcp/proof.py" in names
    # the Vault policies are for `broker vault setup`, not the function; nor are tests, the
    # local stack or the client
    assert not [n for n in names if n.endswith(".hcl")]
    assert not [n for n in names if n.split("/")[0] in ("tests", "devstack", "broker", "deploy", "policies")]
    # the Lambda runtime provides boto3/botocore
    assert not [n for n in names if n.split("/")[0] in ("boto3", "botocore")]


def test_zip_is_small(package):
    size, unzipped = package.zip_size(), package.unzipped_size()
    report(f"Lambda zip (prod): {size / 1e6:.1f} MB, {unzipped / 1e6:.1f} MB unzipped")
    assert size < MAX_ZIP_BYTES
    assert (package.terraform_dir / "deployment.zip").stat().st_size < MAX_ZIP_BYTES


def test_cfn_lint_passes_on_the_sam_template_and_the_resources_template(package, tmp_path):
    # a broken template in the same run (cfn-lint takes ~3 s to start) shows the lint is not a no-op
    broken = tmp_path / "broken.yaml"
    broken.write_text("Resources:\n  T:\n    Type: AWS::DynamoDB::Table\n    Properties:\n"
                      "      BillingMode: SOMETIMES\n")
    lint = packaging.cfn_lint(package.sam_template, packaging.RESOURCES_TEMPLATE, broken)
    findings = [line for line in lint.stdout.splitlines() if line.strip()]
    assert lint.returncode != 0 and "SOMETIMES" in lint.stdout
    paths = [line for line in findings if line.startswith(("/", "deploy"))]
    assert paths and all(line.startswith(str(broken)) for line in paths), lint.stdout


# ---- deploy/resources.yaml ------------------------------------------------------------------


def _resources() -> dict:
    return load_cfn(packaging.RESOURCES_TEMPLATE)["Resources"]


@pytest.mark.parametrize("name, kind, env", [
    ("AuditTable", "audit", "BROKER_AUDIT_TABLE"),
    ("ReplayTable", "replay", "BROKER_REPLAY_TABLE"),
    ("QuarantineTable", "quarantine", "BROKER_QUARANTINE_TABLE"),
])
def test_tables(name, kind, env):
    from chalicelib.audit_schema import cloudformation_properties

    table = _resources()[name]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["DeletionPolicy"] == "Retain"
    p = table["Properties"]
    # keys, indexes, billing and TTL exactly as the code defines them
    expected = cloudformation_properties(kind)
    assert {k: p.get(k) for k in expected} == expected
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["DeletionProtectionEnabled"] is True
    assert "GlobalSecondaryIndexes" not in p or kind == "audit"
    # the names the stages' functions are configured with, and the prod policy names
    policy = json.loads((CHALICE / "policy-prod.json").read_text())
    resources = json.dumps(policy)
    for stage in ("dev", "prod"):
        name_in_stage = p["TableName"]["Fn::Sub"].replace("${Stage}", stage)
        configured = chalice_config()["stages"][stage]["environment_variables"].get(env)
        if configured is not None:  # BROKER_QUARANTINE_TABLE comes with the quarantine routes
            assert configured == name_in_stage
        if stage == "prod":
            assert f"table/{name_in_stage}\"" in resources


def test_secret_and_log_group():
    resources = _resources()
    secret = resources["VaultSecretIdSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert "SecretString" not in secret["Properties"]  # never a secret in a template
    log_group = resources["FunctionLogGroup"]["Properties"]
    for stage in ("dev", "prod"):
        env = chalice_config()["stages"][stage]["environment_variables"]
        assert secret["Properties"]["Name"]["Fn::Sub"].replace("${Stage}", stage) == env[
            "BROKER_VAULT_SECRET_ID_SECRET"]
        # Chalice names the function APP-STAGE; Lambda logs to /aws/lambda/NAME
        name = f"{chalice_config()['app_name']}-{stage}"
        assert log_group["LogGroupName"]["Fn::Sub"].replace("${Stage}", stage) == f"/aws/lambda/{name}"
