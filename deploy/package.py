"""`make package`: the broker as a SAM/CloudFormation package and as a Terraform package,
both from one values file (deploy/STAGE.toml).

    python deploy/package.py [--stage prod] [--out dist] [--skip-lint] [--allow-placeholders]
                             [--write-chalice-config]

Refuses to build while the values file still holds one of the repository's example
values (each is named), unless --allow-placeholders (ALLOW_PLACEHOLDERS=1 in make).

OUT/sam:       sam.yaml (the function, its role, the API with throttling, alarms, dashboard),
               resources.yaml (tables, secret, log group: deployed first), reader-role.yaml
               (the member accounts' reader role, for a StackSet), deployment.zip
OUT/terraform: every resource of both CloudFormation templates (deploy/terraform/broker/*.tf),
               broker.auto.tfvars.json and openapi.json generated from the same values,
               modules/reader-role/, deployment.zip

`chalice package` runs on a copy of the project whose .chalice/config.json carries the
stage's environment rendered from the values file, so the repository's files are not
touched; --write-chalice-config (what `make package` passes) also writes that
environment into .chalice/config.json (and the private API's resource policy into
.chalice/api-policy-STAGE.json) for `chalice deploy`. It needs a region
(AWS_DEFAULT_REGION, default us-east-1 here) but no AWS credentials or network, except
that it downloads the manylinux wheels of the runtime dependencies the first time
(then cached in .chalice/deployments/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a script: python deploy/package.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import bytecode, monitoring, values as values_mod  # noqa: E402
from deploy.chalice_runtime import RUNTIME  # noqa: E402
from deploy.cfn_yaml import load_cfn  # noqa: E402
from deploy.values import Values, ValuesError  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHALICE_DIR = PROJECT / ".chalice"
RESOURCES_TEMPLATE = PROJECT / "deploy" / "resources.yaml"
TERRAFORM_SOURCE = PROJECT / "deploy" / "terraform" / "broker"
READER_MODULE_SOURCE = PROJECT / "deploy" / "terraform" / "reader-role"
READER_POLICY = PROJECT / "policies" / "aws" / "reader-policy.json"
LAMBDA_INVOKE_ARN = "@@lambda_invoke_arn@@"  # openapi.json: Terraform puts the alias's invoke ARN here
ALIAS = "live"  # the function's alias API Gateway invokes: the latest published version (SnapStart)
FUNCTION_ARN_IN_URI = "${APIHandler.Arn}"  # how Chalice's OpenAPI body names the function
# The alias AutoPublishAlias makes, by its logical ID (function + "Alias" + name): SAM resolves
# "APIHandler.Alias" in Ref/GetAtt, not inside the API's OpenAPI body; Ref of an alias is its ARN.
ALIAS_IN_URI = "${APIHandlerAlias" + ALIAS + "}"


class PlaceholderError(SystemExit):
    """The values file still holds example values: the message names each."""


@dataclass
class Package:
    stage: str
    sam_dir: Path
    terraform_dir: Path
    values: Values

    @property
    def sam_template(self) -> Path:
        return self.sam_dir / "sam.yaml"

    @property
    def resources_template(self) -> Path:
        return self.sam_dir / "resources.yaml"

    @property
    def reader_template(self) -> Path:
        return self.sam_dir / "reader-role.yaml"

    @property
    def tfvars_file(self) -> Path:
        return self.terraform_dir / "broker.auto.tfvars.json"

    @property
    def zip_path(self) -> Path:
        return self.sam_dir / "deployment.zip"

    def zip_size(self) -> int:
        return self.zip_path.stat().st_size

    def unzipped_size(self) -> int:
        with zipfile.ZipFile(self.zip_path) as z:
            return sum(i.file_size for i in z.infolist())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION") or "us-east-1")
    return env


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


# ---- .chalice/config.json from the values --------------------------------------------------


def chalice_config(values: Values) -> dict:
    """.chalice/config.json with the stage's environment block taken from the values file
    (nothing else of the file changes)."""
    config = json.loads((CHALICE_DIR / "config.json").read_text())
    stage = config["stages"].get(values.stage)
    if stage is None:
        raise ValuesError(f".chalice/config.json has no stage {values.stage!r}")
    stage["environment_variables"] = values.environment()
    return config


def check_stage_limits(values: Values, config: dict) -> None:
    stage = config["stages"][values.stage]
    reserved = stage.get("reserved_concurrency")
    if reserved and values.throttle_burst_limit > reserved:
        raise ValuesError(f"{values_mod.shown(values.path)}: api.throttle_burst_limit ({values.throttle_burst_limit}) is above "
                          f"the stage's reserved_concurrency ({reserved}): Lambda would throttle first")
    if values.endpoint_type and stage.get("api_gateway_endpoint_type", "EDGE") != values.endpoint_type:
        raise ValuesError(f"{values_mod.shown(values.path)}: api.endpoint_type {values.endpoint_type} but .chalice/config.json "
                          f"stage {values.stage} has {stage.get('api_gateway_endpoint_type', 'EDGE')}")
    uncovered = readers_not_assumable(values, json.loads((CHALICE_DIR / stage["iam_policy_file"]).read_text()))
    if uncovered:
        raise ValuesError(f"{values_mod.shown(values.path)}: the function's policy (.chalice/{stage['iam_policy_file']}) "
                          f"allows no sts:AssumeRole on {', '.join(uncovered)}: widen its statement or rename the role")
    policy_file = stage.get("api_gateway_policy_file")
    if (values.api_policy() is None) != (policy_file is None):
        raise ValuesError(f"{values_mod.shown(values.path)}: a PRIVATE API needs api_gateway_policy_file in .chalice/config.json "
                          f"stage {values.stage} (and only a PRIVATE one)")


def _iam_match(pattern: str, value: str) -> bool:
    """IAM's wildcards: * any run of characters, ? one character."""
    return re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                        value) is not None


