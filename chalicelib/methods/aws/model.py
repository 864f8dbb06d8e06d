"""What the broker knows about a verified AWS caller: plain data, no I/O.

Every field was read by the broker itself (STS, EC2, IAM, ECS) in the caller's own
account, never taken from the caller's request. Shared with the client
(`broker policy explain`), so it imports nothing but the ARN parser.
"""

from __future__ import annotations  # X | None in class bodies: the client runs on Python 3.9


from dataclasses import dataclass, field, fields

from ..base import Entity, plain
from .arn import parse_principal_arn


@dataclass(frozen=True)
class InstanceFacts:
    instance_id: str
    region: str
    state: str
    instance_profile_arn: str | None = None
    tags: dict = field(default_factory=dict)
    # IMDSv2 only (HttpTokens required) or the metadata service off: an SSRF can't read
    # the role's credentials from it. None: unknown (an old facts file).
    imdsv2_required: bool | None = None


@dataclass(frozen=True)
class TaskFacts:
    task_id: str
    task_arn: str
    region: str
    cluster: str  # the cluster's name
    service: str | None  # from the task's group "service:NAME"; None for a standalone task
    family: str
    revision: int
    launch_type: str | None
    last_status: str
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AwsFacts:
    account: str
    principal_arn: str  # as STS returned it
    canonical_arn: str  # IAM ARN of the user or role (no path)
    principal_type: str  # "user", "role" or "assumed-role"
    role_name: str | None = None
    session_name: str | None = None
    instance: InstanceFacts | None = None
    task: TaskFacts | None = None
    role_tags: dict = field(default_factory=dict)
    # The session claims a machine and the claim does not hold (no such instance, not
    # running, another role's task...). Such a caller is refused whatever the rules say.
    claim_error: str | None = None
    # The claimed machine was found, but principals other than EC2/ECS may assume its
    # role, so anyone of them could have named a session after it: only rules that opt
    # in (allow_shared_role_trust) honour the claim.
    claim_trust_error: str | None = None
    # The caller's account has no reader role: nothing about it could be read.
    unreadable_account: bool = False
    method: str = "aws"

    @property
    def principal(self):
        return self.principal_arn

    @property
    def canonical_principal(self):
        return self.canonical_arn

    @property
    def entity(self):
        if self.instance is not None:
            return Entity("ec2-instance", self.instance.instance_id)
        if self.task is not None:
            return Entity("ecs-task", self.task.task_id)
        return None

    def to_dict(self):
        return plain(self)

    @classmethod
    def from_dict(cls, data):
        """Facts from a dict as `to_dict` (or an audit record's `facts`) writes them;
        a facts file may name only `principal_arn` and what it wants to try."""
        if not isinstance(data, dict):
            raise ValueError("facts must be a JSON object")
        data = dict(data)
        if "instance_claim_error" in data:  # audit records written before tasks existed
            data.setdefault("claim_error", data.pop("instance_claim_error"))
        instance, task = data.pop("instance", None), data.pop("task", None)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fact fields: {', '.join(sorted(unknown))}")
        if data.get("method", "aws") != "aws":
            raise ValueError("these facts are not an AWS caller's")
        if "principal_arn" in data:
            arn = parse_principal_arn(data["principal_arn"])
            data.setdefault("account", arn.account)
            data.setdefault("canonical_arn", arn.canonical_arn)
            data.setdefault("principal_type", arn.kind)
            data.setdefault("role_name", arn.role_name)
            data.setdefault("session_name", arn.session_name)
        try:
            instance = InstanceFacts(**instance) if instance is not None else None
            task = TaskFacts(**task) if task is not None else None
            return cls(instance=instance, task=task, **data)
        except TypeError as e:
            raise ValueError(f"facts are incomplete or have unknown fields: {e}") from None
