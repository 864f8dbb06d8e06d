"""Parse the principal ARNs that STS GetCallerIdentity returns."""

from __future__ import annotations  # X | None in class bodies: the client runs on Python 3.9

import functools
import re
from dataclasses import dataclass

from ...errors import InvalidProof

# arn:PARTITION:SERVICE::ACCOUNT:RESOURCE (IAM and STS ARNs have no region)
_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):(iam|sts)::(\d{12}):(.+)$")
_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
_PATH_SEGMENT = re.compile(r"^[\x21-\x7e]{1,512}$")
INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


@dataclass(frozen=True)
class PrincipalArn:
    partition: str
    account: str
    kind: str  # "user", "role" or "assumed-role"
    name: str  # user or role name
    session_name: str | None = None

    @property
    def canonical_arn(self):
        """The IAM ARN of the principal: a role's ARN for an assumed-role session.

        The path of the user or role is not part of an STS ARN, so the canonical
        ARN is built without it (as Vault does for bound_iam_principal_arn).
        """
        if self.kind == "user":
            return f"arn:{self.partition}:iam::{self.account}:user/{self.name}"
        return f"arn:{self.partition}:iam::{self.account}:role/{self.name}"

    @property
    def role_name(self):
        return None if self.kind == "user" else self.name

    @property
    def session_task_id(self):
        """The ECS task ID when the session name is one (ECS names task-role sessions so)."""
        if self.kind == "assumed-role" and self.session_name and TASK_ID.match(self.session_name):
            return self.session_name
        return None

    @property
    def session_instance_id(self):
        """The EC2 instance ID when the session name is one (EC2 names sessions so)."""
        if self.kind == "assumed-role" and self.session_name and INSTANCE_ID.match(self.session_name):
            return self.session_name
        return None


def parse_principal_arn(arn):
    """Parse an IAM user, IAM role or STS assumed-role ARN; anything else is refused."""
    if not isinstance(arn, str):
        raise InvalidProof("STS returned no principal ARN")
    return _parse_principal_arn(arn)


@functools.lru_cache(maxsize=1024)  # one issuance parses its caller's ARN a dozen times; PrincipalArn is frozen
def _parse_principal_arn(arn):
    match = _ARN.match(arn)
    if not match:
        raise InvalidProof("principal ARN is not an IAM or STS principal")
    partition, service, account, resource = match.groups()
    parts = resource.split("/")
    if service == "sts":
        if parts[0] != "assumed-role" or len(parts) != 3:
            raise InvalidProof("STS principal is not an assumed-role session")
        _, role, session = parts
        if not _NAME.match(role) or not _NAME.match(session):
            raise InvalidProof("assumed-role ARN has an invalid role or session name")
        return PrincipalArn(partition, account, "assumed-role", role, session)
    kind = parts[0]
    if kind not in ("user", "role") or len(parts) < 2:
        raise InvalidProof("IAM principal is neither a user nor a role")
    name = parts[-1]
    if not _NAME.match(name) or not all(_PATH_SEGMENT.match(p) for p in parts[1:-1]):
        raise InvalidProof("IAM principal ARN has an invalid name or path")
    return PrincipalArn(partition, account, kind, name)


# ECS task IDs are 32 hex characters; moto (and some older tasks) use UUIDs: accept both,
# since DescribeTasks decides whether the task exists.
TASK_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
# arn:PARTITION:ecs:REGION:ACCOUNT:task/CLUSTER/ID (the long ARN format; the short
# task/ID one names no cluster, so DescribeTasks could not be asked)
_TASK_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):ecs:([a-z]{2}(?:-[a-z]+)+-\d):(\d{12}):task/"
                       r"([A-Za-z0-9_-]{1,255})/([0-9a-f-]{32,36})$")


@dataclass(frozen=True)
class TaskArn:
    arn: str
    partition: str
    region: str
    account: str
    cluster: str
    task_id: str


def parse_task_arn(value):
    """A long-format ECS task ARN, or None when `value` is not one."""
    m = _TASK_ARN.match(value) if isinstance(value, str) else None
    if not m or not TASK_ID.match(m.group(5)):
        return None
    return TaskArn(value, *m.groups())
