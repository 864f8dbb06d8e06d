"""What every proof method hands the rest of the broker: one verified-caller record.

A method (chalicelib/methods/<name>/) parses its login body, checks the proof
offline, verifies it with its cloud, and returns a `VerifiedCaller`. Then it reads
facts about that caller with the broker's own credentials and returns them as an
object with the `CallerFacts` shape below. Everything downstream (replay,
quarantine, rate limits, audit, incidents, explain) reads these fields and never
guesses the cloud from the data again.

Like SPIRE's node attestors: one plugin per proof type, one result type, one
registry line (chalicelib/methods/__init__.py).
"""

from __future__ import annotations  # X | None in class bodies: the client runs on Python 3.9

from dataclasses import dataclass, fields, is_dataclass
from typing import Protocol



def plain(value):
    """Facts as nested dicts and lists (what `to_dict` gives): dataclasses.asdict's result
    without its deep copy of every leaf, which cost ~1 ms per issuance."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value


# The budgets a caller counts (the rules' [rate_limits] per_identity and per_principal).
# The method says which a caller counts and under which key (its `budget_keys`): the
# budget stores take the keys as they are and never parse a principal.
IDENTITY_BUDGET = "identity"  # one machine, else one session, else one principal
PRINCIPAL_BUDGET = "principal"  # every session of one principal that claims no machine


@dataclass(frozen=True)
class Entity:
    """The machine a caller claims to be (EC2 instance, ECS task, GCE instance).

    From the verified proof it is only a *claim* (the session name, the token's
    instance claims); the facts step decides whether the claim holds.
    """

    kind: str  # "ec2-instance", "ecs-task", "gce-instance"
    id: str  # instance ID, task ID, GCE instance ID


@dataclass(frozen=True)
class VerifiedCaller:
    """Who the cloud says signed the proof. Built by a method's `verify`."""

    method: str  # its name in the registry (chalicelib/methods/__init__.py)
    principal: str  # as the cloud signed it: STS ARN, service account email
    # what the audit trail's by-principal index keys on: IAM role/user ARN (no path, no
    # session); the email as it is
    canonical_principal: str
    account: str | None  # AWS account ID or GCP project ID, when the proof names one
    proof_hash: str  # SHA-256 of the proof's signature: the replay key (not a secret)
    valid_until: float  # epoch seconds after which the proof is stale anyway
    claimed: Entity | None = None  # the machine the proof claims, not yet verified
    # ((budget, key), ...): the budgets this caller counts, derived by the method (AWS:
    # methods/aws/proof.py, GCP: methods/gcp/proof.py). Empty: the identity budget alone.
    budget_keys: tuple = ()
    # ((kind, value), ...): the quarantine entries that refuse this caller, derived by its
    # method (methods/<name>/identity.py): its own (its machine, its session: checked in the
    # admission transaction) and those many callers share (a role, a service account: read
    # beside it). The quarantine list takes them as they are and never parses a principal.
    quarantine_own: tuple = ()
    quarantine_shared: tuple = ()

    @property
    def budgets(self):
        """((budget, key), ...) this caller counts, in the admission transaction."""
        return self.budget_keys or ((IDENTITY_BUDGET, self.identity_key),)

    @property
    def identity_key(self):
        """What the per-identity rate limit counts: the claimed machine, else the principal.

        SECURITY: the budget is counted before the facts step checks the claim, and anyone
        who may assume any role, in any account, can name a session after someone else's
        instance or task. So a claimed machine's key also names the canonical principal
        (account and role): a session of another role or account counts its own budget,
        never the real machine's (whose sessions all share one)."""
        if self.claimed is not None:
            return f"{self.claimed.kind}:{self.canonical_principal}:{self.claimed.id}"
        return f"principal:{self.principal}"


class CallerFacts(Protocol):
    """What a method's facts object offers the pipeline (each method has its own dataclass)."""

    caller: VerifiedCaller
    entity: Entity | None  # the claimed machine once the claim holds, else None
    claim_error: str | None  # why the claim does not hold; such a caller is refused

    def to_dict(self) -> dict: ...


class ProofMethod:
    """A method assembled from its parts: how to parse its login body, its verifier
    (offline checks + the cloud), and its facts reader. Each method's `build` makes one."""

    def __init__(self, name, parse, verifier, facts_reader, **extra):
        self.name = name
        self.parse = parse  # raw body -> login request (InvalidRequest)
        self._verifier = verifier
        self._facts = facts_reader
        self.__dict__.update(extra)  # e.g. the AWS method's `readers`

    def proof_hash(self, login):
        return self._verifier.proof_hash(login)

    def verify(self, login):
        return self._verifier.verify(login)

    def read_facts(self, caller, login):
        return self._facts.read(caller, login)


class Method(Protocol):
    """One proof method. `proof_hash` must need no network: the pipeline looks the
    replay record up before `verify` calls the cloud."""

    name: str

    def parse(self, raw_body): ...  # -> a login request with `.role`; InvalidRequest

    def proof_hash(self, login) -> str: ...  # offline checks; InvalidProof

    def verify(self, login) -> VerifiedCaller: ...  # the cloud round trip; InvalidProof / Unavailable

    def read_facts(self, caller, login) -> CallerFacts: ...  # Unavailable on backend failures
