"""A 429's log line counts BudgetExhausted by the budget that refused it (the alarms in
deploy/monitoring.py watch it); other refusals don't."""

from chalicelib.audit import AuditRecord
from chalicelib.jsonlog import decision_metrics
from chalicelib.stores.rate_limits import limited


def test_the_exhausted_budget_is_a_metric_dimension():
    error = limited("issue-principal", "role:arn:aws:iam::123456789012:role/r", 200, 3600, 7200)
    assert error.scope == "issue-principal" and error.status == 429
    fields = decision_metrics(AuditRecord(request_id="r", method="aws"), budget=error.scope, now=1.0)
    assert fields["BudgetExhausted"] == 1 and fields["budget"] == "issue-principal"
    assert {"Namespace": "SecretZeroBroker", "Dimensions": [["budget"]],
            "Metrics": [{"Name": "BudgetExhausted", "Unit": "Count"}]} in fields["_aws"]["CloudWatchMetrics"]
    assert "BudgetExhausted" not in decision_metrics(AuditRecord(request_id="r", method="aws"), now=1.0)
