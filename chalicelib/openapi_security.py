"""The OpenAPI description of the security team's routes and of the incident reports
(merged into chalicelib/openapi.py's SPEC). See chalicelib/security/."""

from .audit_query import DEFAULT_LIMIT, MAX_LIMIT, PARAMS
from .security.inputs import MAX_REASON

_UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
         "example": "5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d"}
_REASON = {"type": "string", "minLength": 1, "maxLength": MAX_REASON}
_B64 = {"type": "string", "format": "byte"}

TAG = {"name": "security", "description": (
    "For the security team: the audit trail, revocation and quarantine. IAM authorization in the "
    "deployed stages, and always a signed GetCallerIdentity proof in X-Broker-Proof whose principal "
    "matches [security] principal_arns of the rules file. Every call is itself an audit record.")}

PROOF_HEADER = {
    "name": "X-Broker-Proof", "in": "header", "required": True,
    "description": ("base64 of a JSON object with the four iam_* fields of a login (a signed "
                    "sts:GetCallerIdentity with this broker's server ID); each proof is accepted once."),
    "schema": {"type": "string", "maxLength": 8192},
}

_FILTERS = {
    "since": ("ISO 8601 time (or a date, UTC midnight); default: the retention period before until", None),
    "until": ("ISO 8601 time; default now", None),
    "principal": ("an STS session ARN (that session), an IAM role/user ARN (all its sessions) or a "
                  "service account email", 2048),
    "instance": ("an EC2 or GCE instance ID", 128),
    "role": ("an AppRole name", 128),
    "outcome": ("comma-separated: issued, denied, error, incident, admin, registration", 64),
    "method": ("comma-separated: aws, gcp", 16),
    "account": ("an AWS account ID or a GCP project ID", 128),
    "next": ("the cursor of the previous page", 2048),
}