def readers_not_assumable(values: Values, policy: dict) -> list[str]:
    """The reader role ARNs no Allow statement of the function's policy lets it assume."""
    def listed(statement, key):
        v = statement.get(key, [])
        return [v] if isinstance(v, str) else v

    allowed = [r for st in policy.get("Statement", []) if st.get("Effect") == "Allow"
               and any(_iam_match(a.lower(), "sts:assumerole") for a in listed(st, "Action"))
               for r in listed(st, "Resource")]
    return [r.role_arn for r in values.readers if not any(_iam_match(p, r.role_arn) for p in allowed)]


def _dump_json(data) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_chalice_config(values: Values, chalice_dir: Path = CHALICE_DIR) -> list[Path]:
    """Write the stage's environment (and private API policy) into chalice_dir; the files changed."""
    config = chalice_config(values)
    changed = []
    target = chalice_dir / "config.json"
    if target.read_text() != _dump_json(config):
        target.write_text(_dump_json(config))
        changed.append(target)
    policy = values.api_policy()
    if policy is not None:
        target = chalice_dir / config["stages"][values.stage]["api_gateway_policy_file"]
        if not target.exists() or json.loads(target.read_text()) != policy:
            target.write_text(_dump_json(policy))
            changed.append(target)
    return changed


def _project_copy(values: Values, dest: Path) -> Path:
    """The files `chalice package` reads, with the stage's configuration from the values."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(PROJECT / "app.py", dest / "app.py")
    shutil.copy2(PROJECT / "requirements.txt", dest / "requirements.txt")
    # symlinks=False: the rules file (a symlink to policies/rules.toml) is copied as a file
    shutil.copytree(PROJECT / "chalicelib", dest / "chalicelib", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    chalice = dest / ".chalice"
    chalice.mkdir()
    for f in CHALICE_DIR.glob("*.json"):
        shutil.copy2(f, chalice / f.name)
    # the downloaded wheels are cached there: share the cache with the repository's
    cache = CHALICE_DIR / "deployments"
    cache.mkdir(exist_ok=True)
    (chalice / "deployments").symlink_to(cache, target_is_directory=True)
    write_chalice_config(values, chalice)
    return dest


# ---- CloudFormation ---------------------------------------------------------------------------

# checkov checks that do not apply, with the reason; the same reasons for the Terraform
# package (deploy/terraform/broker/*.tf) and listed in docs/operations.md.
SKIP_FUNCTION = [
    ("CKV_AWS_116", "API Gateway invokes the function synchronously; a dead-letter queue only serves asynchronous invocations"),
    ("CKV_AWS_117", "the function needs no VPC (it calls AWS APIs and Vault over TLS); docs/operations.md says how to put it in one when Vault is private"),
    ("CKV_AWS_173", "the environment holds no secret (names, the AppRole role ID); the secret ID is in Secrets Manager; Lambda encrypts it at rest with its AWS-managed key"),
]
SKIP_API = [
    ("CKV_AWS_120", "answers are single-use credentials and refusals: a cache would hand one caller's answer to another"),
    ("CKV_AWS_73", "the request ID correlates a request across the client, the function's logs, the audit record and Vault; X-Ray is left to the deployer"),
    ("CKV_AWS_76", "the function logs every decision with its source IP and request ID; stage access logs need the account-wide API Gateway CloudWatch role, which the package does not create"),
]


def _checkov_skips(skips):
    return {"checkov": {"skip": [{"id": i, "comment": c} for i, c in skips]}}


def _logical_id(alarm: monitoring.Alarm) -> str:
    return f"{alarm.key}Alarm"


def cfn_alarm(values: Values, alarm: monitoring.Alarm) -> dict:
    props = {
        "AlarmName": monitoring.alarm_name(values, alarm),
        "AlarmDescription": alarm.description,
        "Namespace": alarm.namespace,
        "MetricName": alarm.metric,
        "Dimensions": [{"Name": k, "Value": v} for k, v in alarm.dimensions.items()],
        "Period": alarm.period,
        "EvaluationPeriods": alarm.evaluation_periods,
        "Threshold": alarm.threshold,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }
    props["ExtendedStatistic" if alarm.is_percentile else "Statistic"] = alarm.statistic
    if values.alarm_topic_arn:
        props["AlarmActions"] = [values.alarm_topic_arn]
        props["OKActions"] = [values.alarm_topic_arn]
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": props}


def merge_template(values: Values, api_stage: str) -> dict:
    """What `chalice package --merge-template` adds to Chalice's SAM template."""
    resources = {
        "APIHandler": {
            "Metadata": _checkov_skips(SKIP_FUNCTION),
            # SnapStart (docs/operations.md): Lambda runs the init once per published version and
            # starts every execution environment from its snapshot; app.py builds the service at
            # init for it. It applies to published versions only: SAM publishes one per change
            # and points the alias ALIAS at it, and API Gateway invokes the alias (invoke_alias).
            "Properties": {"SnapStart": {"ApplyOn": "PublishedVersions"}, "AutoPublishAlias": ALIAS},
        },
        # API Gateway may invoke the alias (a permission on the function alone does not cover it)
        "APIHandlerInvokePermission": {"Properties": {"FunctionName": {"Ref": "APIHandler.Alias"}}},
        # a fixed name: the member accounts' reader roles trust it (policies/aws/README.md)
        "ApiHandlerRole": {"Properties": {"RoleName": values.role_name}},
        "RestAPI": {
            "Metadata": _checkov_skips(SKIP_API),
            "Properties": {
                # a fixed name: API Gateway's metrics (alarms, dashboard) are keyed on it
                "Name": monitoring.api_name(values),
                # requests over the limit get 429, which the client retries with backoff: keep
                # it below what the reserved concurrency serves (docs/operations.md)
                "MethodSettings": [{
                    "ResourcePath": "/*", "HttpMethod": "*",
                    "ThrottlingRateLimit": values.throttle_rate_limit,
                    "ThrottlingBurstLimit": values.throttle_burst_limit,
                    "MetricsEnabled": True,
                }],
            },
        },
        "Dashboard": {
            "Type": "AWS::CloudWatch::Dashboard",
            "Properties": {"DashboardName": monitoring.dashboard_name(values),
                           "DashboardBody": {"Fn::Sub": monitoring.dashboard_body(values, api_stage)}},
        },
    }
    # iam:UpdateAssumeRolePolicy seen by CloudTrail: the alarm topic is told at once, and
    # the TrustPolicyChanged alarm counts the rule's matches (docs/accounts-and-containers.md)
    rule = {"Name": monitoring.trust_rule_name(values), "Description": monitoring.TRUST_RULE_DESCRIPTION,
            "State": "ENABLED", "EventPattern": monitoring.TRUST_POLICY_EVENTS}
    if values.alarm_topic_arn:
        rule["Targets"] = [{"Arn": values.alarm_topic_arn, "Id": "alarm-topic"}]
    resources["TrustPolicyChangedRule"] = {"Type": "AWS::Events::Rule", "Properties": rule}
    for alarm in monitoring.alarms(values, api_stage):
        resources[_logical_id(alarm)] = cfn_alarm(values, alarm)
    return {"Resources": resources}


