"""`make package`: the SAM and Terraform packages of the prod stage build (no AWS
credentials, no network but the package index) from deploy/prod.toml, carry the
configuration they should, hold the rules the function enforces, stay small, and pass
cfn-lint. The Terraform package, the parity of the two and checkov: test_terraform.py,
test_checkov.py; the values file: test_values.py."""

from __future__ import annotations

import json
import re
import stat
import zipfile
from pathlib import Path

import pytest

from deploy import monitoring, package as packaging, values as deploy_values
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
    values = deploy_values.load("prod")
    assert fn["Runtime"] == "python3.12"  # SnapStart for Python needs 3.12 or later (deploy/chalice_runtime.py)
    assert fn["MemorySize"] == config["lambda_memory_size"]
    assert fn["ReservedConcurrentExecutions"] == prod["reserved_concurrency"]
    assert fn["Environment"]["Variables"] == values.environment() == prod["environment_variables"]
    assert fn["CodeUri"] == "./deployment.zip"
    role = resources["ApiHandlerRole"]["Properties"]
    # what the reader roles trust: the name `chalice deploy` gives it too
    assert role["RoleName"] == "secret-zero-broker-prod-api_handler"
    assert [p["PolicyDocument"] for p in role["Policies"]] == [json.loads((CHALICE / "policy-prod.json").read_text())]
    api = resources["RestAPI"]["Properties"]
    assert api["EndpointConfiguration"] == "PRIVATE"
    assert api["Name"] == monitoring.api_name(values)
    assert api["DefinitionBody"]["x-amazon-apigateway-policy"] == json.loads(
        (CHALICE / prod["api_gateway_policy_file"]).read_text()) == values.api_policy()
    assert set(api["DefinitionBody"]["paths"]) >= {"/v1/credentials/aws", "/v1/health"}
    (throttle,) = api["MethodSettings"]
    assert throttle["ThrottlingRateLimit"] == values.throttle_rate_limit
    assert 0 < throttle["ThrottlingBurstLimit"] == values.throttle_burst_limit <= prod["reserved_concurrency"]


