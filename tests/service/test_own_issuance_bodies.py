"""The bodies a client sends about its own issuance (POST /v1/tokens, POST /v1/incidents), for
real against the in-process broker: they take exactly the fields of the issuance's method's
login body but role (an ECS task's ecs_task_arn claim included), and an incident's free-text
reason is bounded and printable before anything is stored, logged or destroyed."""

import json
import uuid

import pytest

from tests.service.security_helpers import fresh_when, proof_fields
from tests.service.test_revocation import approle_login, assert_error, body_of, issue, unwrap_secret_id, vault_login
from tests.sigv4 import signed_login


def post(broker, path, body):
    return broker.client.http.post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.fixture
def task_issuance(broker):
    """An ECS task (tagged for web) logged in as the client does, naming its task: (creds, task ARN, answer)."""
    task = broker.stack.run_task({"vault-role": "web"})
    creds = broker.stack.assume("demo-task", task.rsplit("/", 1)[1])
    response = broker.post(dict(signed_login(creds, "web", broker.server_id, when=fresh_when()), ecs_task_arn=task))
    assert response.status_code == 200, response.body
    try:
        yield creds, task, body_of(response)
    finally:
        broker.stack.stop_task(task)


def test_an_ecs_tasks_token_registration_naming_its_task_is_registered(broker, task_issuance):
    creds, task, doc = task_issuance
    auth = vault_login(broker.stack, "web", doc)
    body = dict(proof_fields(creds, broker.server_id), ecs_task_arn=task, request_id=doc["request_id"],
                accessor=auth["accessor"])
    response = post(broker, "/v1/tokens", body)
    assert response.status_code == 200, response.body
    record = broker.audit.get(body_of(response)["request_id"])
    assert record["outcome"] == "registration" and record["code"] == "token_registered"
    assert record["related_request_id"] == doc["request_id"] and record["instance"] == task.rsplit("/", 1)[1]


def test_an_ecs_tasks_incident_report_naming_its_task_is_taken(broker, task_issuance):
    creds, task, doc = task_issuance
    stolen = unwrap_secret_id(broker.stack, doc)
    body = dict(proof_fields(creds, broker.server_id), ecs_task_arn=task, request_id=doc["request_id"],
                reason="wrapping token already used")
    response = post(broker, "/v1/incidents", body)
    assert response.status_code == 200, response.body
    assert body_of(response)["secret_id"] == "destroyed"
    assert approle_login(broker.stack, "web", stolen) == 400


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/incidents"])
def test_another_methods_proof_field_beside_an_aws_proof_is_refused(broker, path):
    creds = broker.stack.assume("demo-batch", f"mixed-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    body = dict(proof_fields(creds, broker.server_id), jwt="a.b.c", request_id=doc["request_id"], accessor="x" * 24)
    refused = assert_error(post(broker, path, body), 400, "invalid_request")
    assert "unknown field(s): jwt" in refused["error"]["message"]
    assert approle_login(broker.stack, "batch", unwrap_secret_id(broker.stack, doc)) == 200  # untouched


@pytest.mark.parametrize("reason", [
    "x" * 501,                                # longer than MAX_REASON
    "ok\x00then a NUL",                       # C0 control
    "looks fine\x1b[2J\x1b[Hcleared screen",  # an ANSI escape for whoever reads the log in a terminal
    "C1 CSI \x9b31m",                         # the 8-bit form of the same
    "admin\u202egnp.exe",                     # a bidirectional override
    "zero\u200bwidth",                        # a format character
    "lone \ud800 surrogate",                  # not text at all
])
def test_an_incident_reason_that_is_too_long_or_not_printable_is_refused_before_anything_is_done(broker, reason):
    creds = broker.stack.assume("demo-batch", f"reason-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    body = dict(proof_fields(creds, broker.server_id), request_id=doc["request_id"], reason=reason)
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as \ud800, as an attacker would send it
    response = broker.client.http.post("/v1/incidents", body=raw, headers={"Content-Type": "application/json"})
    refused = assert_error(response, 400, "invalid_request")
    record = broker.audit.get(refused["request_id"])
    assert record["outcome"] == "denied" and record["code"] == "invalid_request"
    assert reason not in json.dumps(record, ensure_ascii=False)
    assert approle_login(broker.stack, "batch", unwrap_secret_id(broker.stack, doc)) == 200  # not destroyed


def test_an_incident_reason_is_stored_on_one_line(broker):
    creds = broker.stack.assume("demo-batch", f"lines-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    reason = "line one\r\n\tline two\n" + "y" * 400
    body = dict(proof_fields(creds, broker.server_id), request_id=doc["request_id"], reason=reason)
    response = post(broker, "/v1/incidents", body)
    assert response.status_code == 200, response.body
    assert broker.audit.get(body_of(response)["request_id"])["reason"] == "line one line two " + "y" * 400
