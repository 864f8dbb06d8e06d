"""Every decision's log line carries CloudWatch Embedded Metric Format metrics."""

import io
import json
import logging

import pytest

from chalicelib.jsonlog import LOGGER_NAME, JsonFormatter
from tests.service.test_aws_issuance import body_of


@pytest.fixture
def log_lines():
    """The broker's log lines during the test, as the JSON objects CloudWatch would get."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger(LOGGER_NAME).removeHandler(handler)


def decision_for(lines, response):
    request_id = body_of(response)["request_id"]
    (line,) = [l for l in lines if l.get("event") == "decision" and l["request_id"] == request_id]
    return line


def assert_valid_emf(line):
    """What CloudWatch needs to extract the metrics: every dimension and metric present at the root."""
    meta = line["_aws"]
    assert isinstance(meta["Timestamp"], int)
    for directive in meta["CloudWatchMetrics"]:
        assert directive["Namespace"] == "SecretZeroBroker"
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(line[key], str) and line[key]
        for metric in directive["Metrics"]:
            assert isinstance(line[metric["Name"]], (int, float))


def test_an_issuance_counts_and_times(broker, log_lines):
    response = broker.login_as("demo-batch", "metrics-job", "batch")
    assert response.status_code == 200
    line = decision_for(log_lines(), response)
    assert_valid_emf(line)
    assert (line["outcome"], line["code"], line["method"], line["Decisions"]) == ("issued", "issued", "aws", 1)
    assert 0 < line["Latency"] < 30000
    assert "BackendErrors" not in line


def test_a_backend_error_counts_by_backend(broker, log_lines):
    broker.stack.seal_vault()
    try:
        response = broker.login_as("demo-batch", "metrics-sealed", "batch")
    finally:
        broker.stack.unseal_vault()
    assert response.status_code == 503
    line = decision_for(log_lines(), response)
    assert_valid_emf(line)
    assert (line["outcome"], line["code"], line["backend"], line["BackendErrors"]) == ("error", "unavailable", "vault", 1)
