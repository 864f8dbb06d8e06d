"""The issuance pipeline (chalicelib/pipeline/issuance.py BrokerService) on fakes: its
ordering, its rollback and its refusals, in milliseconds.

Everything that isn't pure is a fake: the proof method (a ProofMethod whose verify returns
the VerifiedCaller the test chose, whose facts are the AWS facts the test chose), the
minter (records what it mints and takes back, can fail), the stores (chalicelib/stores/
memory.py: the admission, the audit store, the quarantine list, the rate limits). The
rules engine is the real one, on a small rules text.

`TestIssuancePipeline` runs on the in-memory stores; `TestIssuancePipelineOnDynamoDB` runs
the same tests again on the stack's DynamoDB tables (the real Admission, AuditStore,
QuarantineList and RateLimitStore), as the Chalice workshop's TestDynamoDB reruns its
in-memory tests against DynamoDB. It is marked `stack`: `make test-fast` leaves it out.
"""

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from chalicelib.errors import BrokerError, Unavailable
from chalicelib.methods.aws.model import AwsFacts, InstanceFacts
from chalicelib.methods.base import Entity, ProofMethod, VerifiedCaller
from chalicelib.minter import Issued, Wrap
from chalicelib.pipeline.frame import AuditedRequests
from chalicelib.pipeline.issuance import BrokerService
from chalicelib.policy import parse_rules
from chalicelib.stores import memory
from chalicelib.stores.quarantine import quarantine_key

ACCOUNT = "123456789012"
RULES = f"""
version = 1
[rate_limits]
per_identity = "3/1h"
per_principal = "1/1h"

[[rule]]
name = "web-nodes"
role = "web"
[rule.aws]
accounts = ["{ACCOUNT}"]
principal_arns = ["arn:aws:iam::{ACCOUNT}:role/pipeline-*"]
require_instance = true
instance_tags = {{ "vault-role" = "web" }}

[[rule]]
name = "batch-sessions"
role = "batch"
[rule.aws]
accounts = ["{ACCOUNT}"]
principal_arns = ["arn:aws:iam::{ACCOUNT}:role/pipeline-*"]
"""


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---- the fakes --------------------------------------------------------------------------------


@dataclass
class Caller:
    """Who the fake method says signed a proof, and what the broker reads about it. Each
    caller has a role of its own (pipeline-<random>): its keys and budgets are its own on
    the shared stack too."""

    role_name: str = field(default_factory=lambda: unique("pipeline"))
    instance_id: str | None = field(default_factory=lambda: unique("i"))
    tags: dict = field(default_factory=lambda: {"vault-role": "web"})
    budget_keys: tuple = ()

    @property
    def canonical(self):
        return f"arn:aws:iam::{ACCOUNT}:role/{self.role_name}"

    @property
    def principal(self):
        return f"arn:aws:sts::{ACCOUNT}:assumed-role/{self.role_name}/{self.instance_id or 'session'}"

    def verified(self, proof_hash):
        from chalicelib.methods.aws.identity import quarantine_keys

        claimed = Entity("ec2-instance", self.instance_id) if self.instance_id else None
        own, shared = quarantine_keys(self.principal, self.instance_id, self.canonical)  # as the method derives them
        return VerifiedCaller(method="aws", principal=self.principal, canonical_principal=self.canonical,
                              account=ACCOUNT, proof_hash=proof_hash, valid_until=0, claimed=claimed,
                              budget_keys=self.budget_keys, quarantine_own=own, quarantine_shared=shared)

    def facts(self):
        instance = (InstanceFacts(self.instance_id, "us-east-1", "running", tags=dict(self.tags))
                    if self.instance_id else None)
        return AwsFacts(account=ACCOUNT, principal_arn=self.principal, canonical_arn=self.canonical,
                        principal_type="assumed-role", role_name=self.role_name,
                        session_name=self.instance_id or "session", instance=instance)


class FakeVerifier:
    """A proof is {"role": ..., "proof": ...}; the fake method knows the caller of each proof."""

    def __init__(self, events):
        self.callers = {}
        self.events = events

    def proof_hash(self, login):
        return hashlib.sha256(login.proof.encode()).hexdigest()

    def verify(self, login):
        self.events.append("verify")
        return self.callers[login.proof].verified(self.proof_hash(login))


class FakeFacts:
    def __init__(self, verifier):
        self._verifier = verifier

    def read(self, caller, login):
        return self._verifier.callers[login.proof].facts()


def parse_login(raw):
    doc = json.loads(raw)
    return SimpleNamespace(role=doc["role"], proof=doc["proof"])


