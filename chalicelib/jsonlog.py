"""One JSON object per log line (CloudWatch Logs, then any SIEM).

Callers pass plain fields; nothing secret is ever handed to the logger (the
service logs audit records, which hold accessors and hashes only).
"""

import json
import logging
import sys
import time
from datetime import datetime, timezone

LOGGER_NAME = "secret_zero_broker"


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text may quote request data.
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, separators=(",", ":"))


def get_logger(level="INFO"):
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def log(logger, level, event, **fields):
    logger.log(level, event, extra={"fields": fields})


METRICS_NAMESPACE = "SecretZeroBroker"


def decision_metrics(record, *, backend=None, budget=None, now=None):
    """CloudWatch Embedded Metric Format for one decision: fields to merge into its log line.

    CloudWatch turns the line into metrics without an API call or a library (no
    Powertools import at cold start): `Decisions` (count) and `Latency` (ms) by
    outcome and code (issued / denied by reason / error), by method, and, for
    errors, `BackendErrors` by the backend that failed; for a request refused over a
    budget (429), `BudgetExhausted` by the budget's scope (`issue-identity`,
    `issue-principal`, `issue-role`).
    """
    now = time.time() if now is None else now
    directives = [
        {"Namespace": METRICS_NAMESPACE, "Dimensions": [["outcome", "code"], ["method"]],
         "Metrics": [{"Name": "Decisions", "Unit": "Count"}, {"Name": "Latency", "Unit": "Milliseconds"}]},
    ]
    fields = {"Decisions": 1, "Latency": round((now - record.epoch) * 1000, 1)}
    if backend:
        directives.append({"Namespace": METRICS_NAMESPACE, "Dimensions": [["backend"]],
                           "Metrics": [{"Name": "BackendErrors", "Unit": "Count"}]})
        fields.update(backend=backend, BackendErrors=1)
    if budget:
        directives.append({"Namespace": METRICS_NAMESPACE, "Dimensions": [["budget"]],
                           "Metrics": [{"Name": "BudgetExhausted", "Unit": "Count"}]})
        fields.update(budget=budget, BudgetExhausted=1)
    fields["_aws"] = {"Timestamp": int(now * 1000), "CloudWatchMetrics": directives}
    return fields
