"""What the broker knows about a caller after verifying its proof: plain data, no I/O.

Every field was obtained by the broker itself (from STS, EC2, IAM), never taken
from the caller's request.
"""

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class InstanceFacts:
    instance_id: str
    region: str
    state: str
    instance_profile_arn: str | None = None
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CallerFacts:
    method: str  # "aws"
    account: str
    principal_arn: str  # as STS returned it
    canonical_arn: str  # IAM ARN of the user or role (no path)
    principal_type: str  # "user", "role" or "assumed-role"
    role_name: str | None = None
    session_name: str | None = None
    instance: InstanceFacts | None = None
    role_tags: dict = field(default_factory=dict)
    # Set when the session name claims an EC2 instance and the claim does not hold
    # (no such instance, not running, or the role is not in its instance profile).
    # Such a caller is refused whatever the rules say.
    instance_claim_error: str | None = None

    @property
    def principal(self):
        return self.principal_arn

    @property
    def instance_id(self):
        return self.instance.instance_id if self.instance else None

    @property
    def claimed_instance(self):
        """The instance the session name claims, when it is one (verified or not)."""
        from .arn import INSTANCE_ID

        return self.session_name if self.session_name and INSTANCE_ID.match(self.session_name) else None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Build facts from a dict (as `to_dict` writes it); used by `broker policy explain`."""
        if not isinstance(data, dict):
            raise ValueError("facts must be a JSON object")
        data = dict(data)
        instance = data.pop("instance", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fact fields: {', '.join(sorted(unknown))}")
        if instance is not None:
            instance = InstanceFacts(**instance)
        data.setdefault("method", "aws")
        if "principal_arn" in data:
            # Fill in what the ARN determines, so a facts file may name only the ARN.
            from .arn import parse_principal_arn

            arn = parse_principal_arn(data["principal_arn"])
            data.setdefault("account", arn.account)
            data.setdefault("canonical_arn", arn.canonical_arn)
            data.setdefault("principal_type", arn.kind)
            data.setdefault("role_name", arn.role_name)
            data.setdefault("session_name", arn.session_name)
        return cls(instance=instance, **data)


@dataclass(frozen=True)
class GceInstanceFacts:
    instance_id: str
    name: str
    project_id: str
    project_number: str
    zone: str
    region: str
    status: str
    service_accounts: tuple = ()
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GcpCallerFacts:
    """A caller proven by a Google-signed ID token: a GCE instance or a service account."""

    email: str  # the service account the token was minted for
    project_id: str | None  # the instance's project, or the service account's project
    instance: GceInstanceFacts | None = None
    # Set when a GCE token's instance claim does not hold (gone, recreated, stopped...).
    instance_claim_error: str | None = None
    claimed_instance: str | None = None  # the instance ID a GCE token names
    method: str = "gcp"

    @property
    def principal(self):
        return self.email

    @property
    def account(self):
        return self.project_id

    @property
    def instance_id(self):
        return self.instance.instance_id if self.instance else None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        instance = data.pop("instance", None)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fact fields: {', '.join(sorted(unknown))}")
        if instance is not None:
            instance = dict(instance)
            instance["service_accounts"] = tuple(instance.get("service_accounts", ()))
            instance = GceInstanceFacts(**instance)
        return cls(instance=instance, **data)


def facts_from_dict(data):
    """Facts of either kind from a dict (its `method` says which); for `broker policy explain`."""
    if not isinstance(data, dict):
        raise ValueError("facts must be a JSON object")
    if data.get("method", "aws") == "gcp":
        return GcpCallerFacts.from_dict(data)
    return CallerFacts.from_dict(data)
