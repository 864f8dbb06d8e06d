"""The GCP login route's OpenAPI description (chalicelib/openapi.py builds the spec from
every method's)."""

# app.py routes /v1/credentials/gcp itself (older clients; any method has /v1/credentials/{method})
LITERAL_PATH = True
SCHEMA = "GcpLogin"
SUMMARY = "Exchange a Google-signed ID token for wrapped AppRole credentials"
DESCRIPTION = ("An RS256 ID token signed by Google (a GCE instance identity token with format=full, "
               "or a service account's ID token) whose audience is this broker.")
REFUSALS = " (alg, kid, signature, issuer, audience, age, ...)"
EXAMPLE = {
    "role": "web",
    "jwt": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImV4YW1wbGUiLCJ0eXAiOiJKV1QifQ"  # {"alg":"RS256","kid":"example","typ":"JWT"}
           ".eyJpc3MiOiJodHRwczovL2FjY291bnRzLmdvb2dsZS5jb20iLCJhdWQiOiJodHRwczovL2Jyb2tlci5leGFtcGxlLmNvbSJ9"
           ".c2lnbmF0dXJl",
}


def schema(role):
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "jwt"],
        "example": EXAMPLE,
        "properties": {
            "role": role,
            "jwt": {"type": "string", "maxLength": 8192, "pattern": "^[\\x00-\\x7f]*$",
                    "description": "The ID token (header.claims.signature, base64url)."},
        },
    }
