"""The Terraform package (dist/terraform): modern version constraints, `terraform fmt`-clean,
every variable set and every reference defined, the same configuration as the SAM package,
and every CloudFormation resource with its Terraform counterpart (parity). Providers can't
be downloaded here, so `terraform validate` and `plan` are the deployer's (docs/operations.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from deploy import values as deploy_values
from deploy.package import LAMBDA_INVOKE_ARN
from tests.packaging.cfn import load_cfn

REPO = Path(__file__).resolve().parents[2]

# Every CloudFormation resource of the package (sam.yaml after Chalice, resources.yaml) and the
# Terraform resources that make it. SAM's AWS::Serverless::Api is the API, its deployment,
# its stage and the stage's method settings; an IAM role with an inline policy is two.
PARITY = {
    "AuditTable": ['aws_dynamodb_table.table["audit"]'],
    "ReplayTable": ['aws_dynamodb_table.table["replay"]'],
    "QuarantineTable": ['aws_dynamodb_table.table["quarantine"]'],
    "VaultSecretIdSecret": ["aws_secretsmanager_secret.vault_secret_id"],
    "FunctionLogGroup": ["aws_cloudwatch_log_group.function"],
    # SAM's AutoPublishAlias makes the version (publish = true) and the alias
    "APIHandler": ["aws_lambda_function.api_handler", "aws_lambda_alias.live"],
    "ApiHandlerRole": ["aws_iam_role.api_handler", "aws_iam_role_policy.api_handler"],
    "APIHandlerInvokePermission": ["aws_lambda_permission.rest_api_invoke"],
    "RestAPI": ["aws_api_gateway_rest_api.rest_api", "aws_api_gateway_deployment.rest_api",
                "aws_api_gateway_stage.api", "aws_api_gateway_method_settings.throttling"],
    "Dashboard": ["aws_cloudwatch_dashboard.broker"],
    # its target (the alarm topic, when there is one) is one of the rule's Targets in CloudFormation
    "TrustPolicyChangedRule": ["aws_cloudwatch_event_rule.trust_policy_changed"],
}
CFN_TYPES = {  # the Terraform type of each CloudFormation type (the first of the list above)
    "AWS::DynamoDB::Table": "aws_dynamodb_table", "AWS::SecretsManager::Secret": "aws_secretsmanager_secret",
    "AWS::Logs::LogGroup": "aws_cloudwatch_log_group", "AWS::Serverless::Function": "aws_lambda_function",
    "AWS::IAM::Role": "aws_iam_role", "AWS::Lambda::Permission": "aws_lambda_permission",
    "AWS::Serverless::Api": "aws_api_gateway_rest_api", "AWS::CloudWatch::Dashboard": "aws_cloudwatch_dashboard",
    "AWS::CloudWatch::Alarm": "aws_cloudwatch_metric_alarm", "AWS::Events::Rule": "aws_cloudwatch_event_rule",
}


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def parse_dir(directory: Path) -> dict:
    """{"resource": {(type, name): body}, "variable": {name: body}, "terraform": [...], "text": str}."""
    parsed = {"resource": {}, "variable": {}, "terraform": [], "output": {}, "text": ""}
    for f in sorted(directory.glob("*.tf")):
        parsed["text"] += f.read_text()
        doc = hcl2.load(f.open())
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    parsed["resource"][(unquote(rtype), unquote(name))] = body
        for block in doc.get("variable", []):
            for name, body in block.items():
                parsed["variable"][unquote(name)] = body
        for block in doc.get("output", []):
            for name, body in block.items():
                parsed["output"][unquote(name)] = body
        parsed["terraform"] += doc.get("terraform", [])
    return parsed


@pytest.fixture(scope="module")
def tf(package):
    return parse_dir(package.terraform_dir)


@pytest.fixture(scope="module")
def tfvars(package):
    return json.loads(package.tfvars_file.read_text())


def addresses(tf, tfvars) -> set[str]:
    """Every resource instance address, for_each expanded with the keys of the variable it names."""
    found = set()
    for (rtype, name), body in tf["resource"].items():
        for_each = body.get("for_each")
        if for_each:
            m = re.fullmatch(r"\$\{var\.(\w+)\}", for_each)
            assert m, f"{rtype}.{name}: for_each over a variable of the values"
            found |= {f'{rtype}.{name}["{key}"]' for key in tfvars[m.group(1)]}
        else:
            found.add(f"{rtype}.{name}")
    return found


def test_version_constraints(tf, package):
    for parsed in (tf, parse_dir(package.terraform_dir / "modules" / "reader-role")):
        (block,) = parsed["terraform"]
        assert unquote(block["required_version"]) == ">= 1.5"
        (providers,) = block["required_providers"]
        assert unquote(providers["aws"]["source"]) == "hashicorp/aws"
        assert unquote(providers["aws"]["version"]) == ">= 5.0"


def test_no_chalice_terraform_left(package):
    # Chalice's own output pins Terraform < 1.4 and the AWS provider < 5: not shipped
    assert not list(package.terraform_dir.glob("*.tf.json"))
    assert not re.search(r"<\s*1\.4|<\s*5\.0|template_file", (package.terraform_dir / "versions.tf").read_text())


@pytest.mark.skipif(not shutil.which("terraform"), reason="terraform is not installed (fmt needs no provider)")
def test_terraform_fmt_clean(package):
    proc = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(package.terraform_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = package.terraform_dir.parent / "fmt-probe"
    broken.mkdir(exist_ok=True)
    (broken / "x.tf").write_text('variable "x" {\ntype=string\n}\n')
    assert subprocess.run(["terraform", "fmt", "-check", str(broken)], capture_output=True).returncode != 0


def test_every_variable_is_declared_and_set(tf, tfvars):
    declared = tf["variable"]
    assert set(tfvars) <= set(declared), set(tfvars) - set(declared)
    required = {name for name, body in declared.items() if "default" not in body}
    assert required <= set(tfvars), required - set(tfvars)


def test_every_reference_is_defined(tf):
    text = re.sub(r"#.*", "", tf["text"])
    resources = {f"{t}.{n}" for t, n in tf["resource"]}
    for ref in set(re.findall(r"\b(aws_[a-z0-9_]+\.[a-z0-9_]+)\b", text)):
        if ref.split(".")[1] in ("amazonaws",):
            continue
        assert ref in resources, f"{ref} is referred to but not defined"
    for var in set(re.findall(r"\bvar\.([a-z0-9_]+)", text)):
        assert var in tf["variable"], f"var.{var} is not declared"
    assert not re.search(r"\b(data|module|local)\.[a-z]", text), "nothing outside the package's own resources"


def test_parity_with_cloudformation(package, tf, tfvars):
    cfn = dict(load_cfn(package.sam_template)["Resources"])
    cfn.update(load_cfn(package.resources_template)["Resources"])
    expected = {}
    for logical_id, resource in cfn.items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            key = re.sub(r"(?<!^)(?=[A-Z])", "_", logical_id.removesuffix("Alarm")).lower()
            expected[logical_id] = [f'aws_cloudwatch_metric_alarm.alarm["{key}"]']
        else:
            assert logical_id in PARITY, f"{logical_id} ({resource['Type']}) has no Terraform counterpart"
            expected[logical_id] = PARITY[logical_id]
        assert expected[logical_id][0].split(".")[0] == CFN_TYPES[resource["Type"]], logical_id
    assert set(PARITY) <= set(cfn), set(PARITY) - set(cfn)
    wanted = {address for group in expected.values() for address in group}
    assert addresses(tf, tfvars) == wanted


def test_same_configuration_as_the_sam_package(package, tfvars):
    sam = load_cfn(package.sam_template)["Resources"]
    fn = sam["APIHandler"]["Properties"]
    values = deploy_values.load("prod")
    assert tfvars["environment"] == fn["Environment"]["Variables"] == values.environment()
    assert json.loads(tfvars["function_policy"]) == sam["ApiHandlerRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    f = tfvars["function"]
    assert (f["memory_size"], f["timeout"], f["runtime"], f["handler"], f["reserved_concurrency"]) == (
        fn["MemorySize"], fn["Timeout"], fn["Runtime"], fn["Handler"], fn["ReservedConcurrentExecutions"])
    assert (f["snap_start"], f["alias"]) == (fn["SnapStart"]["ApplyOn"], fn["AutoPublishAlias"]) == (
        "PublishedVersions", "live")
    assert tfvars["role_name"] == sam["ApiHandlerRole"]["Properties"]["RoleName"]
    api = sam["RestAPI"]["Properties"]
    assert tfvars["api_name"] == api["Name"] and tfvars["api_stage"] == api["StageName"]
    assert tfvars["api_endpoint_type"] == api["EndpointConfiguration"]
    assert json.loads(tfvars["api_policy"]) == api["DefinitionBody"]["x-amazon-apigateway-policy"]
    (throttle,) = api["MethodSettings"]
    assert (tfvars["throttle_rate_limit"], tfvars["throttle_burst_limit"]) == (
        throttle["ThrottlingRateLimit"], throttle["ThrottlingBurstLimit"])
    # the OpenAPI body: the same paths, every integration to the function
    body = json.loads((package.terraform_dir / "openapi.json").read_text())
    assert body["paths"].keys() == api["DefinitionBody"]["paths"].keys()
    uris = [op["x-amazon-apigateway-integration"]["uri"] for m in body["paths"].values() for op in m.values()]
    assert uris and set(uris) == {LAMBDA_INVOKE_ARN}
    # alarms: the same thresholds, the dashboard the same body
    for logical_id, resource in sam.items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            p = resource["Properties"]
            key = re.sub(r"(?<!^)(?=[A-Z])", "_", logical_id.removesuffix("Alarm")).lower()
            a = tfvars["alarms"][key]
            assert (a["name"], a["metric"], a["namespace"], a["threshold"], a["period"]) == (
                p["AlarmName"], p["MetricName"], p["Namespace"], p["Threshold"], p["Period"])
            assert a["dimensions"] == {d["Name"]: d["Value"] for d in p["Dimensions"]}
            assert (a["statistic"] or a["extended_statistic"]) == (p.get("Statistic") or p["ExtendedStatistic"])
    assert tfvars["dashboard_body"] == sam["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]


def test_tables_secret_and_log_group_as_in_resources_yaml(package, tf, tfvars):
    from chalicelib.audit_schema import cloudformation_properties

    cfn = load_cfn(package.resources_template)["Resources"]
    for kind in ("audit", "replay", "quarantine"):
        t = tfvars["tables"][kind]
        p = cfn[f"{kind.capitalize()}Table"]["Properties"]
        expected = cloudformation_properties(kind)
        assert p["TableName"]["Fn::Sub"].replace("${Stage}", "prod") == t["name"]
        assert t["attributes"] == {a["AttributeName"]: a["AttributeType"] for a in expected["AttributeDefinitions"]}
        assert [k["AttributeName"] for k in expected["KeySchema"]] == [t["hash_key"]]
        assert [(i["name"], i["hash_key"], i["range_key"]) for i in t["indexes"]] == [
            (i["IndexName"], i["KeySchema"][0]["AttributeName"], i["KeySchema"][1]["AttributeName"])
            for i in expected.get("GlobalSecondaryIndexes", [])]
        assert t["ttl_attribute"] == expected["TimeToLiveSpecification"]["AttributeName"]
    table = tf["resource"][("aws_dynamodb_table", "table")]
    assert table["deletion_protection_enabled"] is True
    assert table["point_in_time_recovery"][0]["enabled"] is True
    assert table["server_side_encryption"][0]["enabled"] is True
    for key in (("aws_dynamodb_table", "table"), ("aws_secretsmanager_secret", "vault_secret_id"),
                ("aws_cloudwatch_log_group", "function")):
        assert tf["resource"][key]["lifecycle"][0]["prevent_destroy"] is True, key  # DeletionPolicy: Retain
    assert "secret_string" not in tf["text"]  # never a secret in a template or a state file
    assert tfvars["secret_name"] == cfn["VaultSecretIdSecret"]["Properties"]["Name"]["Fn::Sub"].replace(
        "${Stage}", "prod")
    assert tfvars["log_group_name"] == "/aws/lambda/secret-zero-broker-prod"


def test_reader_role_module(package):
    module = package.terraform_dir / "modules" / "reader-role"
    parsed = parse_dir(module)
    assert json.loads((module / "reader-policy.json").read_text()) == json.loads(
        (REPO / "policies" / "aws" / "reader-policy.json").read_text())
    policy = parsed["resource"][("aws_iam_role_policy", "reader")]
    assert unquote(policy["policy"]) == '${file("${path.module}/reader-policy.json")}'
    trust = parsed["resource"][("aws_iam_role", "reader")]["assume_role_policy"]
    assert "var.broker_role_arn" in trust and '"sts:ExternalId" = var.external_id' in parsed["text"]
    assert parsed["variable"]["external_id"]["sensitive"] is True
    assert set(parsed["resource"]) == {("aws_iam_role", "reader"), ("aws_iam_role_policy", "reader")}


# ---- terraform itself, where the machine has it and a local copy of the AWS provider --------

PROVIDER_MIRROR = Path("/opt/tf-plugins")  # terraform init -plugin-dir: no download
OFFLINE_PROVIDER = """
provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "plan-only"
  secret_key                  = "plan-only"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

