"""The secret-zero broker's HTTP API (AWS Chalice: API Gateway + Lambda).

Thin on purpose: each route hands the raw request to chalicelib's service and
maps its typed errors to JSON. The backends are built once per process, on the
first request (not at import, so `chalice package` and the tests can import this).
"""

import logging
import os
import threading

from chalice import Chalice, Response

from chalicelib.config import Settings
from chalicelib.errors import BrokerError, ConfigError, Unavailable
from chalicelib.jsonlog import get_logger, log
from chalicelib.rules import RulesError

app = Chalice(app_name="secret-zero-broker")
app.log.setLevel(logging.INFO)

_service = None
_service_lock = threading.Lock()


def get_service():
    """The process's BrokerService; a bad configuration is logged with the variable it names."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                from chalicelib.backends import build_service

                try:
                    _service = build_service(Settings.from_env())
                except (ConfigError, RulesError) as e:
                    log(get_logger(), logging.CRITICAL, "broker misconfigured", problem=str(e))
                    raise Unavailable("the broker is misconfigured; see its log", backend="configuration",
                                      retry_after=60) from None
    return _service


def _json(status, body, headers=None):
    return Response(body=body, status_code=status,
                    headers={"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})})


def _error(error):
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Unavailable) else {}
    body = {"error": {"code": error.code, "message": error.message},
            "request_id": getattr(error, "request_id", None)}
    return _json(error.status, body, headers)


def _request_context():
    context = app.current_request.context or {}
    return {
        "source_ip": (context.get("identity") or {}).get("sourceIp"),
        "api_request_id": context.get("requestId"),
    }


@app.route("/v1/credentials/aws", methods=["POST"], content_types=["*/*"])
def credentials_aws():
    try:
        body = get_service().issue_aws(app.current_request.raw_body, **_request_context())
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/credentials/gcp", methods=["POST"], content_types=["*/*"])
def credentials_gcp():
    try:
        body = get_service().issue_gcp(app.current_request.raw_body, **_request_context())
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/health", methods=["GET"], content_types=["*/*"])  # a GET has no body: any Content-Type
def health():
    try:
        healthy, checks = get_service().health()
    except BrokerError as e:
        return _error(e)
    status = "ok" if healthy else "unavailable"
    return _json(200 if healthy else 503, {"status": status, "checks": checks},
                 None if healthy else {"Retry-After": "5"})


@app.route("/v1/openapi.json", methods=["GET"], content_types=["*/*"])
def openapi():
    from chalicelib.openapi import document

    return _json(200, document())


# Configuration is validated at import in the Lambda runtime, so a bad one fails the
# cold start with a message naming the variable (Chalice's CLI imports app.py too).
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and not os.environ.get("AWS_CHALICE_CLI_MODE"):
    Settings.from_env()