def invoke_alias(template_path: Path) -> None:
    """Every API integration of Chalice's template invokes the alias, not the unqualified
    function: SnapStart serves published versions only ($LATEST would start cold)."""
    template = yaml.safe_load(template_path.read_text())  # Chalice writes long-form intrinsics only
    uris = 0
    for methods in template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"].values():
        for op in methods.values():
            uri = (op.get("x-amazon-apigateway-integration") or {}).get("uri")
            if isinstance(uri, dict) and FUNCTION_ARN_IN_URI in uri.get("Fn::Sub", ""):
                uri["Fn::Sub"] = uri["Fn::Sub"].replace(FUNCTION_ARN_IN_URI, ALIAS_IN_URI)
                uris += 1
    if not uris:
        raise SystemExit(f"{template_path}: no integration names {FUNCTION_ARN_IN_URI}: has Chalice's template changed?")
    template_path.write_text(yaml.safe_dump(template, sort_keys=False))


def resources_template(values: Values) -> str:
    """deploy/resources.yaml with the stage and the log retention of the values as defaults."""
    text = RESOURCES_TEMPLATE.read_text()
    for parameter, default in (("Stage", values.stage), ("AuditLogRetentionDays", values.log_retention_days)):
        text, n = re.subn(rf"(\n  {parameter}:\n(?:    .*\n)*?    Default: ).*\n", rf"\g<1>{default}\n", text, count=1)
        if n != 1:
            raise SystemExit(f"{RESOURCES_TEMPLATE}: no Default for parameter {parameter}")
    return text