def _query_parameters():
    params = []
    for name in PARAMS:
        if name == "limit":
            params.append({"name": "limit", "in": "query", "required": False,
                           "description": f"records per page (default {DEFAULT_LIMIT})",
                           "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}})
            continue
        description, max_length = _FILTERS[name]
        schema = {"type": "string", "minLength": 1}
        if max_length:
            schema["maxLength"] = max_length
        params.append({"name": name, "in": "query", "required": False, "description": description,
                       "schema": schema})
    return params


def _ok(description, schema_ref):
    return {"description": description,
            "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
            "content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def _admin_errors(error, unavailable, *, not_found=False):
    responses = {
        "400": error(["invalid_request"], "A malformed parameter, body or X-Broker-Proof header."),
        "401": error(["invalid_proof", "proof_replayed"],
                     "No proof, a proof that fails a check, or one used before."),
        "403": error(["not_authorized"], "The proven principal is not in [security] principal_arns."),
        "503": unavailable("A backend is unavailable, or the audit record of this call could not be written."),
    }
    if not_found:
        responses["404"] = error(["not_found"], "No such record or revocation.")
    return responses


def paths(error, unavailable):
    """The path items, built with openapi.py's error-response helpers."""
    def admin(op_id, summary, ok, *, parameters=(), body=None, not_found=False, description=None):
        op = {"operationId": op_id, "tags": ["security"], "summary": summary,
              "parameters": [PROOF_HEADER, *parameters],
              "responses": {"200": ok, **_admin_errors(error, unavailable, not_found=not_found)}}
        if description:
            op["description"] = description
        if body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}}
        return op

    request_id = {"name": "request_id", "in": "path", "required": True, "schema": _UUID}
    revocation_id = {"name": "revocation_id", "in": "path", "required": True, "schema": _UUID}
    incident_errors = {
        "400": error(["invalid_request"], "Malformed JSON, missing or unknown fields."),
        "401": error(["invalid_proof", "proof_replayed"], "The proof failed a check, or was used before."),
        "403": error(["not_authorized"], "That request ID was not issued to the proven caller."),
        "429": error(["rate_limited"], "Too many reports from this caller; try again after Retry-After."),
        "503": unavailable("A backend is unavailable, or the incident's audit record could not be written."),
    }
    incident_errors["429"]["headers"]["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return {
        "/v1/audit/events": {"get": admin(
            "audit_search", "Search the audit trail, newest first",
            _ok("A page of records; `next` is the cursor of the following page, or null.",
                "#/components/schemas/AuditPage"),
            parameters=_query_parameters(),
            description=("Filters combine with AND. The most selective of instance, principal, role "
                         "chooses the index; the time range bounds it; the rest filter. A page may hold "
                         "fewer records than `limit` (even none) and still have a `next`."))},
        "/v1/audit/events/{request_id}": {"get": admin(
            "audit_show", "One audit record", _ok("The record.", "#/components/schemas/AuditEvent"),
            parameters=[request_id], not_found=True)},
        "/v1/revocations": {"post": admin(
            "revoke", "Destroy what was issued to a target, and quarantine it",
            _ok("What was destroyed and the quarantine in force.", "#/components/schemas/Revocation"),
            body="#/components/schemas/RevocationRequest", not_found=True,
            description=("The target is quarantined first (403 quarantined until the quarantine ends or is "
                         "lifted); then every issuance to it that may still be in use is reached: its "
                         "wrapping tokens revoked, its secret ID destroyed, every Vault token logged in with "
                         "it revoked (registered ones, then a scan); a second sweep catches issuances that "
                         "were in flight. `complete` is true only when nothing reached can still be used."))},
        "/v1/revocations/{revocation_id}": {"delete": admin(
            "lift", "Lift a revocation's quarantine",
            _ok("The quarantine entries removed.", "#/components/schemas/Lifted"),
            parameters=[revocation_id], not_found=True)},
        "/v1/tokens": {"post": {
            "operationId": "register_token", "tags": ["security"],
            "summary": "Register the accessor of the Vault token logged in with an issuance (by its client)",
            "description": ("The caller shows the issuance is its own, by the issuance answer's "
                            "token_registration_key (registration_key) or by proving again the identity "
                            "the credentials were issued to (a fresh proof); a revocation of the issuance "
                            "then revokes that token at once (after checking the token's metadata names "
                            "the issuance) instead of finding it by a scan."),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/TokenRegistration"}}}},
            "responses": {"200": _ok("Registered.", "#/components/schemas/TokenRegistered"), **incident_errors},
        }},
        "/v1/incidents": {"post": {
            "operationId": "report_incident", "tags": ["security"],
            "summary": "Report a possible interception of an issuance (by the client that received it)",
            "description": ("The caller proves again the identity the credentials were issued to (a fresh "
                            "AWS proof, or a Google ID token); the issued secret ID is destroyed at once "
                            "and an `incident` audit record links to the issuance."),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/IncidentReport"}}}},
            "responses": {"200": _ok("Recorded; `secret_id` says what became of the secret ID.",
                                     "#/components/schemas/Incident"), **incident_errors},
        }},
    }


_RECORD = {"type": "object", "additionalProperties": True, "required": ["request_id", "time", "outcome"],
           "properties": {"request_id": {"type": "string"}, "time": {"type": "string"},
                          "outcome": {"type": "string"}}}
_DESTROYED = {"type": "array", "items": {"type": "object", "properties": {
    "request_id": {"type": "string"}, "role": {"type": "string", "nullable": True},
    "secret_id_accessor": {"type": "string", "nullable": True},
    "issued_at": {"type": "string", "nullable": True}, "found_by": {"type": "string"},
    "wrapping_tokens": {"type": "object", "description": "role_id / secret_id: revoked, used or expired, ..."},
    "tokens": {"description": "[{accessor, found_by, result}], or why tokens were not reached",
               "oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "string"}]},
    "result": {"type": "string", "description": "the secret ID: destroyed, gone, expired, nothing to destroy, "
                                                "failed: ..."}}}}

SCHEMAS = {
    "AuditEvent": {"type": "object", "additionalProperties": False, "required": ["event", "request_id"],
                   "properties": {"event": _RECORD, "request_id": {"type": "string"}}},
    "AuditPage": {"type": "object", "additionalProperties": False,
                  "required": ["events", "count", "next", "request_id"],
                  "properties": {"events": {"type": "array", "items": _RECORD}, "count": {"type": "integer"},
                                 "next": {"type": "string", "nullable": True},
                                 "request_id": {"type": "string"}}},
    "RevocationRequest": {
        "type": "object", "additionalProperties": False, "required": ["reason"],
        "description": "Exactly one of request_id, instance, principal.",
        "properties": {"request_id": _UUID, "instance": {"type": "string", "maxLength": 128},
                       "principal": {"type": "string", "maxLength": 2048}, "reason": _REASON,
                       "quarantine": {"type": "string", "pattern": "^[0-9]{1,6}[smhd]?$", "default": "24h",
                                      "description": "how long the target is refused; 0: not at all"},
                       "force": {"type": "boolean", "default": False,
                                 "description": "quarantine a target that matches no issuance and no known "
                                                "principal"}}},
    "Revocation": {"type": "object", "additionalProperties": False,
                   "required": ["revocation_id", "target", "reason", "destroyed", "quarantine", "complete",
                                "request_id"],
                   "properties": {"revocation_id": {"type": "string"}, "target": {"type": "object"},
                                  "reason": {"type": "string"}, "destroyed": _DESTROYED,
                                  "quarantine": {"type": "array", "items": {"type": "object"}},
                                  "covers": {"type": "array", "items": {"type": "string"}},
                                  "swept_at": {"type": "string"},
                                  "problems": {"type": "array", "items": {"type": "string"}},
                                  "complete": {"type": "boolean"}, "request_id": {"type": "string"}}},
    "Lifted": {"type": "object", "additionalProperties": False,
               "required": ["revocation_id", "target", "lifted", "still_quarantined", "request_id"],
               "properties": {"revocation_id": {"type": "string"}, "target": {"type": "object"},
                              "lifted": {"type": "array", "items": {"type": "object"}},
                              "still_quarantined": {"type": "array", "items": {"type": "object"}},
                              "request_id": {"type": "string"}}},
    "IncidentReport": {
        "type": "object", "additionalProperties": False, "required": ["request_id"],
        "description": ("The issuance's request_id and a fresh proof: the fields of a login body of the "
                        "issuance's method but role (AwsLogin's iam_* fields and optional ecs_task_arn, or "
                        "GcpLogin's jwt)."),
        "properties": {"request_id": _UUID, "reason": _REASON,
                       "accessor": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}}},
    "TokenRegistration": {
        "type": "object", "additionalProperties": False, "required": ["request_id", "accessor"],
        "description": ("The issuance's request_id, the token's accessor and either its registration_key "
                        "alone or a fresh proof: the fields of a login body of the issuance's method but role "
                        "(AwsLogin's iam_* fields and optional ecs_task_arn, or GcpLogin's jwt)."),
        "properties": {"request_id": _UUID, "accessor": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                       "registration_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$",
                                            "description": "the issuance answer's token_registration_key"}}},
    "TokenRegistered": {"type": "object", "additionalProperties": False,
                        "required": ["related_request_id", "accessor", "registered", "request_id"],
                        "properties": {"related_request_id": {"type": "string"}, "accessor": {"type": "string"},
                                       "registered": {"type": "boolean"}, "request_id": {"type": "string"}}},
    "Incident": {"type": "object", "additionalProperties": False,
                 "required": ["related_request_id", "secret_id", "request_id"],
                 "properties": {"related_request_id": {"type": "string"}, "secret_id": {"type": "string"},
                                "request_id": {"type": "string"}}},
}


def schemas(login_schemas):
    """SCHEMAS, the bodies that prove their caller again carrying every login schema's
    properties but role (`login_schemas`: name -> schema, e.g. AwsLogin, GcpLogin), so that
    they describe what a login accepts, from the same place."""
    proof = {}
    for schema in login_schemas:
        proof.update({k: v for k, v in schema["properties"].items() if k != "role"})
    out = {name: dict(schema) for name, schema in SCHEMAS.items()}
    for name in ("IncidentReport", "TokenRegistration"):
        out[name]["properties"] = {**SCHEMAS[name]["properties"], **proof}
    return out
