"""Inside an ECS task: the task's ARN, from the task metadata endpoint (v4).

ECS names a task role's session after the task ID, so the broker can tell two tasks
of one role apart only by the task. Inside a task (``ECS_CONTAINER_METADATA_URI_V4``
is set by the ECS agent), the client reads ``GET $ECS_CONTAINER_METADATA_URI_V4/task``
and adds its ``TaskARN`` to the AWS login body as ``ecs_task_arn``. The broker
checks the claim itself (``ecs:DescribeTasks`` in the caller's account, the task's
role and session name): the ARN is a pointer, not a proof.

The task's credentials come from botocore's container credential provider
(``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` / ``_FULL_URI``), part of the default
chain the AWS proof signs with (broker/clouds/aws.py).

The endpoint is link-local (169.254.170.2): it is reached directly, never through a
proxy, never following a redirect, with a short timeout and a size cap. Whatever
goes wrong is a clear error (exit 3), never a traceback.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

from broker.errors import NoCredentialsError
from broker.http import CONNECTION_ERRORS, build_opener, describe_connection_error, request

METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
MAX_METADATA_BYTES = 256 * 1024  # a task with many containers is a few KiB
TIMEOUT = 2.0
ATTEMPTS = 3
# arn:aws:ecs:eu-west-1:123456789012:task/CLUSTER/ID; ECS task IDs are 32 hex characters,
# moto's are UUIDs: accept both shapes and let the broker's DescribeTasks decide.
TASK_ARN = re.compile(
    r"^arn:aws(?:-cn|-us-gov)?:ecs:[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:task/[A-Za-z0-9_-]{1,255}/"
    r"(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\Z"
)


class TaskMetadataError(NoCredentialsError):
    """The task metadata endpoint is set but gave no usable task ARN (exit 3, like a missing identity)."""


def metadata_uri(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``ECS_CONTAINER_METADATA_URI_V4`` when this process runs in an ECS task, else None."""
    value = (environ if environ is not None else os.environ).get(METADATA_ENV, "").strip()
    return value or None


def signs_as_task_role(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Will the proof be signed with the task role's credentials? Only then is the session
    named after the task: a container that signs with other credentials (keys in its
    environment, or the EC2 instance's role on an ECS-on-EC2 host) must not claim the task,
    or the broker refuses it (the session name would not be the task ID)."""
    env = environ if environ is not None else os.environ
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return False  # botocore's chain takes these before the container provider
    return bool(env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))


def task_arn(uri: str, *, timeout: float = TIMEOUT, attempts: int = ATTEMPTS,
             sleep=None) -> str:
    """The ``TaskARN`` of ``GET {uri}/task``; TaskMetadataError when the endpoint fails or
    answers something else than a task ARN."""
    import time

    sleep = sleep or time.sleep
    where = f"the ECS task metadata endpoint ({METADATA_ENV}={uri})"
    if not uri.startswith(("http://", "https://")):
        raise TaskMetadataError(f"{where} is not an http URL")
    opener = build_opener(url=uri, proxies=False)
    problem = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            result = request(opener, "GET", uri.rstrip("/") + "/task", timeout=timeout,
                             headers={"Accept": "application/json"}, max_bytes=MAX_METADATA_BYTES)
        except CONNECTION_ERRORS as exc:
            problem = f"did not answer ({describe_connection_error(exc)})"
        except ValueError as exc:  # a malformed URL
            raise TaskMetadataError(f"{where} is not a usable URL: {exc}") from None
        else:
            if result.status == 200:
                return _arn_from(result.json(), where)
            problem = f"answered HTTP {result.status}"
            if result.status < 500 and result.status != 429:
                break  # a refusal: asking again will not help
        if attempt < attempts:
            sleep(0.5 * attempt)
    raise TaskMetadataError(f"{where} {problem}: cannot name this task to the broker")


def _arn_from(document, where: str) -> str:
    if not isinstance(document, dict):
        raise TaskMetadataError(f"{where} answered something else than a JSON object")
    arn = document.get("TaskARN")
    if not isinstance(arn, str) or not TASK_ARN.match(arn):
        shown = repr(arn)[:120] if isinstance(arn, str) else type(arn).__name__
        raise TaskMetadataError(f"{where} gave no valid TaskARN (got {shown}); expected "
                                "arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID")
    return arn
