"""The secret-zero broker's HTTP API (AWS Chalice: API Gateway + Lambda).

Thin on purpose: each route hands the raw request to chalicelib's service and
maps its typed errors to JSON. The backends are built once per process:

- in Lambda (AWS_LAMBDA_FUNCTION_NAME or AWS_EXECUTION_ENV set), at import: Lambda's
  init pays for the service, its clients and the Vault login instead of the first
  request, and with SnapStart the snapshot holds them (chalicelib/snapstart.py
  refreshes what must not outlive it). A bad configuration there is logged, naming the
  variable, and every request answers 503 until it is fixed: the import never fails;
- anywhere else (tests, `chalice package`, `chalice local`), on the first request.
"""

import logging
import os
import threading

from chalice import Chalice, IAMAuthorizer, Response

from chalicelib.errors import BrokerError, ConfigError, Unavailable

def in_lambda(env=os.environ):
    """Running in the Lambda runtime, not `chalice local`, the tests or Chalice's CLI (which
    imports this file to package it). Read before Chalice() is made: it sets
    AWS_EXECUTION_ENV in every process ("AWS_Lambda aws-chalice/..."); the runtime sets
    AWS_Lambda_python3.12 and the like."""
    if env.get("AWS_CHALICE_CLI_MODE"):
        return False
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda_"))


_IN_LAMBDA = in_lambda()


class _Broker(Chalice):
    """`chalice local` serves each request on its own thread, but Chalice keeps the request
    in one attribute of the app: two requests at once could read each other's body (a
    revocation racing issuances did). Here each thread sees its own. Lambda runs one
    request per process at a time, so nothing changes there."""

    _requests = threading.local()

    @property
    def current_request(self):
        return getattr(self._requests, "request", None)

    @current_request.setter
    def current_request(self, value):
        self._requests.request = value


app = _Broker(app_name="secret-zero-broker")
app.log.setLevel(logging.INFO)

_service = None
_service_lock = threading.Lock()


def get_service():
    """The process's BrokerService; a bad configuration is logged with the variable it names."""
    if _service is None:
        _build()
    return _service


def _build(at_init=False):
    """Build the service once (the modules are imported here, not at module level, so that
    importing app.py outside Lambda stays chalice's own cost). At init, also warm it up
    and register what a SnapStart restore must refresh (chalicelib/snapstart.py)."""
    global _service
    with _service_lock:
        if _service is not None:
            return
        from chalicelib import snapstart
        from chalicelib.backends import build_runtime
        from chalicelib.config import Settings
        from chalicelib.jsonlog import get_logger, log
        from chalicelib.policy import RulesError

        try:
            runtime = build_runtime(Settings.from_env(), log_in_early=at_init)
        except (ConfigError, RulesError) as e:
            log(get_logger(), logging.CRITICAL, "broker misconfigured", problem=str(e))
            raise Unavailable("the broker is misconfigured; see its log", backend="configuration",
                              retry_after=60) from None
        if at_init:
            problems = runtime.warm_up()
            if problems:  # the first request tries again
                log(get_logger(), logging.WARNING, "warm-up at init incomplete", problems=problems)
            snapstart.after_restore(runtime.after_restore)
        _service = runtime.service


def _init_in_lambda():
    """Lambda's init: build now. Nothing raised here may fail the import (Lambda would
    retry the init on every request and log a stack trace without the variable's name):
    a misconfiguration is logged by _build, anything else here; get_service() builds
    again on the next request and answers 503 (or the error) there."""
    try:
        from chalicelib import snapstart

        snapstart.register_with_runtime(app.log)  # a no-op outside a SnapStart-capable runtime
        _build(at_init=True)
    except Exception as e:  # noqa: BLE001 - an import must not crash; the request path raises it again
        if getattr(e, "backend", None) == "configuration":
            return  # logged by _build, with the variable's name
        from chalicelib.jsonlog import get_logger, log

        log(get_logger(), logging.ERROR, "building the service at init failed; retried on the first request",
            problem=getattr(e, "detail", None) or type(e).__name__)


