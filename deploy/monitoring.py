"""The broker's CloudWatch alarms and dashboard, defined once for both packages.

deploy/package.py renders them as CloudFormation (`AWS::CloudWatch::Alarm`,
`AWS::CloudWatch::Dashboard` in the SAM template) and as Terraform variables that
deploy/terraform/broker/monitoring.tf iterates over. The thresholds come from the
stage's values file; docs/operations.md ("Alarms and the dashboard") explains them.

The broker's own metrics are CloudWatch Embedded Metric Format in its decision log
lines (chalicelib/jsonlog.py): namespace `SecretZeroBroker`, `Decisions` and `Latency`
by `outcome`+`code` and by `method`, `BackendErrors` by `backend`, `BudgetExhausted` by
`budget` (the scope of the budget a 429 refused: BUDGETS).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from chalicelib.methods import backends as method_backends
from deploy.values import Values

BROKER_NAMESPACE = "SecretZeroBroker"  # chalicelib/jsonlog.METRICS_NAMESPACE (a test compares)
REGION = "${AWS::Region}"
# The `backend` values of BackendErrors (chalicelib's Unavailable(backend=...); a test compares):
# the broker's own, then each proof method's (its package's BACKENDS, from the registry).
# In the dashboard body: CloudFormation's Fn::Sub, Terraform's replace().
BROKER_BACKENDS = ("vault", "audit store", "replay store", "quarantine store", "secrets manager", "configuration",
                   "hash for the audit log", "rules source")
BACKENDS = BROKER_BACKENDS + tuple(b for b in method_backends() if b not in BROKER_BACKENDS)

# The `budget` values of BudgetExhausted (chalicelib/admission.py's scopes, the per-role cap's; a test compares)
BUDGETS = ("issue-identity", "issue-principal", "issue-role")


@dataclass(frozen=True)
class Alarm:
    key: str  # CamelCase: the CloudFormation logical ID is KEY + "Alarm", Terraform's for_each key its snake_case
    description: str
    namespace: str
    metric: str
    dimensions: dict
    statistic: str  # Sum, Average, ... or a percentile (p99)
    period: int
    evaluation_periods: int
    threshold: int

    @property
    def tf_key(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.key).lower()

    @property
    def is_percentile(self) -> bool:
        return bool(re.fullmatch(r"p\d+(\.\d+)?", self.statistic))


def api_name(values: Values) -> str:
    """The REST API's name (both packages set it): API Gateway's metrics are keyed on it."""
    return values.function_name


def alarms(values: Values, api_stage: str) -> list[Alarm]:
    t = values.thresholds
    api = {"ApiName": api_name(values), "Stage": api_stage}
    fn = {"FunctionName": values.function_name}

    def decisions(code):
        return {"outcome": "denied", "code": code}

    found = [
        Alarm("Api5xx", "API answers 5xx (503 unavailable: Vault, STS, DynamoDB or another backend down; "
              "Lambda errors and throttles): clients are failing to boot.",
              "AWS/ApiGateway", "5XXError", api, "Sum", 300, 2, t.api_5xx_per_5min),
        Alarm("InvalidProofSpike", "Refused proofs (invalid_proof) over the baseline: forged proofs, or "
              "clients with a bad clock or server ID.",
              BROKER_NAMESPACE, "Decisions", decisions("invalid_proof"), "Sum", 300, 1, t.invalid_proof_per_5min),
        Alarm("ProofReplayedSpike", "Replayed proofs: someone presents a proof that was already spent.",
              BROKER_NAMESPACE, "Decisions", decisions("proof_replayed"), "Sum", 300, 1, t.proof_replayed_per_5min),
        Alarm("QuarantinedRefusals", "A quarantined instance or principal still asks for credentials.",
              BROKER_NAMESPACE, "Decisions", decisions("quarantined"), "Sum", 300, 1, t.quarantined_per_5min),
        Alarm("LatencyP99", "p99 latency of the API near the function's timeout (20 s; API Gateway stops at 29 s).",
              "AWS/ApiGateway", "Latency", api, "p99", 300, 3, t.p99_latency_ms),
        Alarm("LambdaErrors", "The function failed (the app never answers 500 itself): a crash or a timeout.",
              "AWS/Lambda", "Errors", fn, "Sum", 300, 1, t.lambda_errors_per_5min),
        Alarm("LambdaThrottles", "Lambda throttled the function (reserved concurrency exhausted): "
              "API Gateway answers those with 500s.",
              "AWS/Lambda", "Throttles", fn, "Sum", 60, 1, t.lambda_throttles_per_min),
    ]
    found += [
        Alarm("RulesRejected", "A new version of the rules (BROKER_RULES_SOURCE) failed validation and was refused: "
              "the last good rules stay in force until a valid version is pushed.",
              BROKER_NAMESPACE, "RulesRejected", {}, "Sum", 300, 1, t.rules_rejected_per_5min),
        Alarm("RulesRollbackRefused", "Rules older than the highest serial applied (an older file pushed again, "
              "an older S3 object version restored) were refused: the newer rules stay in force. A mistake or "
              "someone undoing a rules change: find who pushed them.",
              BROKER_NAMESPACE, "RulesRollbackRefused", {}, "Sum", 300, 1, t.rules_rollback_per_5min),
        Alarm("RulesRollbackForced", "Older rules were applied because BROKER_RULES_ALLOW_SERIAL lets that serial "
              "in: a deliberate rollback, which someone who can change the function's configuration made.",
              BROKER_NAMESPACE, "RulesRollbackForced", {}, "Sum", 300, 1, t.rules_rollback_per_5min),
        Alarm("RulesSourceUnavailable", "The rules source (S3 or SSM) could not be read: the last good rules stay "
              "in force, and a rules change does not take effect.",
              BROKER_NAMESPACE, "RulesSourceUnavailable", {}, "Sum", 300, 2, t.rules_source_unavailable_per_5min),
    ]
    found += [
        Alarm("IdentityBudgetExhausted", "Callers refused over their own budget ([rate_limits] per_identity): "
              "a machine, session or principal looping on its credentials.",
              BROKER_NAMESPACE, "BudgetExhausted", {"budget": "issue-identity"}, "Sum", 300, 1,
              t.identity_budget_exhausted_per_5min),
        Alarm("PrincipalBudgetExhausted", "A role's or service account's shared budget ([rate_limits] per_principal) "
              "is spent: every session or workload of it that claims no machine is refused until the window ends.",
              BROKER_NAMESPACE, "BudgetExhausted", {"budget": "issue-principal"}, "Sum", 300, 1,
              t.principal_budget_exhausted_per_5min),
    ]
    found.append(Alarm("TrustPolicyChanged", TRUST_RULE_DESCRIPTION, "AWS/Events", "TriggeredRules",
                       {"RuleName": trust_rule_name(values)}, "Sum", 300, 1, t.trust_policy_changed_per_5min))
    for kind, events in (("audit", ("Write",)), ("replay", ("Write",)), ("quarantine", ("Read", "Write"))):
        for event in events:
            found.append(Alarm(
                f"{kind.capitalize()}Table{event}Throttles",
                f"DynamoDB throttled {event.lower()}s on the {kind} table (on-demand: a hot partition "
                "or the account's table limit).",
                "AWS/DynamoDB", f"{event}ThrottleEvents", {"TableName": values.table(kind)}, "Sum", 300, 1,
                t.dynamodb_throttles_per_5min))
    return found


# IAM's CloudTrail events of a trust policy change (EventBridge receives IAM's in us-east-1).
TRUST_POLICY_EVENTS = {"source": ["aws.iam"], "detail-type": ["AWS API Call via CloudTrail"],
                       "detail": {"eventSource": ["iam.amazonaws.com"], "eventName": ["UpdateAssumeRolePolicy"]}}
TRUST_RULE_DESCRIPTION = ("A role's trust policy was changed (iam:UpdateAssumeRolePolicy): a policy that let others "
                          "than EC2 or ECS assume a role backing instance or task claims lets them name sessions after "
                          "its machines, for up to its MaxSessionDuration after it is closed again.")


def trust_rule_name(values: Values) -> str:
    return f"{values.function_name}-trust-policy-changed"


def alarm_name(values: Values, alarm: Alarm) -> str:
    return f"{values.function_name}-{alarm.tf_key.replace('_', '-')}"


def dashboard_name(values: Values) -> str:
    return values.function_name


def dashboard_body(values: Values, api_stage: str) -> str:
    """The dashboard's JSON, with REGION (`${AWS::Region}`) where the region goes."""
    api = ["ApiName", api_name(values), "Stage", api_stage]
    fn = ["FunctionName", values.function_name]

    def widget(title, metrics, x, y, *, stat="Sum", period=300, width=12):
        return {"type": "metric", "x": x, "y": y, "width": width, "height": 6,
                "properties": {"title": title, "region": REGION, "stat": stat, "period": period,
                               "view": "timeSeries", "metrics": metrics}}

    def decisions(outcome, code):
        return [BROKER_NAMESPACE, "Decisions", "outcome", outcome, "code", code]

    widgets = [
        widget("Decisions: issued, refused, failed", [
            decisions("issued", "issued"), decisions("denied", "not_authorized"),
            decisions("error", "unavailable")], 0, 0),
        widget("Refused proofs and quarantined callers", [
            decisions("denied", "invalid_proof"), decisions("denied", "proof_replayed"),
            decisions("denied", "quarantined"), decisions("denied", "rate_limited")], 12, 0),
        widget("API: requests, 4xx, 5xx", [
            ["AWS/ApiGateway", "Count", *api], ["AWS/ApiGateway", "4XXError", *api],
            ["AWS/ApiGateway", "5XXError", *api]], 0, 6),
        widget("API latency (ms): p50, p99", [
            ["AWS/ApiGateway", "Latency", *api, {"stat": "p50"}],
            ["AWS/ApiGateway", "Latency", *api, {"stat": "p99"}]], 12, 6, stat="p99"),
        widget("Function: invocations, errors, throttles", [
            ["AWS/Lambda", "Invocations", *fn], ["AWS/Lambda", "Errors", *fn],
            ["AWS/Lambda", "Throttles", *fn]], 0, 12),
        widget("Function: concurrency (max)", [
            ["AWS/Lambda", "ConcurrentExecutions", *fn]], 12, 12, stat="Maximum", period=60),
        widget("DynamoDB throttles", [
            ["AWS/DynamoDB", f"{event}ThrottleEvents", "TableName", values.table(kind)]
            for kind in ("audit", "replay", "quarantine") for event in ("Read", "Write")], 0, 18),
        widget("Backend errors", [[BROKER_NAMESPACE, "BackendErrors", "backend", b]
                                  for b in BACKENDS],
               12, 18),
        widget("Rules: refused versions, rollbacks, source unavailable", [
            [BROKER_NAMESPACE, "RulesRejected"], [BROKER_NAMESPACE, "RulesRollbackRefused"],
            [BROKER_NAMESPACE, "RulesRollbackForced"], [BROKER_NAMESPACE, "RulesSourceUnavailable"]], 0, 24),
        widget("Budgets exhausted (429) by budget", [[BROKER_NAMESPACE, "BudgetExhausted", "budget", b]
                                                     for b in BUDGETS], 12, 24),
    ]
    return json.dumps({"widgets": widgets}, sort_keys=True, separators=(",", ":"))
