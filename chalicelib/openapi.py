"""The OpenAPI 3 description of the broker's HTTP API, served at GET /v1/openapi.json.

Written by hand beside the routes (app.py); tests/unit/test_openapi.py checks that
it validates and that it describes exactly the routes and methods the app has,
and Schemathesis (tests/fuzz) checks every answer of the running broker against it.
Keep it in chalicelib/ so that it ships in the Lambda zip.
"""

import copy

from . import methods as _methods

VERSION = "1"

_ROLE = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
         "description": "The Vault AppRole asked for.", "example": "web"}


def _error(codes, description):
    return {
        "description": description,
        "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
        "content": {"application/json": {"schema": {
            "allOf": [{"$ref": "#/components/schemas/Error"}],
            "properties": {"error": {"type": "object", "properties": {"code": {"type": "string", "enum": codes}}}},
        }}},
    }


def _unavailable(description):
    response = _error(["unavailable"], description)
    response["headers"]["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return response


def _rate_limited(description):
    response = _error(["rate_limited"], description)
    response["headers"]["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return response


def _credentials(method, summary, description, body_ref, extra_401="", parameters=None):
    return {
        "post": {
            "operationId": f"credentials_{method}",
            **({"parameters": parameters} if parameters else {}),
            "tags": ["credentials"],
            "summary": summary,
            "description": description,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": body_ref}}}},
            "responses": {
                "200": {
                    "description": "Granted: a wrapped role ID and a wrapped single-use secret ID.",
                    "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Credentials"}}},
                },
                "400": _error(["invalid_request"],
                              "Malformed JSON, missing or unknown fields, bad encodings, a body over 64 KiB."),
                "401": _error(["invalid_proof", "proof_replayed"],
                              "The proof failed a check (the message names it)" + extra_401
                              + ", or it was used before (proof_replayed)."),
                "403": _error(["not_authorized", "quarantined"],
                              "The identity is proven but no rule grants it the role (not_authorized), "
                              "or the caller is quarantined by a revocation (quarantined)."),
                "429": _rate_limited("Too many requests from this identity (or for this role) in the rules "
                                     "file's window; the refusal is audited. Try again after Retry-After seconds."),
                "503": _unavailable("A backend (Vault, STS, Google, EC2/IAM, DynamoDB, Secrets Manager) "
                                    "is unavailable, or the audit record could not be written: nothing "
                                    "was issued. Try again after Retry-After seconds."),
            },
        }
    }


SPEC = {
    "openapi": "3.0.3",
    "info": {
        "title": "secret-zero broker",
        "version": VERSION,
        "description": (
            "Gives a freshly booted machine its first Vault credentials in exchange for a proof of its "
            "cloud identity (a signed AWS sts:GetCallerIdentity request, or a Google-signed ID token). "
            "Every error has the shape {\"error\": {\"code\", \"message\"}, \"request_id\"}; "
            "no input yields a 500."
        ),
    },
    "tags": [
        {"name": "credentials", "description": "Identity proofs in, wrapped AppRole credentials out."},
        {"name": "operations", "description": "Health and this description."},
    ],
    "paths": {
        # a method's own path where app.py keeps one (the first methods', for older clients);
        # every method is served by /v1/credentials/{method}
        **{f"/v1/credentials/{name}": _credentials(name, body.SUMMARY, body.DESCRIPTION,
                                                   f"#/components/schemas/{body.SCHEMA}", body.REFUSALS)
           for name, body in _methods.openapi_bodies().items() if getattr(body, "LITERAL_PATH", False)},
        "/v1/credentials/{method}": _credentials(
            "by_method", "Exchange any proof method's proof for wrapped AppRole credentials",
            "One path for every proof method of the broker (chalicelib/methods/): the body is that "
            "method's login body. An unknown method is 400 invalid_request.",
            "#/components/schemas/AnyLogin",
            " (each method's checks)",
            parameters=[{"name": "method", "in": "path", "required": True,
                         "schema": {"type": "string", "enum": list(_methods.names())},
                         "description": "The proof method: " + " or ".join(_methods.names()) + "."}]),
        "/v1/health": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "Whether Vault and the audit store answer",
                "responses": {
                    "200": {
                        "description": "Vault is reachable and unsealed, the audit table answers.",
                        "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                    "503": {
                        "description": "A check failed (its value says what is wrong), or the broker "
                                       "is misconfigured (the error shape).",
                        "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"},
                                    "Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"$ref": "#/components/schemas/Health"},
                            {"$ref": "#/components/schemas/Error"},
                        ]}}},
                    },
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This description (OpenAPI 3)",
                "responses": {
                    "200": {"description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object",
                                                                         "required": ["openapi", "paths"]}}}},
                },
            }
        },
    },
    "components": {
        "headers": {
            "RetryAfter": {"description": "Seconds to wait before trying again.", "required": True,
                           "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "CacheControl": {"description": "Answers are never cached.",
                             "schema": {"type": "string", "enum": ["no-store"]}},
        },
        "schemas": {
            **{body.SCHEMA: body.schema(_ROLE) for body in _methods.openapi_bodies().values()},
            "AnyLogin": {"oneOf": [{"$ref": f"#/components/schemas/{body.SCHEMA}"}
                                   for body in _methods.openapi_bodies().values()]},
            "Wrap": {
                "type": "object",
                "additionalProperties": False,
                "required": ["token", "accessor", "ttl", "creation_time", "creation_path"],
                "properties": {
                    "token": {"type": "string", "description": "The wrapping token: unwrap it once."},
                    "accessor": {"type": "string"},
                    "ttl": {"type": "integer", "minimum": 0},
                    "creation_time": {"type": "string"},
                    "creation_path": {"type": "string",
                                      "description": "Check it with sys/wrapping/lookup before unwrapping."},
                },
            },
            "Credentials": {
                "type": "object",
                "additionalProperties": False,
                "required": ["request_id", "role", "vault_addr", "role_id_wrap", "secret_id_wrap"],
                "properties": {
                    "request_id": {"type": "string"},
                    "role": {"type": "string"},
                    "vault_addr": {"type": "string"},
                    "vault_namespace": {"type": "string", "nullable": True,
                                        "description": "The Vault namespace the wrapping tokens were minted "
                                                       "in; null for the root namespace."},
                    "role_id_wrap": {"$ref": "#/components/schemas/Wrap"},
                    "secret_id_wrap": {"$ref": "#/components/schemas/Wrap"},
                    "token_registration_key": {
                        "type": "string",
                        "description": "A secret for this caller only: it registers the accessor of the Vault "
                                       "token logged in with this issuance (POST /v1/tokens, registration_key). "
                                       "Keep it out of logs; the audit record holds its SHA-256."},
                },
            },
            "Health": {
                "type": "object",
                "additionalProperties": False,
                "required": ["status", "checks"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "string"},
                               "example": {"vault": "ok", "audit_store": "ok"}},
                },
            },
            "Error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["error", "request_id"],
                "properties": {
                    "error": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    },
                    "request_id": {"type": "string", "nullable": True,
                                   "description": "The audit record's ID; null only when the broker is misconfigured."},
                },
            },
        },
    },
}


# The security team's routes and the incident reports (chalicelib/openapi_security.py).
from . import openapi_security as _security  # noqa: E402

SPEC["tags"].append(_security.TAG)
SPEC["paths"].update(_security.paths(_error, _unavailable))
SPEC["components"]["schemas"].update(_security.schemas(
    [SPEC["components"]["schemas"][body.SCHEMA] for body in _methods.openapi_bodies().values()]))


def document():
    """A fresh copy of the description (callers may change it)."""
    return copy.deepcopy(SPEC)
