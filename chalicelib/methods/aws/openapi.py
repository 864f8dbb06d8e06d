"""The AWS login route's OpenAPI description (chalicelib/openapi.py builds the spec from
every method's)."""

import base64

# app.py routes /v1/credentials/aws itself (older clients; any method has /v1/credentials/{method})
LITERAL_PATH = True
SCHEMA = "AwsLogin"
SUMMARY = "Exchange a signed sts:GetCallerIdentity request for wrapped AppRole credentials"
DESCRIPTION = ("The fields and encodings of Vault's aws auth method `iam` login. The "
               "X-Vault-AWS-IAM-Server-ID header must carry the broker's server ID and be signed.")
REFUSALS = (" (signature rejected by STS, wrong body, URL not an allowed STS endpoint, server ID, "
            "X-Amz-Date skew, ...)")
_B64 = {"type": "string", "format": "byte"}


def _b64(text):
    return base64.b64encode(text.encode()).decode()


# Well-formed but not genuine (an old date, a made-up signature): refused with 401, as it must be.
EXAMPLE = {
    "role": "web",
    "iam_http_request_method": "POST",
    "iam_request_url": _b64("https://sts.amazonaws.com/"),
    "iam_request_body": _b64("Action=GetCallerIdentity&Version=2011-06-15"),
    "iam_request_headers": _b64(
        '{"Host": ["sts.amazonaws.com"], "X-Amz-Date": ["20240101T000000Z"],'
        ' "Content-Type": ["application/x-www-form-urlencoded; charset=utf-8"],'
        ' "X-Vault-AWS-IAM-Server-ID": ["broker.example.com"],'
        ' "Authorization": ["AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEEXAMPLE00/20240101/us-east-1/sts/aws4_request,'
        ' SignedHeaders=content-type;host;x-amz-date;x-vault-aws-iam-server-id, Signature=' + "0" * 64 + '"]}'),
}


def schema(role):
    """The login body's schema; `role` is the broker's schema of the `role` field."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "iam_http_request_method", "iam_request_url", "iam_request_body",
                     "iam_request_headers"],
        "example": EXAMPLE,
        "properties": {
            "role": role,
            "iam_http_request_method": {"type": "string", "maxLength": 16, "example": "POST",
                                        "description": "Must be POST."},
            "iam_request_url": dict(_B64, description="base64 of the signed URL, e.g. https://sts.amazonaws.com/"),
            "iam_request_body": dict(_B64, description="base64 of Action=GetCallerIdentity&Version=2011-06-15"),
            "iam_request_headers": dict(_B64, description=(
                "base64 of a JSON object: header name -> string or [string] (at most 32 headers)")),
            "ecs_task_arn": {"type": "string", "maxLength": 512, "description": (
                "Optional, from inside an ECS task: its task ARN (task metadata endpoint v4). The "
                "broker honours it only when its ID is the session name and DescribeTasks finds the "
                "task RUNNING with the caller's role as its task role.")},
        },
    }
