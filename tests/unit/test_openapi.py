"""The OpenAPI description (chalicelib/openapi.py) is valid and describes exactly the app's routes."""

import json

import pytest
from chalice.test import Client
from openapi_spec_validator import validate

import app as broker_app
from chalicelib.openapi import SPEC, document

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def described():
    return {(path, method.upper()) for path, item in SPEC["paths"].items() for method in item if method in METHODS}


def routed():
    return {(path, method) for path, methods in broker_app.app.routes.items() for method in methods}


def test_the_description_is_valid_openapi_3():
    validate(document())


def test_every_route_is_described_and_nothing_else():
    assert routed() - described() == set(), "routes missing from chalicelib/openapi.py"
    assert described() - routed() == set(), "chalicelib/openapi.py describes routes the app does not have"


def test_operation_ids_are_unique_and_path_parameters_declared():
    ids = [op["operationId"] for item in SPEC["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))
    for path, item in SPEC["paths"].items():
        names = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        for method, op in item.items():
            if method not in METHODS:
                continue
            params = op.get("parameters", []) + item.get("parameters", [])
            declared = {p["name"] for p in params if p.get("in") == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters {names} vs {declared}"


def test_every_error_status_uses_the_error_shape():
    error_ref = "#/components/schemas/Error"
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for status, response in op["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                text = json.dumps(response["content"]["application/json"]["schema"])
                assert error_ref in text, f"{method.upper()} {path} {status} does not use the error shape"
                if status in ("429", "503"):
                    assert "Retry-After" in response.get("headers", {}), f"{method.upper()} {path} {status}"


def test_the_route_serves_the_description():
    with Client(broker_app.app) as client:
        response = client.http.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == SPEC


@pytest.mark.parametrize("schema", ["AwsLogin", "GcpLogin"])
def test_request_schemas_match_the_parsers_fields(schema):
    from chalicelib.methods.aws.request import AWS_FIELDS, OPTIONAL_FIELDS

    required, optional = {"AwsLogin": (set(AWS_FIELDS), set(OPTIONAL_FIELDS)), "GcpLogin": ({"role", "jwt"}, set())}[schema]
    component = SPEC["components"]["schemas"][schema]
    assert set(component["properties"]) == required | optional
    assert set(component["required"]) == required
    assert component["additionalProperties"] is False


def test_described_limits_are_the_parsers_limits():
    from chalicelib import policy as login_request
    from chalicelib.methods.gcp import proof as gcp_proof

    schemas = SPEC["components"]["schemas"]
    for name in ("AwsLogin", "GcpLogin"):
        assert schemas[name]["properties"]["role"]["pattern"] == login_request.ROLE_NAME.pattern
    assert schemas["GcpLogin"]["properties"]["jwt"]["maxLength"] == gcp_proof.MAX_TOKEN_BYTES


def test_every_error_the_issuance_can_raise_is_described():
    from chalicelib import errors

    raised = [errors.InvalidRequest, errors.InvalidProof, errors.ProofReplayed, errors.NotAuthorized,
              errors.Quarantined, errors.RateLimited, errors.Unavailable]
    for path in ("/v1/credentials/aws", "/v1/credentials/gcp"):
        responses = SPEC["paths"][path]["post"]["responses"]
        for error in raised:
            described = responses.get(str(error.status))
            assert described, f"{path}: status {error.status} ({error.code}) is not described"
            schema = described["content"]["application/json"]["schema"]
            codes = schema["properties"]["error"]["properties"]["code"]["enum"]
            assert error.code in codes, f"{path}: {error.status} does not list {error.code}"


@pytest.mark.parametrize("schema, route_fields", [("IncidentReport", {"request_id", "reason", "accessor"}),
                                                  ("TokenRegistration", {"request_id", "accessor", "registration_key"})])
def test_bodies_that_prove_their_caller_again_take_a_logins_fields_but_role(schema, route_fields):
    """What POST /v1/incidents and /v1/tokens accept beside their own fields is what a login of any
    method accepts but role (its proof and its optional claims, e.g. ecs_task_arn), as the routes parse it."""
    from chalicelib.methods.aws.request import AWS_FIELDS, OPTIONAL_FIELDS
    from chalicelib.security.own_issuance import login_fields, proof_fields

    logins = (set(AWS_FIELDS) | set(OPTIONAL_FIELDS) | {"role", "jwt"}) - {"role"}
    assert set(proof_fields()) == logins
    assert set(login_fields("aws")) == (set(AWS_FIELDS) | set(OPTIONAL_FIELDS)) - {"role"}
    component = SPEC["components"]["schemas"][schema]
    assert set(component["properties"]) == route_fields | logins
    assert component["additionalProperties"] is False
    for name in logins:  # described as the login describes it (limits and all)
        login = "GcpLogin" if name == "jwt" else "AwsLogin"
        assert component["properties"][name] == SPEC["components"]["schemas"][login]["properties"][name]
