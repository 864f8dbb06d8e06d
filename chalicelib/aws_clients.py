"""The broker's AWS clients: botocore's, with the timeouts and retries chosen here, once.

``aws_client_factory(settings)`` returns ``make(service, region=None, **credentials)``
(credentials: a reader role's ``aws_access_key_id``, ``aws_secret_access_key``,
``aws_session_token``). Every call the broker signs (DynamoDB, Secrets Manager, EC2, IAM,
ECS, STS AssumeRole, S3, SSM) goes through a client it makes. The caller's own signed
GetCallerIdentity is not one of them: it is the caller's request, forwarded as it was
signed (chalicelib/methods/aws/proof.py).

The settings, and why (docs/operations.md, "The broker's AWS calls"):

- one botocore session per build of the service (``new_session``);

- timeouts: connect 2 s, read 5 s; DynamoDB connect 1 s, read 2 s. DynamoDB answers in
  milliseconds, and a hanging table must not hold a request for 2 attempts x 5 s on each
  of its calls, past the Lambda timeout and API Gateway's 29 s;
- retries: botocore's "standard" mode, 2 attempts in all (one retry, with its jittered
  backoff and its retry quota): a login waits on a person's boot, not on a batch job,
  and a caller whose login failed with a 503 tries again itself;
- 20 pooled connections per client (the issuance pipeline reads several facts at once);
- a fixed User-Agent naming the broker.

An answer that is not AWS's (a captive portal's page, an empty 200 from a proxy) parses,
in botocore, as an answer with nothing in it: "no such instance", "no tags", "not
quarantined". Every AWS answer carries a request ID, so one without is refused here
(``NotAnAwsAnswer``, a 503 naming the backend) before any code reads it.

The Lambda runtime's botocore serves the function (the zip pins none: the runtime's is
the one AWS keeps patched for its own endpoints); requirements-dev.txt pins the version
the tests run.
"""

import platform

CONNECT_TIMEOUT, READ_TIMEOUT = 2, 5
DYNAMODB_CONNECT_TIMEOUT, DYNAMODB_READ_TIMEOUT = 1, 2
MAX_ATTEMPTS = 2
POOL_CONNECTIONS = 20


class NotAnAwsAnswer(Exception):
    """A 2xx answer without the request ID every AWS answer carries: not AWS's answer."""

    def __init__(self, operation):
        super().__init__(f"{operation}: the answer has no AWS request ID (not an AWS answer)")


def _require_request_id(http_response, parsed, model, **_):
    """botocore's after-call event: an answer without a request ID is no answer."""
    if http_response is None or not 200 <= http_response.status_code < 300:
        return  # errors are botocore's ClientError, read by chalicelib/aws_calls.py
    metadata = parsed.get("ResponseMetadata") if isinstance(parsed, dict) else None
    if not (metadata or {}).get("RequestId"):
        raise NotAnAwsAnswer(model.name)


def new_session():
    """A botocore session for one build of the service (chalicelib/backends.py builds one per
    process in Lambda): its loader caches the service models and endpoint rules for every
    client it makes, a second region's or a reader role's included, and it resolves the
    broker's own credentials afresh, as a rebuilt service needs."""
    import botocore.session

    session = botocore.session.get_session()
    session.register("after-call", _require_request_id, unique_id="secret-zero-request-id")
    return session


def user_agent():
    import botocore

    return f"secret-zero-broker botocore/{botocore.__version__} Python/{platform.python_version()}"


def client_configs():
    """(the default config, DynamoDB's faster-failing config)."""
    import botocore.config

    config = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=POOL_CONNECTIONS,
        user_agent=user_agent(),
    )
    return config, config.merge(botocore.config.Config(connect_timeout=DYNAMODB_CONNECT_TIMEOUT,
                                                       read_timeout=DYNAMODB_READ_TIMEOUT))


def aws_client_factory(settings, session=None):
    """make(service, region=None, **credentials) -> a botocore client of the broker's own
    credentials, or of the given ones (a reader role's)."""
    session = session or new_session()
    config, fast = client_configs()

    def make(service, region=None, **credentials):
        return session.create_client(service, region_name=region or settings.aws_region,
                                     endpoint_url=settings.aws_endpoint_url,
                                     config=fast if service == "dynamodb" else config, **credentials)

    return make
