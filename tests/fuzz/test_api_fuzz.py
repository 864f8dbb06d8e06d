"""Schemathesis against the broker under ``chalice local``, driven by its own OpenAPI description.

Every answer must: not be a 500 (or any 5xx but a described 503), match the
description (status, content type, headers, body), and when it is an error, have
the JSON error shape ``{"error": {"code", "message"}, "request_id"}``. Bodies that
break the described schema must be refused with a 4xx.

The test suite runs a bounded number of examples per operation; ``make fuzz``
runs many more (FUZZ_EXAMPLES, default there 1000) with the same checks.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from chalicelib.openapi import document
from tests.secret_scan import SHAPES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
ERROR_KEYS = {"error", "request_id"}


@schemathesis.check
def json_error_shape(ctx, response, case):
    """Every 4xx/5xx of a described operation is the broker's JSON error shape
    (or, for GET /v1/health's 503, its health document)."""
    if response.status_code < 400:
        return True
    if case.method.upper() != case.operation.method.upper():
        # A method the route does not have: answered by the router before the app
        # (chalice local: 405 {"Code", "Message"}; API Gateway: 403 {"message"}).
        assert response.status_code in (403, 405), response.status_code
        return True
    doc = json.loads(response.content)
    if case.path == "/v1/health" and response.status_code == 503 and set(doc) == {"status", "checks"}:
        return True
    assert isinstance(doc, dict) and set(doc) == ERROR_KEYS, f"not the error shape: {sorted(doc)}"
    assert isinstance(doc["error"], dict) and set(doc["error"]) == {"code", "message"}
    assert isinstance(doc["error"]["code"], str) and isinstance(doc["error"]["message"], str)
    assert doc["request_id"] is None or isinstance(doc["request_id"], str)
    return True


@schemathesis.check
def no_secret_material(ctx, response, case):
    """Refusals never echo anything shaped like a Vault token."""
    if response.status_code >= 400:
        for kind, pattern in SHAPES.items():
            assert not pattern.search(response.text), f"a refusal carries {kind}"
    return True


CHECKS = [
    not_a_server_error,  # the stack is healthy: not even a 503 is expected
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    json_error_shape,
    no_secret_material,
]


def _schema():
    config = schemathesis.Config.from_dict({
        "generation": {"max-examples": EXAMPLES, "mode": "all", "deterministic": os.environ.get("FUZZ_RANDOM") != "1"},
        # TRACE/CONNECT are refused by chalice local's http.server itself (501), not by the app
        "phases": {"stateful": {"enabled": False},
                   "coverage": {"unexpected-methods": ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]}},
    })
    return schemathesis.openapi.from_dict(document(), config=config)


schema = _schema()


@pytest.fixture(scope="session")
def served_description(local_broker):
    served = requests.get(f"{local_broker.url}/v1/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == document()
    return local_broker.url


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_promises(case, served_description):
    case.call_and_validate(base_url=served_description, checks=CHECKS, timeout=30)


# ---- the security routes, with a valid proof ------------------------------------------------------
# Without a proof every generated request stops at the proof check (401), and the parsers behind
# it (times, cursors, targets, reasons) are never reached. Here each generated request carries a
# fresh proof of the security team, bound to that very request (chalicelib/admin_auth.py).

SECURITY_EXAMPLES = int(os.environ.get("FUZZ_SECURITY_EXAMPLES", os.environ.get("FUZZ_EXAMPLES", "25")))
SECURITY_OPERATIONS = ("audit_search", "audit_show", "revoke", "lift")
security_schema = schema.include(operation_id_regex=f"^({'|'.join(SECURITY_OPERATIONS)})$")


def _bound_proof(case, creds, server_id):
    """X-Broker-Proof for exactly what `requests` will send for this case."""
    from chalicelib.admin_auth import request_binding
    from tests.service.security_helpers import proof_header

    path = case.path.format(**{k: str(v) for k, v in (case.path_parameters or {}).items()})
    params = {}
    for name, value in (case.query or {}).items():
        values = value if isinstance(value, list) else [value]
        params[name] = [str(v) for v in values if v is not None]
    body = b""
    if case.method.upper() in ("POST", "DELETE") and not isinstance(case.body, type(None)) \
            and type(case.body).__name__ != "NotSet":
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    import secrets

    return proof_header(creds, server_id, bound=request_binding(case.method, path, params, body,
                                                                  secrets.token_hex(16)),
                        when=__import__("datetime").datetime.now(__import__("datetime").timezone.utc))


@pytest.fixture(scope="session")
def security_team(local_broker):
    return local_broker.stack.assume("security-team", "fuzz")


@security_schema.parametrize()
@settings(max_examples=SECURITY_EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=list(HealthCheck))
def test_the_security_routes_keep_their_promises_with_a_valid_proof(case, served_description, security_team):
    from devstack import SERVER_ID

    case.headers = dict(case.headers or {}, **{"X-Broker-Proof": _bound_proof(case, security_team, SERVER_ID)})
    response = case.call(base_url=served_description, timeout=60)
    case.validate_response(response, checks=[c for c in CHECKS if c is not openapi_checks.negative_data_rejection])
    if response.status_code == 401:  # a valid proof: refused only when the request broke its binding
        assert json.loads(response.content)["error"]["code"] == "invalid_proof"