def reader_role_template() -> dict:
    """The member accounts' reader role (policies/aws/README.md), for a StackSet or a stack."""
    policy = json.loads(READER_POLICY.read_text())
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "secret-zero broker: the reader role the broker assumes in this member account to read "
                       "a caller's EC2, IAM and ECS facts (policies/aws/README.md). Deploy in every member account, "
                       "e.g. as a StackSet.",
        "Parameters": {
            "BrokerRoleArn": {"Type": "String", "AllowedPattern": r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                              "Description": "The broker's Lambda execution role (output FunctionRoleArn)"},
            "ExternalId": {"Type": "String", "MinLength": 2, "MaxLength": 1224, "NoEcho": True,
                           "AllowedPattern": r"[\w+=,.@:/-]+",
                           "Description": "The external ID configured for this account (deploy/STAGE.toml, account_readers)"},
            "RoleName": {"Type": "String", "Default": values_mod.DEFAULT_READER_ROLE},
        },
        "Resources": {
            "ReaderRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": {"Ref": "RoleName"},
                    "Description": "Read-only: the secret-zero broker reads callers' instances, roles, "
                                   "instance profiles and ECS tasks",
                    "MaxSessionDuration": 3600,
                    "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                        "Effect": "Allow", "Principal": {"AWS": {"Ref": "BrokerRoleArn"}},
                        "Action": "sts:AssumeRole",
                        "Condition": {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}},
                    }]},
                    "Policies": [{"PolicyName": "secret-zero-reader", "PolicyDocument": policy}],
                },
            },
        },
        "Outputs": {"ReaderRoleArn": {"Value": {"Fn::GetAtt": ["ReaderRole", "Arn"]}}},
    }