class FakeMinter:
    """Mints wrapping tokens that are only names; records each mint and take-back; `fail`
    (a BrokerError) makes the next mints fail."""

    def __init__(self, events):
        self.minted, self.taken_back = [], []
        self.fail = None
        self.events = events

    def issue(self, role, issuance, metadata, source_ip=None):
        if self.fail is not None:
            raise self.fail
        n = uuid.uuid4().hex[:8]
        issued = Issued(role, Wrap(f"role-token-{n}", f"role-acc-{n}", issuance.wrap_ttl, "t", "auth/approle/role-id"),
                        Wrap(f"secret-token-{n}", f"secret-acc-{n}", issuance.wrap_ttl, "t", "auth/approle/secret-id"),
                        f"secret-id-acc-{n}")
        self.minted.append((issued, metadata))
        self.events.append("mint")
        return issued

    def take_back(self, issued):
        self.taken_back.append(issued)
        self.events.append("take_back")
        return []

    def health(self):
        return None


class RecordingAudit:
    """An audit store that notes each write in the events (and can fail, as an outage would)."""

    def __init__(self, store, events):
        self.store = store
        self.events = events
        self.fail = False

    def write(self, record):
        if self.fail:
            raise Unavailable("the audit store is unavailable", backend="audit store", detail="put_item timed out")
        self.store.write(record)
        self.events.append(("audit", record.request_id, record.outcome))

    def get(self, request_id):
        return self.store.get(request_id)

    def health(self):
        return self.store.health()


@dataclass
class Stores:
    """What the pipeline is built on: the in-memory fakes, or the stack's DynamoDB stores."""

    admission: object
    audit: object
    quarantine: object
    rate_limits: object


class World:
    def __init__(self, stores):
        self.events = []
        self.stores = stores
        self.verifier = FakeVerifier(self.events)
        self.minter = FakeMinter(self.events)
        self.audit = RecordingAudit(stores.audit, self.events)
        self.rules = parse_rules(RULES)
        method = ProofMethod("aws", parse_login, self.verifier, FakeFacts(self.verifier))
        settings = SimpleNamespace(vault_public_addr="https://vault.example", vault_namespace=None,
                                   issuance_window_seconds=30.0)
        logger = logging.getLogger("tests.pipeline")
        self.service = BrokerService(settings=settings, rules=self.rules, methods={"aws": lambda: method},
                                     admission=stores.admission, minter=self.minter,
                                     frame=AuditedRequests(self.audit, logger), logger=logger,
                                     rate_limits=stores.rate_limits, quarantine=stores.quarantine)

    def body(self, caller, role="web"):
        """A new proof of `caller`, as the body of its login."""
        proof = unique("proof")
        self.verifier.callers[proof] = caller
        return json.dumps({"role": role, "proof": proof})

    def issue(self, body):
        return self.service.issue("aws", body, source_ip="192.0.2.1")

    def refused(self, body):
        with pytest.raises(BrokerError) as refused:
            self.issue(body)
        return refused.value

    def record(self, request_id):
        return self.stores.audit.get(request_id)


# ---- the tests -----------------------------------------------------------------------------------