module "reader_probe" {
  source          = "./modules/reader-role"
  broker_role_arn = "arn:aws:iam::987654321098:role/secret-zero-broker-prod-api_handler"
  external_id     = "probe-external-id"
}
"""


@pytest.mark.skipif(not shutil.which("terraform") or not any(PROVIDER_MIRROR.glob("*/hashicorp/aws/*")),
                    reason="needs terraform and a local copy of the hashicorp/aws provider (/opt/tf-plugins)")
def test_terraform_init_and_plan(package, tf, tfvars, tmp_path):
    """What docs/operations.md tells a deployer to run, with the provider from a local mirror and
    fake credentials: a plan of new resources makes no AWS call."""
    work = tmp_path / "terraform"
    shutil.copytree(package.terraform_dir, work)
    (work / "zz_offline_provider.tf").write_text(OFFLINE_PROVIDER)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "TF_IN_AUTOMATION": "1", "HOME": str(tmp_path),
           "CHECKPOINT_DISABLE": "1"}

    def terraform(*args):
        proc = subprocess.run(["terraform", *args, "-no-color"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, f"terraform {args[0]}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        return proc.stdout

    terraform("init", "-backend=false", "-input=false", f"-plugin-dir={PROVIDER_MIRROR}")
    # `terraform validate` is what plan does first (and loads the provider's schema again: ~15 s here)
    terraform("plan", "-input=false", "-refresh=false", "-out=broker.plan")
    plan = json.loads(subprocess.run(["terraform", "show", "-json", "broker.plan"], cwd=work, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    created = {r["address"]: r["change"]["after"] for r in plan["resource_changes"]
               if r["change"]["actions"] == ["create"]}
    assert set(created) == addresses(tf, tfvars) | {"module.reader_probe.aws_iam_role.reader",
                                                    "module.reader_probe.aws_iam_role_policy.reader"}
    fn = created["aws_lambda_function.api_handler"]
    assert fn["environment"] == [{"variables": deploy_values.load("prod").environment()}]
    assert fn["reserved_concurrent_executions"] == 50
    assert created["aws_iam_role.api_handler"]["name"] == "secret-zero-broker-prod-api_handler"
    latency = created['aws_cloudwatch_metric_alarm.alarm["latency_p99"]']
    assert latency["extended_statistic"] == "p99" and latency["statistic"] is None
    reader = created["module.reader_probe.aws_iam_role_policy.reader"]
    assert json.loads(reader["policy"]) == json.loads((REPO / "policies" / "aws" / "reader-policy.json").read_text())
    trust = json.loads(created["module.reader_probe.aws_iam_role.reader"]["assume_role_policy"])
    assert trust["Statement"][0]["Condition"] == {"StringEquals": {"sts:ExternalId": "probe-external-id"}}
    assert trust["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::987654321098:role/secret-zero-broker-prod-api_handler"}