# ---- Terraform --------------------------------------------------------------------------------


def _tf_table(values: Values, kind: str) -> dict:
    from chalicelib.audit_schema import TTL_ATTRIBUTE, table_definitions

    d = table_definitions()[kind]
    hash_key = next(k["AttributeName"] for k in d["KeySchema"] if k["KeyType"] == "HASH")
    return {
        "name": values.table(kind),
        "hash_key": hash_key,
        "attributes": {a["AttributeName"]: a["AttributeType"] for a in d["AttributeDefinitions"]},
        "indexes": [{
            "name": i["IndexName"],
            "hash_key": next(k["AttributeName"] for k in i["KeySchema"] if k["KeyType"] == "HASH"),
            "range_key": next((k["AttributeName"] for k in i["KeySchema"] if k["KeyType"] == "RANGE"), None),
            "projection_type": i["Projection"]["ProjectionType"],
        } for i in d.get("GlobalSecondaryIndexes", [])],
        "ttl_attribute": TTL_ATTRIBUTE,
    }


OPENAPI_SKIPS = ("CKV_OPENAPI_4", "CKV_OPENAPI_5")  # no global security; operations without one


def openapi_skip_reason(values: Values) -> str:
    """Why checkov's "every operation has a security requirement" checks do not apply, true of
    this stage: the login, token and incident routes carry their proof in the body."""
    reason = ("no gateway authorizer on the login, token, incident, health and openapi routes by design: "
              "each login, token or incident request carries its own proof (a signed GetCallerIdentity or "
              "a Google ID token) that the function checks; the security routes require sigv4 (IAM)")
    if values.endpoint_type == "PRIVATE":
        return reason + "; the API is PRIVATE, callable only through the listed VPC endpoints (resource policy)"
    return reason + f"; this stage's API is public (endpoint_type {values.endpoint_type} in its values file)"


def _openapi_for_terraform(definition_body: dict, values: Values) -> dict:
    """The SAM template's OpenAPI body with the integration URIs as a token Terraform replaces;
    the resource policy is set on the API itself (policy). checkov reads suppressions from the
    file's lines, and JSON has no comments: they are the strings of the x-checkov-skip list, one
    check a line (docs/operations.md lists them)."""
    body = json.loads(json.dumps(definition_body))
    body.pop("x-amazon-apigateway-policy", None)
    body["x-checkov-skip"] = [f"checkov:skip={check}: {openapi_skip_reason(values)}" for check in OPENAPI_SKIPS]
    for methods in body["paths"].values():
        for op in methods.values():
            integration = op.get("x-amazon-apigateway-integration")
            if integration and isinstance(integration.get("uri"), dict):
                integration["uri"] = LAMBDA_INVOKE_ARN
    return body


