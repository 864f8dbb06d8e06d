"""A lean client of one AWS service: sign, send through the broker's own HTTP pools,
retry what botocore's standard mode retries, and raise what botocore would.

Same face as a botocore client for the operations the broker calls
(`client.get_item(TableName=..., ...)` returns the parsed answer), so the stores,
readers and `aws_calls` don't know which one they hold. The answers of the JSON
protocols (DynamoDB, Secrets Manager, ECS) are AWS's JSON as it is; the query
protocols' XML (EC2, IAM, STS) is read by the parsers in query.py into botocore's
shapes for the fields the broker reads.

Behaviour kept from the botocore clients of aws_clients.py (issue 14's next step):
- timeouts: connect 2 s / read 5 s, DynamoDB 1 s / 2 s; and (beyond botocore) the whole
  answer must be in by connect + 2 x read from the request's start, however slowly it
  drips (http_pool.py);
- 2 attempts: a connection failure or timeout, HTTP 500/502/503/504, a throttling or
  transient error code is sent once more after a random wait of up to 1 s (botocore's
  standard mode: the same codes, the same jittered backoff);
- TransactWriteItems carries a ClientRequestToken (botocore fills it in), so that a
  transaction sent again after a lost answer is idempotent in DynamoDB;
- DynamoDB's x-amz-crc32 is checked; a mismatch is retried like a transient error;
- errors: `AwsError` with `.response["Error"]["Code"]` and the modelled fields
  (CancellationReasons) at the top of `.response`, as botocore's ClientError;
  no answer at all: `AwsConnectionError` naming the failure (never a secret).

Stricter than botocore where a wrong answer would read as a right one (red team,
tests/unit/test_lean_aws_attacks.py): a 2xx is read only when it is the operation's own
answer (a JSON object; the XML element <OperationResponse>, with the fields the broker
needs), else it is unreadable (not sent again); an error's message and code never carry
the token, the secret key or the signature.
"""

import json
import random
import time
import zlib

from ..http_pool import HttpError, ascii_digits
from . import query
from ..ids import uuid4
from .sigv4 import sign_post

_THROTTLED = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException"})
_TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                              # modelled as retryable (DynamoDB's multi-Region strongly consistent
                              # tables): botocore's ModeledRetryableChecker sends it again
                              "ReplicatedWriteConflictException"})
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
MAX_ATTEMPTS = 2
MAX_ANSWER_BYTES = 4 << 20

# service -> (JSON target prefix, JSON protocol version, operations)
JSON_SERVICES = {
    "dynamodb": ("DynamoDB_20120810", "1.0", (
        "get_item", "batch_get_item", "put_item", "update_item", "delete_item", "query", "transact_write_items",
        "transact_get_items", "describe_table")),
    "secretsmanager": ("secretsmanager", "1.1", ("get_secret_value",)),
    "ecs": ("AmazonEC2ContainerServiceV20141113", "1.1", ("describe_tasks", "describe_task_definition")),
}
SERVICES = frozenset(JSON_SERVICES) | frozenset(query.SERVICES)


class AwsError(Exception):
    """AWS answered with an error: `.response` as botocore's ClientError has it."""

    def __init__(self, response, operation):
        self.response = response
        self.operation_name = operation
        error = response.get("Error", {})
        super().__init__(f"An error occurred ({error.get('Code')}) when calling the {operation} operation: "
                         f"{error.get('Message') or ''}".rstrip(": "))


class AwsConnectionError(Exception):
    """No usable answer: connection refused, timed out, cut, or unreadable."""

    def __init__(self, kind, operation):
        super().__init__(f"{operation}: {kind}")
        self.kind = kind


def _operation_name(snake):
    return "".join(part.capitalize() for part in snake.split("_"))