class TestIssuancePipeline:
    @pytest.fixture
    def world(self):
        quarantine = memory.MemoryQuarantineList()
        counters = memory.MemoryRateLimitStore()
        return World(Stores(admission=memory.MemoryAdmission(quarantine, counters), audit=memory.MemoryAuditStore(),
                            quarantine=quarantine, rate_limits=counters))

    def place(self, world, key):
        import time

        revocation_id = str(uuid.uuid4())
        world.stores.quarantine.place(key, revocation_id=revocation_id, until=int(time.time()) + 120,
                                      reason="test", by="sec")
        return revocation_id

    def test_an_issuance_is_recorded_before_it_is_answered(self, world):
        caller = Caller()
        answer = world.issue(world.body(caller))
        assert world.events == ["verify", "mint", ("audit", answer["request_id"], "issued")]
        (issued, metadata), = world.minter.minted
        assert metadata["request_id"] == answer["request_id"] and metadata["instance"] == caller.instance_id
        assert answer["secret_id_wrap"]["token"] == issued.secret_id_wrap.token
        record = world.record(answer["request_id"])
        assert (record["outcome"], record["rule"], record["principal"]) == ("issued", "web-nodes", caller.principal)
        assert record["secret_id_wrap_accessor"] == issued.secret_id_wrap.accessor
        text = json.dumps(record)  # accessors only, never a token
        assert issued.secret_id_wrap.token not in text and issued.role_id_wrap.token not in text
        assert world.minter.taken_back == []

    def test_an_unrecorded_issuance_is_taken_back_and_answered_503(self, world):
        world.audit.fail = True
        refused = world.refused(world.body(Caller()))
        assert (refused.status, refused.code) == (503, "unavailable")
        assert [issued for issued, _ in world.minter.minted] == world.minter.taken_back != []
        assert world.events == ["verify", "mint", "take_back"]
        assert world.record(refused.request_id) is None

    def test_a_minter_failure_is_a_503_with_its_record_and_no_issuance(self, world):
        world.minter.fail = Unavailable("Vault is unavailable", backend="vault", detail="sealed")
        refused = world.refused(world.body(Caller()))
        assert (refused.status, refused.code) == (503, "unavailable")
        assert world.minter.minted == [] and world.minter.taken_back == []
        record = world.record(refused.request_id)
        assert (record["outcome"], record["code"], record["reason"]) == ("error", "unavailable", "sealed")
        assert "secret_id_accessor" not in record and "role_id_wrap_accessor" not in record

    def test_a_replayed_proof_is_refused_and_mints_nothing(self, world):
        caller = Caller()
        body = world.body(caller)
        first = world.issue(body)
        refused = world.refused(body)
        assert (refused.status, refused.code) == (401, "proof_replayed")
        assert len(world.minter.minted) == 1
        record = world.record(refused.request_id)
        assert (record["outcome"], record["code"]) == ("denied", "proof_replayed")
        assert refused.request_id != first["request_id"]

    def test_a_quarantined_machine_is_refused_and_counts_no_budget(self, world):
        caller = Caller()
        revocation_id = self.place(world, quarantine_key("instance", caller.instance_id))
        try:
            refused = world.refused(world.body(caller))
            assert (refused.status, refused.code) == (403, "quarantined")
            assert revocation_id in world.record(refused.request_id)["reason"]
        finally:
            world.stores.quarantine.lift(quarantine_key("instance", caller.instance_id), revocation_id)
        assert world.minter.minted == []
        for _ in range(3):  # the identity's whole budget (3/1h): the refusal took none of it
            world.issue(world.body(caller))
        assert world.refused(world.body(caller)).code == "rate_limited"

    def test_a_quarantined_role_refuses_every_machine_of_it_and_gives_its_budget_back(self, world):
        caller = Caller()
        role_key = quarantine_key("principal", caller.canonical)
        revocation_id = self.place(world, role_key)
        try:
            refused = world.refused(world.body(caller))
            assert (refused.status, refused.code) == (403, "quarantined")
            other = world.refused(world.body(Caller(role_name=caller.role_name)))  # another machine of the role
            assert other.code == "quarantined"
        finally:
            world.stores.quarantine.lift(role_key, revocation_id)
        assert world.minter.minted == []
        for _ in range(3):  # the slot its admission counted was given back
            world.issue(world.body(caller))
        assert world.refused(world.body(caller)).code == "rate_limited"

    def test_a_budget_refusal_counts_nothing(self, world):
        """A session (no machine) counts its identity's budget (3/1h) and its role's (1/1h)
        in one step: refused by the role's, it took nothing of the identity's."""
        caller = Caller(instance_id=None)
        identity = f"principal:{caller.principal}"
        caller.budget_keys = (("identity", identity), ("principal", f"role:{caller.canonical}"))
        world.issue(world.body(caller, role="batch"))
        refused = world.refused(world.body(caller, role="batch"))
        assert (refused.status, refused.code, refused.scope) == (429, "rate_limited", "issue-principal")
        assert world.record(refused.request_id)["code"] == "rate_limited"
        assert len(world.minter.minted) == 1
        # the same identity under a role budget with room: two slots left of three, not one
        other = Caller(role_name=caller.role_name, instance_id=None,
                       budget_keys=(("identity", identity), ("principal", f"role:{unique('room')}")))
        world.issue(world.body(other, role="batch"))
        other.budget_keys = (("identity", identity), ("principal", f"role:{unique('room')}"))
        world.issue(world.body(other, role="batch"))
        other.budget_keys = (("identity", identity), ("principal", f"role:{unique('room')}"))
        assert world.refused(world.body(other, role="batch")).scope == "issue-identity"

    def test_a_caller_no_rule_grants_is_refused_403_with_the_reason(self, world):
        caller = Caller(tags={"vault-role": "db"})
        refused = world.refused(world.body(caller))
        assert (refused.status, refused.code) == (403, "not_authorized")
        assert "web" in refused.message
        assert "rule web-nodes" in refused.detail and "vault-role" in refused.detail
        record = world.record(refused.request_id)
        assert (record["outcome"], record["code"], record["reason"]) == ("denied", "not_authorized", refused.detail)
        assert record["facts"]["instance"]["tags"] == {"vault-role": "db"}
        assert world.minter.minted == []
        none = world.refused(world.body(Caller(), role="nobody"))
        assert none.code == "not_authorized" and "no rule grants role 'nobody'" in none.detail


@pytest.mark.stack
class TestIssuancePipelineOnDynamoDB(TestIssuancePipeline):
    """The same tests on the stack's DynamoDB tables (moto, SigV4 verified)."""

    @pytest.fixture
    def world(self, stack):
        from chalicelib.admission import Admission
        from chalicelib.audit import AuditStore
        from chalicelib.stores.quarantine import QuarantineList
        from chalicelib.stores.rate_limits import RateLimitStore
        from devstack import aws as stack_aws

        db = stack.client("dynamodb")
        return World(Stores(admission=Admission(db, stack_aws.REPLAY_TABLE, stack_aws.QUARANTINE_TABLE),
                            audit=AuditStore(db, stack_aws.AUDIT_TABLE, 1),
                            quarantine=QuarantineList(db, stack_aws.QUARANTINE_TABLE),
                            rate_limits=RateLimitStore(db, stack_aws.QUARANTINE_TABLE)))