def test_snapstart_on_published_versions_and_the_api_invokes_the_alias(package):
    """SnapStart serves published versions only: SAM publishes one per change and points the
    alias at it (AutoPublishAlias); API Gateway must invoke that alias, with the permission on
    it. (Checked with aws-sam-translator 1.115: the transform gives AWS::Lambda::Version,
    AWS::Lambda::Alias APIHandlerAliaslive, the permission's and every integration's
    references resolved to the alias.)"""
    resources = load_cfn(package.sam_template)["Resources"]
    fn = resources["APIHandler"]["Properties"]
    assert fn["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert fn["AutoPublishAlias"] == packaging.ALIAS == "live"
    assert resources["APIHandlerInvokePermission"]["Properties"]["FunctionName"] == {"Ref": "APIHandler.Alias"}
    uris = [op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            for methods in resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"].values()
            for op in methods.values()]
    assert uris and all("/functions/${APIHandlerAliaslive}/invocations" in u for u in uris)
    assert not [u for u in uris if "APIHandler.Arn" in u]


def test_zip_holds_only_compiled_files_for_the_runtime(package):
    """The function runs python3.12: every extension module in the zip is for CPython 3.12 or
    the stable ABI, and every wheel's tag fits (Chalice downloads them for the runtime)."""
    with zipfile.ZipFile(package.zip_path) as z:
        names = z.namelist()
        tags = {n.split("/")[0]: z.read(n).decode() for n in names if n.endswith(".dist-info/WHEEL")}
    extensions = [n for n in names if n.endswith(".so")]
    assert extensions and all(".cpython-312-" in n or n.endswith(".abi3.so") for n in extensions), extensions
    assert any("_cffi_backend" in n for n in extensions)  # cryptography's cffi, for 3.12
    def fits(tag):
        python, abi, _platform = tag.split("-", 2)
        return python in ("py3", "py2.py3", "cp312") or abi == "abi3"

    for dist, text in tags.items():  # a universal wheel lists py2 and py3: one must fit
        assert any(fits(tag) for tag in re.findall(r"^Tag: (\S+)$", text, re.M)), (dist, text)


def test_zip_holds_the_runtimes_bytecode_of_a_cold_aws_start_and_no_other(package):
    """Lambda's /var/task is read-only: bytecode the zip lacks is compiled at every cold
    start. The zip holds checked-hash bytecode of deploy/bytecode.py's ROOTS, made by the
    runtime's Python when this machine has one, and no __pycache__ from any other Python."""
    from deploy import bytecode

    with zipfile.ZipFile(package.zip_path) as z:
        names = set(z.namelist())
        pycs = {n: z.read(n) for n in names if n.endswith(".pyc")}
    assert all(".cpython-312.pyc" in n for n in pycs), sorted(pycs)[:5]
    if bytecode.interpreter_for("python3.12") is None:
        assert not pycs
        pytest.skip("python3.12 is not on this machine: the zip ships no bytecode (checked)")
    wanted = {f"{n.rsplit('/', 1)[0] + '/' if '/' in n else ''}__pycache__/{n.rsplit('/', 1)[-1][:-3]}.cpython-312.pyc"
              for n in names if n.endswith(".py") and bytecode._under(n, bytecode.ROOTS)}
    assert "chalicelib/__pycache__/minter.cpython-312.pyc" in wanted and "__pycache__/app.cpython-312.pyc" in wanted
    assert set(pycs) == wanted
    for name, data in pycs.items():
        assert int.from_bytes(data[4:8], "little") == 0b11, name  # hash-based, checked (PEP 552)


def test_sam_alarms_and_dashboard(package):
    resources = load_cfn(package.sam_template)["Resources"]
    values = deploy_values.load("prod")
    alarms = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    expected = monitoring.alarms(values, "api")
    assert set(alarms) == {f"{a.key}Alarm" for a in expected}
    by_metric = {(p["Namespace"], p["MetricName"], json.dumps(p["Dimensions"], sort_keys=True)): p
                 for p in alarms.values()}
    t = values.thresholds
    api = [{"Name": "ApiName", "Value": "secret-zero-broker-prod"}, {"Name": "Stage", "Value": "api"}]
    fn = [{"Name": "FunctionName", "Value": "secret-zero-broker-prod"}]

    def find(namespace, metric, dims):
        return by_metric[(namespace, metric, json.dumps(dims, sort_keys=True))]

    def decisions(code):
        return [{"Name": "outcome", "Value": "denied"}, {"Name": "code", "Value": code}]

    # what issue 13 asks to watch, with the values file's thresholds
    assert find("AWS/ApiGateway", "5XXError", api)["Threshold"] == t.api_5xx_per_5min
    assert find("SecretZeroBroker", "Decisions", decisions("invalid_proof"))["Threshold"] == t.invalid_proof_per_5min
    assert find("SecretZeroBroker", "Decisions", decisions("proof_replayed"))["Threshold"] == t.proof_replayed_per_5min
    assert find("SecretZeroBroker", "Decisions", decisions("quarantined"))["Threshold"] == t.quarantined_per_5min
    latency = find("AWS/ApiGateway", "Latency", api)
    assert latency["ExtendedStatistic"] == "p99" and "Statistic" not in latency
    # below the function's timeout, itself below API Gateway's 29 s
    assert latency["Threshold"] == t.p99_latency_ms < chalice_config()["lambda_timeout"] * 1000 < 29000
    assert find("AWS/Lambda", "Throttles", fn)["Threshold"] == t.lambda_throttles_per_min
    assert find("AWS/Lambda", "Errors", fn)["Threshold"] == t.lambda_errors_per_5min
    for kind in ("audit", "replay", "quarantine"):
        table = [{"Name": "TableName", "Value": f"secret-zero-broker-prod-{kind}"}]
        assert find("AWS/DynamoDB", "WriteThrottleEvents", table)["Threshold"] == t.dynamodb_throttles_per_5min
    # rules from S3/SSM (BROKER_RULES_SOURCE): a refused version, an unreachable source
    assert find("SecretZeroBroker", "RulesRejected", [])["Threshold"] == t.rules_rejected_per_5min
    assert find("SecretZeroBroker", "RulesSourceUnavailable", [])["Threshold"] == t.rules_source_unavailable_per_5min
    # budgets (issue 23): a looping caller, and a role's or service account's shared budget spent
    for budget, threshold in (("issue-identity", t.identity_budget_exhausted_per_5min),
                              ("issue-principal", t.principal_budget_exhausted_per_5min)):
        assert find("SecretZeroBroker", "BudgetExhausted", [{"Name": "budget", "Value": budget}])["Threshold"] == threshold
    # a trust policy changed (issue 23): CloudTrail's UpdateAssumeRolePolicy through EventBridge
    rule = resources["TrustPolicyChangedRule"]["Properties"]
    assert rule["EventPattern"]["detail"]["eventName"] == ["UpdateAssumeRolePolicy"] and "Targets" not in rule
    assert find("AWS/Events", "TriggeredRules", [{"Name": "RuleName", "Value": rule["Name"]}])["Threshold"] == \
        t.trust_policy_changed_per_5min
    from chalicelib.admission import BUDGET_SCOPES
    assert set(BUDGET_SCOPES.values()) < set(monitoring.BUDGETS)
    for p in alarms.values():
        assert p["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert p["AlarmName"].startswith("secret-zero-broker-prod-")
        assert "AlarmActions" not in p  # prod.toml names no topic
    # the broker's metrics namespace is the one the code emits
    from chalicelib.jsonlog import METRICS_NAMESPACE
    assert monitoring.BROKER_NAMESPACE == METRICS_NAMESPACE
    dashboard = resources["Dashboard"]["Properties"]
    body = json.loads(dashboard["DashboardBody"]["Fn::Sub"])
    metrics = [m for w in body["widgets"] for m in w["properties"]["metrics"]]
    assert all(w["properties"]["region"] == "${AWS::Region}" for w in body["widgets"])
    assert ["SecretZeroBroker", "Decisions", "outcome", "denied", "code", "invalid_proof"] in metrics
    assert ["AWS/Lambda", "Throttles", "FunctionName", "secret-zero-broker-prod"] in metrics


def test_alarm_actions_follow_the_topic(tmp_path):
    text = deploy_values.values_file("prod").read_text().replace(
        "# sns_topic_arn = ", "sns_topic_arn = \"arn:aws:sns:eu-west-1:987654321098:broker-alarms\"\n# ")
    path = tmp_path / "prod.toml"
    path.write_text(text)
    values = deploy_values.load("prod", path)
    merged = packaging.merge_template(values, "api")["Resources"]
    alarm = merged["LambdaThrottlesAlarm"]["Properties"]
    assert alarm["AlarmActions"] == alarm["OKActions"] == ["arn:aws:sns:eu-west-1:987654321098:broker-alarms"]
    assert merged["TrustPolicyChangedRule"]["Properties"]["Targets"] == [
        {"Arn": "arn:aws:sns:eu-west-1:987654321098:broker-alarms", "Id": "alarm-topic"}]


def test_reader_role_template(package):
    template = load_cfn(package.reader_template)
    (role,) = template["Resources"].values()
    assert role["Type"] == "AWS::IAM::Role"
    p = role["Properties"]
    # exactly the permissions of policies/aws/reader-policy.json
    assert [x["PolicyDocument"] for x in p["Policies"]] == [
        json.loads((REPO / "policies" / "aws" / "reader-policy.json").read_text())]
    (trust,) = p["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Ref": "BrokerRoleArn"}}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    assert template["Parameters"]["ExternalId"]["NoEcho"] is True
    assert template["Parameters"]["RoleName"]["Default"] == "secret-zero-reader"


def test_resources_template_takes_the_stage_and_retention_of_the_values(package):
    template = load_cfn(package.resources_template)
    assert template["Parameters"]["Stage"]["Default"] == "prod"
    retention = deploy_values.load("prod").log_retention_days
    assert template["Parameters"]["AuditLogRetentionDays"]["Default"] == retention
    assert template["Resources"] == _resources()


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


def test_cfn_lint_passes_on_the_three_templates(package, tmp_path):
    # a broken template in the same run (cfn-lint takes ~3 s to start) shows the lint is not a no-op
    broken = tmp_path / "broken.yaml"
    broken.write_text("Resources:\n  T:\n    Type: AWS::DynamoDB::Table\n    Properties:\n"
                      "      BillingMode: SOMETIMES\n")
    lint = packaging.cfn_lint(package.sam_template, package.resources_template, package.reader_template, broken)
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


def test_chalice_deploy_names_the_role_as_the_packages_do():
    # the reader roles and Google's workload identity condition trust the role by name:
    # `chalice deploy` must create the same one the packages name
    from chalice.cli.factory import CLIFactory
    from chalice.deploy import models
    from chalice.deploy.appgraph import ApplicationGraphBuilder

    app = ApplicationGraphBuilder().build(CLIFactory(str(REPO)).create_config_obj(chalice_stage_name="prod"), "prod")
    roles, todo = [], [app]
    while todo:
        node = todo.pop()
        if isinstance(node, models.ManagedIAMRole):
            roles.append(node.role_name)
        todo.extend(node.dependencies())
    assert roles == [deploy_values.load("prod").role_name]


def test_the_dashboard_shows_every_backend_the_code_names():
    # BackendErrors' `backend` values: Unavailable(backend=...) and call()/try_call()'s first argument
    code = "\n".join(p.read_text() for p in (REPO / "chalicelib").rglob("*.py"))
    named = set(re.findall(r"backend=\"([a-z ]+)\"", code))
    named |= set(re.findall(r"\b(?:try_)?call\(\s*\"([a-z ]+)\"", code))
    assert named and named <= set(monitoring.BACKENDS), named - set(monitoring.BACKENDS)