def terraform_variables(values: Values, sam: dict, config: dict) -> dict:
    fn = sam["Resources"]["APIHandler"]["Properties"]
    api = sam["Resources"]["RestAPI"]["Properties"]
    stage_config = config["stages"][values.stage]
    api_stage = api["StageName"]
    policy = json.loads((CHALICE_DIR / stage_config["iam_policy_file"]).read_text())
    api_policy = values.api_policy()
    return {
        "stage": values.stage,
        "function_name": values.function_name,
        "role_name": values.role_name,
        "function": {
            "runtime": fn["Runtime"], "handler": fn["Handler"], "memory_size": fn["MemorySize"],
            "timeout": fn["Timeout"], "architectures": fn["Architectures"],
            "reserved_concurrency": fn.get("ReservedConcurrentExecutions", -1),
            "tracing_mode": fn.get("Tracing", "PassThrough"),
            "snap_start": (fn.get("SnapStart") or {}).get("ApplyOn", "None"),
            "alias": fn["AutoPublishAlias"],
        },
        "environment": fn["Environment"]["Variables"],
        "function_policy": json.dumps(policy, sort_keys=True),
        "api_name": monitoring.api_name(values),
        "api_stage": api_stage,
        "api_endpoint_type": api.get("EndpointConfiguration", "EDGE"),
        "api_policy": json.dumps(api_policy, sort_keys=True) if api_policy else None,
        "throttle_rate_limit": values.throttle_rate_limit,
        "throttle_burst_limit": values.throttle_burst_limit,
        "tables": {kind: _tf_table(values, kind) for kind in ("audit", "replay", "quarantine")},
        "secret_name": values.secret_name,
        "log_group_name": values.log_group,
        "log_retention_days": values.log_retention_days,
        "alarms": {a.tf_key: {
            "name": monitoring.alarm_name(values, a), "description": a.description,
            "namespace": a.namespace, "metric": a.metric, "dimensions": a.dimensions,
            "statistic": None if a.is_percentile else a.statistic,
            "extended_statistic": a.statistic if a.is_percentile else None,
            "period": a.period, "evaluation_periods": a.evaluation_periods, "threshold": a.threshold,
        } for a in monitoring.alarms(values, api_stage)},
        "alarm_topic_arn": values.alarm_topic_arn,
        "trust_rule": {"name": monitoring.trust_rule_name(values), "description": monitoring.TRUST_RULE_DESCRIPTION,
                       "event_pattern": json.dumps(monitoring.TRUST_POLICY_EVENTS, sort_keys=True)},
        "trust_rule_targets": {"alarm-topic": values.alarm_topic_arn} if values.alarm_topic_arn else {},
        "dashboard_name": monitoring.dashboard_name(values),
        "dashboard_body": monitoring.dashboard_body(values, api_stage),
    }


def _write_terraform(pkg: Package, sam: dict, config: dict) -> None:
    tf = pkg.terraform_dir
    tf.mkdir(parents=True)
    for f in sorted(TERRAFORM_SOURCE.glob("*.tf")):
        shutil.copy2(f, tf / f.name)
    pkg.tfvars_file.write_text(_dump_json(terraform_variables(pkg.values, sam, config)))
    body = _openapi_for_terraform(sam["Resources"]["RestAPI"]["Properties"]["DefinitionBody"],
                                  pkg.values)
    (tf / "openapi.json").write_text(_dump_json(body))
    shutil.copy2(pkg.zip_path, tf / "deployment.zip")
    module = tf / "modules" / "reader-role"
    module.mkdir(parents=True)
    for f in sorted(READER_MODULE_SOURCE.glob("*.tf")):
        shutil.copy2(f, module / f.name)
    shutil.copy2(READER_POLICY, module / "reader-policy.json")


# ---- the build --------------------------------------------------------------------------------


def load_values(stage: str, values_path: Path | str | None = None, *, allow_placeholders: bool = False) -> Values:
    values = values_mod.load(stage, values_path)
    found = values_mod.placeholders(values)
    if found and not allow_placeholders:
        lines = "\n".join(f"  {line}" for line in found)
        raise PlaceholderError(
            f"{values_mod.shown(values.path)} still holds example values; replace each (or build the examples anyway "
            f"with `make package ALLOW_PLACEHOLDERS=1`):\n{lines}")
    return values