def _json(status, body, headers=None):
    return Response(body=body, status_code=status,
                    headers={"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})})


def _error(error):
    retry_after = getattr(error, "retry_after", None)  # 503 unavailable, 429 rate_limited
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    body = {"error": {"code": error.code, "message": error.message},
            "request_id": getattr(error, "request_id", None)}
    return _json(error.status, body, headers)


def _request_context():
    context = app.current_request.context or {}
    return {
        "source_ip": (context.get("identity") or {}).get("sourceIp"),
        "api_request_id": context.get("requestId"),
    }


def _issue(method):
    try:
        body = get_service().issue(method, app.current_request.raw_body, **_request_context())
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/credentials/{method}", methods=["POST"], content_types=["*/*"])
def credentials(method):
    """Every proof method (chalicelib/methods/): aws, gcp, ..."""
    return _issue(method)


# The first two paths, kept as they were (API Gateway prefers a literal path to {method}).
@app.route("/v1/credentials/aws", methods=["POST"], content_types=["*/*"])
def credentials_aws():
    return _issue("aws")


@app.route("/v1/credentials/gcp", methods=["POST"], content_types=["*/*"])
def credentials_gcp():
    return _issue("gcp")


@app.route("/v1/health", methods=["GET"], content_types=["*/*"])  # a GET has no body: any Content-Type
def health():
    try:
        healthy, checks = get_service().health()
    except BrokerError as e:
        return _error(e)
    status = "ok" if healthy else "unavailable"
    return _json(200 if healthy else 503, {"status": status, "checks": checks},
                 None if healthy else {"Retry-After": "5"})


# ---- the security team's routes (chalicelib/security/) ---------------------------------------
# IAM authorization in the deployed stages; the broker also verifies the caller's signed proof
# (X-Broker-Proof) against [security] in the rules file, since `chalice local` enforces no IAM.
_security_team = IAMAuthorizer()


def _security(action, *args):
    request = app.current_request
    params = request.query_params
    # What the caller's proof must be bound to (chalicelib/admin_auth.py): this very request.
    bound = {"method": request.method, "path": request.path.format(**(request.uri_params or {})),
             "params": {k: params.getlist(k) for k in params} if params else {}, "body": request.raw_body or b""}
    context = dict(_request_context(), headers=request.headers, request=bound,
                   iam_caller_arn=((request.context or {}).get("identity") or {}).get("userArn"))
    try:
        body = getattr(get_service().security, action)(*args, **context)
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/audit/events", methods=["GET"], authorizer=_security_team, content_types=["*/*"])
def audit_events():
    params = app.current_request.query_params
    return _security("search", {k: params.getlist(k) for k in params} if params else {})


@app.route("/v1/audit/events/{request_id}", methods=["GET"], authorizer=_security_team, content_types=["*/*"])
def audit_event(request_id):
    return _security("show", request_id)


@app.route("/v1/revocations", methods=["POST"], authorizer=_security_team, content_types=["*/*"])
def revocations():
    return _security("revoke", app.current_request.raw_body)


@app.route("/v1/revocations/{revocation_id}", methods=["DELETE"], authorizer=_security_team,
           content_types=["*/*"])
def revocation(revocation_id):
    return _security("lift", revocation_id, app.current_request.raw_body)


@app.route("/v1/incidents", methods=["POST"], content_types=["*/*"])
def incidents():
    """A client reports a possible interception of its issuance (its own fresh proof in the body)."""
    try:
        body = get_service().security.report_incident(app.current_request.raw_body, **_request_context())
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/tokens", methods=["POST"], content_types=["*/*"])
def tokens():
    """A client registers the accessor of the Vault token it logged in with (its own fresh proof in the body)."""
    try:
        body = get_service().security.register_token(app.current_request.raw_body, **_request_context())
    except BrokerError as e:
        return _error(e)
    return _json(200, body)


@app.route("/v1/openapi.json", methods=["GET"], content_types=["*/*"])
def openapi():
    from chalicelib.openapi import document

    return _json(200, document())


# Last, once every route is registered: in Lambda, build at init (see the top).
if _IN_LAMBDA:
    _init_in_lambda()