class LeanClient:
    def __init__(self, service, *, host, scheme, signing_region, credentials, pools, fast=False,
                 sleep=time.sleep):
        self.service = service
        self._host = host
        self._url = f"{scheme}://{host}/"
        self._region = signing_region
        self._credentials = credentials
        self._pools = pools
        self._timeouts = (1.0, 2.0) if fast else (2.0, 5.0)
        self._sleep = sleep
        self._observers = []
        if service in JSON_SERVICES:
            prefix, version, operations = JSON_SERVICES[service]
            self._content_type = f"application/x-amz-json-{version}"
            self._target_prefix = prefix
        else:
            operations = tuple(query.SERVICES[service])
        for snake in operations:
            setattr(self, snake, self._operation(snake))

    def add_observer(self, observer):
        """observer(service, operation) before each call (tests/service/test_least_privilege.py
        records what the broker calls, as botocore's before-call event lets it)."""
        self._observers.append(observer)

    def close(self):
        """Drop the pooled connections (chalicelib/snapstart.py, after a restore)."""
        self._pools.close()

    def _operation(self, snake):
        operation = _operation_name(snake)
        if self.service in JSON_SERVICES:
            def call(**params):
                if operation == "TransactWriteItems" and "ClientRequestToken" not in params:
                    params["ClientRequestToken"] = uuid4()  # idempotent when sent again
                body = json.dumps(params, separators=(",", ":")).encode("utf-8")
                headers = {"content-type": self._content_type,
                           "x-amz-target": f"{self._target_prefix}.{operation}"}
                return self._send(operation, body, headers, self._json_answer)
        else:
            serialize, parse = query.SERVICES[self.service][snake]

            def call(**params):
                body = serialize(**params).encode("utf-8")
                headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
                return self._send(operation, body, headers, lambda answer: query.answer(answer, operation, parse))
        call.__name__ = snake
        call.__qualname__ = f"{self.service}.{snake}"
        return call

    def _send(self, operation, body, headers, read):
        for observer in self._observers:
            observer(self.service, operation)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            credentials = self._credentials.get()
            signed = sign_post(host=self._host, headers=headers, body=body, service=self.service,
                               region=self._region, credentials=credentials)
            signed["user-agent"] = "secret-zero-broker"
            try:
                answer = self._pools.request("POST", self._url, body=body, headers=signed,
                                             connect_timeout=self._timeouts[0], read_timeout=self._timeouts[1],
                                             max_bytes=MAX_ANSWER_BYTES)
            except HttpError as e:
                if attempt < MAX_ATTEMPTS:
                    self._backoff()
                    continue
                raise AwsConnectionError(e.kind, operation) from None
            if len(answer.data) > MAX_ANSWER_BYTES:
                raise AwsConnectionError("oversized answer", operation)
            outcome = read(answer) if not self._crc32_mismatch(answer) else _Retry("CRC32 mismatch")
            if isinstance(outcome, _Unreadable):
                raise AwsConnectionError(outcome.why, operation)  # not sent again: a write may have landed
            if isinstance(outcome, _Retry):
                if attempt < MAX_ATTEMPTS:
                    self._backoff()
                    continue
                raise AwsConnectionError(outcome.why, operation)
            if isinstance(outcome, dict) and "Error" in outcome and answer.status >= 300:
                outcome.setdefault("ResponseMetadata", {})["RetryAttempts"] = attempt - 1
                code = outcome["Error"].get("Code")
                if attempt < MAX_ATTEMPTS and (code in _THROTTLED or code in _TRANSIENT_CODES
                                               or answer.status in _TRANSIENT_STATUS or answer.status == 429):
                    self._backoff()
                    continue
                raise AwsError(_without_secrets(outcome, credentials, signed["authorization"]), operation)
            return outcome
        raise AssertionError("unreachable")

    def _backoff(self):
        self._sleep(random.random())  # botocore standard mode: rand(0, 1) x 2^0 s before the 2nd attempt

    @staticmethod
    def _crc32_mismatch(answer):
        expected = answer.headers.get("x-amz-crc32")
        if expected is None:
            return False
        # a CRC that is no 32-bit decimal ("²" passes str.isdigit() and int() raises; 5,000
        # digits raise too): not DynamoDB's answer, so a mismatch (retried), never a 500
        if not ascii_digits(expected, longest=10):
            return True
        return int(expected) != zlib.crc32(answer.data) & 0xFFFFFFFF

    @staticmethod
    def _json_answer(answer):
        try:
            doc = json.loads(answer.data) if answer.data else None
        except (ValueError, RecursionError):  # RecursionError: a hostile body nested 100,000 deep
            doc = None
        if answer.status < 300:
            # Every answer of these APIs is a JSON object, `{}` at least: an empty 200 (a
            # proxy's) must not read as an answer without Item.
            if not isinstance(doc, dict):
                return _Unreadable(f"HTTP {answer.status} with an unreadable body")
            doc["ResponseMetadata"] = _metadata(answer)
            return doc
        doc = doc if isinstance(doc, dict) else {}
        kind = doc.get("__type")
        kind = kind if isinstance(kind, str) and kind else answer.headers.get("x-amzn-ErrorType") or ""
        code = kind.split(":")[0].rsplit("#", 1)[-1]
        message = doc.get("message") or doc.get("Message") or ""
        message = message if isinstance(message, str) else ""
        response = {k: v for k, v in doc.items() if k not in ("__type", "message", "Message")}
        response["Error"] = {"Code": code or str(answer.status), "Message": message}
        response["ResponseMetadata"] = _metadata(answer)
        return response


def _without_secrets(response, credentials, authorization):
    """`response` with the session token, the secret key and the signature cut out of its
    message and code: AWS's SignatureDoesNotMatch echoes the canonical request (the token
    is a signed header); the message reaches the exception's text, the code the audit
    record and the logs (aws_calls), whatever a wrong endpoint puts there. The code is
    also cut to a length no AWS code reaches (an audit record stays small)."""
    error = response.get("Error", {})
    signature = authorization.rsplit("Signature=", 1)[-1]
    for field, limit in (("Message", None), ("Code", 128)):
        text = error.get(field)
        if text:
            for secret in (credentials.token, credentials.secret_key, signature):
                if secret:
                    text = text.replace(secret, "<redacted>")
            error[field] = text[:limit]
    return response


class _Retry:
    def __init__(self, why):
        self.why = why


class _Unreadable(_Retry):
    pass


def _metadata(answer):
    return {"HTTPStatusCode": answer.status,
            "RequestId": answer.headers.get("x-amzn-RequestId") or answer.headers.get("x-amz-request-id") or ""}