def build(stage: str = "prod", out: Path | str = PROJECT / "dist", *, values_path: Path | str | None = None,
          allow_placeholders: bool = False) -> Package:
    values = load_values(stage, values_path, allow_placeholders=allow_placeholders)
    config = chalice_config(values)
    check_stage_limits(values, config)
    out = Path(out).resolve()
    pkg = Package(stage, out / "sam", out / "terraform", values)
    for d in (pkg.sam_dir, pkg.terraform_dir):
        if d.exists():
            shutil.rmtree(d)
    project = _project_copy(values, out / ".project")
    api_stage = config["stages"][stage].get("api_gateway_stage", "api")
    merge = project / f"sam-merge-{stage}.yaml"  # deleted with the copy
    merge.write_text(yaml.safe_dump(merge_template(values, api_stage), sort_keys=False))
    # Chalice with the runtime fixed (deploy/chalice_runtime.py: SnapStart needs python3.12+)
    chalice = [sys.executable, str(PROJECT / "deploy" / "chalice_runtime.py")]
    _run([*chalice, "package", "--stage", stage, "--template-format", "yaml", "--merge-template", str(merge),
          str(pkg.sam_dir)], cwd=project)
    python = bytecode.interpreter_for(RUNTIME)
    if python:
        added = bytecode.add_bytecode(pkg.zip_path, python)
        print(f"deployment.zip: bytecode of {added} modules from {python} ({RUNTIME})")
    else:  # still correct: each cold start compiles what it imports
        print(f"deployment.zip: no bytecode (no {RUNTIME} that runs on this machine: PATH, pyenv)", file=sys.stderr)
    invoke_alias(pkg.sam_template)
    pkg.resources_template.write_text(resources_template(values))
    pkg.reader_template.write_text(yaml.safe_dump(reader_role_template(), sort_keys=False))
    _write_terraform(pkg, load_cfn(pkg.sam_template), config)
    shutil.rmtree(project)
    return pkg


def cfn_lint(*templates: Path) -> subprocess.CompletedProcess:
    """cfn-lint on the templates (its exit code is 0 when nothing is found)."""
    return subprocess.run([str(BIN / "cfn-lint"), *map(str, templates)], cwd=PROJECT, env=_env(),
                          capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--out", default=str(PROJECT / "dist"))
    parser.add_argument("--values", help="the values file (default deploy/STAGE.toml)")
    parser.add_argument("--skip-lint", action="store_true")
    parser.add_argument("--allow-placeholders", action="store_true",
                        default=os.environ.get("ALLOW_PLACEHOLDERS", "") not in ("", "0"))
    parser.add_argument("--write-chalice-config", action="store_true",
                        help="also write the stage's environment into .chalice/ for `chalice deploy`")
    args = parser.parse_args(argv)
    try:
        pkg = build(args.stage, args.out, values_path=args.values, allow_placeholders=args.allow_placeholders)
    except ValuesError as e:
        print(f"make package: {e}", file=sys.stderr)
        return 2
    except PlaceholderError as e:
        print(f"make package: {e}", file=sys.stderr)
        return 3
    if args.allow_placeholders and values_mod.placeholders(pkg.values):
        print(f"WARNING: built with example values ({len(values_mod.placeholders(pkg.values))}): "
              "not deployable as it is", file=sys.stderr)
    print(f"SAM:       {pkg.sam_dir}/ (sam.yaml, resources.yaml, reader-role.yaml, deployment.zip)")
    print(f"Terraform: {pkg.terraform_dir}/ ({', '.join(sorted(p.name for p in pkg.terraform_dir.iterdir()))})")
    print(f"Lambda zip: {pkg.zip_size() / 1e6:.1f} MB ({pkg.unzipped_size() / 1e6:.1f} MB unzipped)")
    if args.write_chalice_config:
        for path in write_chalice_config(pkg.values):
            print(f"wrote {path.relative_to(PROJECT)} (stage {args.stage}) from {values_mod.shown(pkg.values.path)}")
    if not args.skip_lint:
        lint = cfn_lint(pkg.sam_template, pkg.resources_template, pkg.reader_template)
        if lint.returncode != 0:
            print(lint.stdout + lint.stderr, file=sys.stderr)
            return 1
        print("cfn-lint: sam.yaml, resources.yaml and reader-role.yaml pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
