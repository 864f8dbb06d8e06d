"""What the broker knows about a verified GCP caller: plain data, no I/O (shared with the client)."""

from __future__ import annotations  # X | None in class bodies: the client runs on Python 3.9


from dataclasses import dataclass, field, fields

from ..base import Entity, plain


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
class GcpFacts:
    """A caller proven by a Google-signed ID token: a GCE instance or a service account."""

    email: str  # the service account the token was minted for
    project_id: str | None  # the instance's project, or the service account's project
    instance: GceInstanceFacts | None = None
    # A GCE token's instance claim does not hold (gone, recreated, stopped...): refused.
    claim_error: str | None = None
    claimed_instance: str | None = None  # the instance ID a GCE token names
    method: str = "gcp"

    @property
    def principal(self):
        return self.email

    @property
    def canonical_principal(self):
        return self.email

    @property
    def account(self):
        return self.project_id

    @property
    def entity(self):
        return Entity("gce-instance", self.instance.instance_id) if self.instance else None

    def to_dict(self):
        return plain(self)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ValueError("facts must be a JSON object")
        data = dict(data)
        if "instance_claim_error" in data:  # audit records written before the rename
            data.setdefault("claim_error", data.pop("instance_claim_error"))
        instance = data.pop("instance", None)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fact fields: {', '.join(sorted(unknown))}")
        if data.get("method", "gcp") != "gcp":
            raise ValueError("these facts are not a GCP caller's")
        if "email" not in data:
            raise ValueError("GCP facts need at least email (the token's service account)")
        data.setdefault("project_id", None)
        try:
            if instance is not None:
                instance = dict(instance)
                instance["service_accounts"] = tuple(instance.get("service_accounts", ()))
                instance = GceInstanceFacts(**instance)
            return cls(instance=instance, **data)
        except TypeError as e:
            raise ValueError(f"facts are incomplete or have unknown fields: {e}") from None
