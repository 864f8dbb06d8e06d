"""One contract, two implementations: each store of chalicelib/stores/, the admission
(chalicelib/admission.py) and the audit store (chalicelib/audit.py), and its in-memory fake
(chalicelib/stores/memory.py) pass the same tests (the DynamoDB one against the stack's
moto, SigV4 verified), so the fakes can stand in for them in fast tests. The DynamoDB
cases are marked `stack`: `make test-fast` runs the fakes' half."""

import uuid

import pytest

from chalicelib.errors import InvalidRequest, ProofReplayed, Quarantined, RateLimited
from chalicelib.stores import memory
from chalicelib.methods import identity
from chalicelib.stores.quarantine import EPOCH_KEY, QuarantineList, epoch_of, keys_of, quarantine_key
from chalicelib.stores.rate_limits import RateLimitStore
from chalicelib.stores.revocations import RevocationStore
from chalicelib.stores.tokens import MAX_PER_ISSUANCE, TokenRegistry
from chalicelib.stores.trust_history import KEEP_FOR, Sighting, TrustHistory


class Clock:
    def __init__(self):
        self.now = 1_900_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


IMPLEMENTATIONS = ["memory", pytest.param("dynamodb", marks=pytest.mark.stack)]


@pytest.fixture(params=IMPLEMENTATIONS)
def stores(request, clock):
    if request.param == "memory":
        return {"quarantine": memory.MemoryQuarantineList(clock), "revocations": memory.MemoryRevocationStore(clock),
                "rate_limits": memory.MemoryRateLimitStore(clock), "tokens": memory.MemoryTokenRegistry(clock),
                "trust_history": memory.MemoryTrustHistory(clock)}
    from devstack import aws as stack_aws

    stack = request.getfixturevalue("stack")
    db, table = stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE
    return {"quarantine": QuarantineList(db, table, clock), "revocations": RevocationStore(db, table, clock),
            "rate_limits": RateLimitStore(db, table, clock), "tokens": TokenRegistry(db, table, clock),
            "trust_history": TrustHistory(db, table, clock)}


def current_epoch(quarantine):
    """The quarantine epoch as a login's lookup reads it."""
    if isinstance(quarantine, memory.MemoryQuarantineList):
        return quarantine.epoch
    item = quarantine._db.get_item(TableName=quarantine._table, Key={"pk": {"S": EPOCH_KEY}}, ConsistentRead=True)
    return epoch_of(item.get("Item"))


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TestQuarantineList:
    def test_a_placed_entry_refuses_until_it_ends(self, stores, clock):
        q = stores["quarantine"]
        instance = unique("i")
        key = quarantine_key("instance", instance)
        q.check([key])  # nothing yet
        entry = q.place(key, revocation_id="r1", until=int(clock.now) + 60, reason="x", by="sec")
        assert (entry.key, entry.revocation_id) == (key, "r1")
        with pytest.raises(Quarantined) as refused:
            q.check([key])
        assert "r1" in refused.value.detail
        clock.now += 61
        q.check([key])  # expired: every read checks `until` itself

    def test_a_longer_quarantine_stays_and_only_its_owner_lifts_it(self, stores, clock):
        q = stores["quarantine"]
        key = quarantine_key("principal", f"arn:aws:iam::123456789012:role/{unique('r')}")
        q.place(key, revocation_id="long", until=int(clock.now) + 3600, reason="x", by="sec")
        kept = q.place(key, revocation_id="short", until=int(clock.now) + 60, reason="x", by="sec")
        assert kept.revocation_id == "long"
        assert q.lift(key, "short") is False and q.get(key).revocation_id == "long"
        assert q.lift(key, "long") is True and q.get(key) is None

    def test_a_placed_entry_changes_the_epoch_and_a_longer_one_in_place_does_not(self, stores, clock):
        q = stores["quarantine"]
        key = quarantine_key("principal", f"arn:aws:iam::123456789012:role/{unique('r')}")
        before = current_epoch(q)
        q.place(key, revocation_id="long", until=int(clock.now) + 3600, reason="x", by="sec")
        placed = current_epoch(q)
        assert placed not in (None, before)
        q.place(key, revocation_id="short", until=int(clock.now) + 60, reason="x", by="sec")  # nothing changed
        assert current_epoch(q) == placed
        assert q.seed_epoch() is None  # a table with an epoch keeps it
        assert q.lift(key, "long") is False and q.lift(key, "short") is True

    def test_lifting_the_longer_of_two_quarantines_leaves_the_shorter_in_force(self, stores, clock):
        q = stores["quarantine"]
        key = quarantine_key("principal", f"arn:aws:iam::123456789012:role/{unique('r')}")
        q.place(key, revocation_id="long", until=int(clock.now) + 3600, reason="x", by="sec")
        assert q.place(key, revocation_id="short", until=int(clock.now) + 600, reason="x", by="sec").revocation_id == "long"
        assert q.lift(key, "long") is False  # not free: "short" still holds it
        assert (q.get(key).revocation_id, q.get(key).until) == ("short", int(clock.now) + 600)
        assert q.lift(key, "long") is False  # lifted already: nothing changes
        assert q.get(key).revocation_id == "short"
        assert q.lift(key, "short") is True and q.get(key) is None

    def test_a_longer_quarantine_over_a_shorter_one_hands_back_to_it_when_lifted(self, stores, clock):
        q = stores["quarantine"]
        key = quarantine_key("instance", unique("i"))
        q.place(key, revocation_id="short", until=int(clock.now) + 600, reason="x", by="sec")
        q.place(key, revocation_id="long", until=int(clock.now) + 3600, reason="x", by="sec")
        assert q.get(key).revocation_id == "long"
        assert q.lift(key, "long") is False and q.get(key).revocation_id == "short"
        clock.now += 601  # the shorter one ended meanwhile: a lift of the longer frees the key
        q.place(key, revocation_id="long2", until=int(clock.now) + 3600, reason="x", by="sec")
        assert q.lift(key, "long2") is True and q.get(key) is None

    def test_a_shorter_holders_own_lift_leaves_the_longer_entry(self, stores, clock):
        q = stores["quarantine"]
        key = quarantine_key("instance", unique("i"))
        q.place(key, revocation_id="long", until=int(clock.now) + 3600, reason="x", by="sec")
        q.place(key, revocation_id="short", until=int(clock.now) + 600, reason="x", by="sec")
        assert q.lift(key, "short") is False and q.get(key).revocation_id == "long"
        assert q.lift(key, "long") is True and q.get(key) is None  # "short" no longer holds it

    def test_a_role_entry_refuses_every_session_in_any_case(self, stores, clock):
        q = stores["quarantine"]
        role = unique("Demo-Role")
        aws = identity("aws")  # the method spells the keys: IAM names are case-insensitive
        q.place(quarantine_key("principal", aws.principal_key(f"arn:aws:iam::123456789012:role/{role}")),
                revocation_id="r",
                until=int(clock.now) + 60, reason="x", by="sec")
        session = f"arn:aws:sts::123456789012:assumed-role/{role.lower()}/s1"
        with pytest.raises(Quarantined):
            q.check(keys_of(sum(aws.quarantine_keys(session), ())))


    def test_entries_names_each_key_with_its_entry_or_none(self, stores, clock):
        q = stores["quarantine"]
        placed, clear = quarantine_key("instance", unique("i")), quarantine_key("instance", unique("i"))
        q.place(placed, revocation_id="r", until=int(clock.now) + 60, reason="x", by="sec")
        entries = q.entries([placed, clear])
        assert list(entries) == [placed, clear]
        assert (entries[placed].revocation_id, entries[placed].until) == ("r", int(clock.now) + 60)
        assert entries[clear] is None
        assert q.entries([]) == {}


class TestRevocationStore:
    def test_put_get_and_lift(self, stores, clock):
        r = stores["revocations"]
        rid = str(uuid.uuid4())
        assert r.get(rid) is None
        r.put(rid, target=("instance", "i-1"), reason="why", by="sec", until=int(clock.now) + 60,
              keys=["quarantine#instance#i-1"], request_id="req")
        got = r.get(rid)
        assert got["target"] == {"instance": "i-1"} and got["quarantine_keys"] == ["quarantine#instance#i-1"]
        assert got["lifted_at"] is None
        r.mark_lifted(rid, "sec")
        assert r.get(rid)["lifted_at"] == int(clock.now)

    def test_a_revocation_id_is_written_once(self, stores, clock):
        from chalicelib.errors import Unavailable

        r = stores["revocations"]
        rid = str(uuid.uuid4())
        r.put(rid, target=("instance", "i-1"), reason="a", by="sec", until=None, keys=[], request_id="q")
        with pytest.raises(Unavailable):
            r.put(rid, target=("instance", "i-2"), reason="b", by="sec", until=None, keys=[], request_id="q")
        assert r.get(rid)["target"] == {"instance": "i-1"}


class TestRateLimits:
    def test_a_window_holds_its_limit_then_the_next_one_starts_afresh(self, stores, clock):
        limits = stores["rate_limits"]
        caller = unique("caller")
        clock.now = 1_900_000_000.0 - 1_900_000_000 % 60  # the start of a window
        for _ in range(3):
            limits.take_slot("test", caller, limit=3, window=60)
        with pytest.raises(RateLimited) as limited:
            limits.take_slot("test", caller, limit=3, window=60)
        assert limited.value.retry_after == 60
        limits.take_slot("test", unique("other"), limit=3, window=60)  # another caller has its own
        clock.now += 60
        limits.take_slot("test", caller, limit=3, window=60)


class TestTokenRegistry:
    def test_accessors_per_issuance_bounded(self, stores):
        tokens = stores["tokens"]
        rid = str(uuid.uuid4())
        assert tokens.get_many([rid]) == {}
        for n in range(MAX_PER_ISSUANCE):
            tokens.add(rid, f"acc{n}", keep_for=3600)
        tokens.add(rid, "acc0", keep_for=3600)  # again: no new one
        with pytest.raises(InvalidRequest):
            tokens.add(rid, "one-too-many", keep_for=3600)
        assert tokens.get_many([rid, str(uuid.uuid4())]) == {rid: [f"acc{n}" for n in range(MAX_PER_ISSUANCE)]}


def test_a_holders_lift_racing_the_entrys_deletion_leaves_no_stub(stack):
    """A shorter revocation's lift reads the entry (held by a longer one), and the longer one
    is lifted (the entry deleted) before the shorter one's hold is taken off: the update
    must not write a stub item (pk and version only: every login reading the key would
    have crashed on it)."""
    from devstack import aws as stack_aws

    db, table = stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE
    key = quarantine_key("instance", unique("i"))
    now = int(__import__("time").time())
    q = QuarantineList(db, table)
    q.place(key, revocation_id="long", until=now + 3600, reason="x", by="sec")
    q.place(key, revocation_id="short", until=now + 600, reason="x", by="sec")

    class DeletedAfterTheRead:
        def __getattr__(self, name):
            return getattr(db, name)

        def get_item(self, **kwargs):
            page = db.get_item(**kwargs)
            db.delete_item(TableName=table, Key={"pk": {"S": key}})  # the longer one lifted, right then
            return page

    racing = QuarantineList(DeletedAfterTheRead(), table)
    assert racing.lift(key, "short") is False
    assert "Item" not in db.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)
    q.check([key])  # nothing in force, and nothing that fails a read


class TestTrustHistory:
    def test_nothing_recorded_is_none(self, stores):
        assert stores["trust_history"].get(unique("arn:aws:iam::123456789012:role/r")) is None
        stores["trust_history"].saw_closed(unique("role"), 5)  # closed with no open: nothing to remember
        assert stores["trust_history"].get(unique("role")) is None

    def test_the_last_open_and_the_first_closed_after_it_are_kept(self, stores, clock):
        h, key = stores["trust_history"], unique("arn:aws:iam::123456789012:role/r")
        now = int(clock.now)
        h.saw_open(key, now - 100)
        h.saw_open(key, now - 50)
        h.saw_open(key, now - 80)  # an older read (another Lambda's) does not go back
        assert h.get(key) == Sighting(now - 50, None)
        h.saw_closed(key, now - 60)  # read before the last open one: not a close
        assert h.get(key).closed_after_open is None
        h.saw_closed(key, now - 20)
        h.saw_closed(key, now - 10)  # a later read keeps the first
        assert h.get(key) == Sighting(now - 50, now - 20) and h.get(key).closed_after_open == now - 20
        h.saw_closed(key, now - 30)  # an earlier close read (a slower writer) is the better bound
        assert h.get(key).closed_after_open == now - 30
        h.saw_open(key, now - 5)  # opened again: the close no longer counts
        assert h.get(key).closed_after_open is None
        h.saw_closed(key, now)
        assert h.get(key) == Sighting(now - 5, now)

    def test_forgotten_two_maximum_sessions_after_its_last_write(self, stores, clock):
        h, key = stores["trust_history"], unique("arn:aws:iam::123456789012:role/r")
        h.saw_open(key, clock.now)
        clock.now += KEEP_FOR - 1
        assert h.get(key) is not None
        clock.now += 1
        assert h.get(key) is None


# ---- the admission: the replay store, the budgets and the quarantine checks in one step --------


class Monotonic:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class AdmissionWorld:
    """The stores an admission works on, and `process()`: an admission as one broker process
    has it (its own memory of spent proofs and of recent reads, the tables shared)."""

    def __init__(self, kind, clock, quarantine, make):
        self.kind, self.clock, self.monotonic = kind, clock, Monotonic()
        self.quarantine = quarantine
        self._make = make

    def process(self, **kwargs):
        return self._make(self.clock, self.monotonic, **kwargs)


@pytest.fixture(params=IMPLEMENTATIONS)
def admissions(request, clock):
    if request.param == "memory":
        quarantine, counters, replay = (memory.MemoryQuarantineList(clock), memory.MemoryRateLimitStore(clock),
                                        memory.MemoryReplayRecords())

        def make(clock, monotonic, quarantine_table=True, shared_key_max_age=0.0):
            return memory.MemoryAdmission(quarantine if quarantine_table else None, counters, replay=replay,
                                          shared_key_max_age=shared_key_max_age, clock=clock, monotonic=monotonic)

        return AdmissionWorld("memory", clock, quarantine, make)
    from chalicelib.admission import Admission
    from devstack import aws as stack_aws

    db = request.getfixturevalue("stack").client("dynamodb")

    def make(clock, monotonic, quarantine_table=True, shared_key_max_age=0.0):
        return Admission(db, stack_aws.REPLAY_TABLE, stack_aws.QUARANTINE_TABLE if quarantine_table else None,
                         shared_key_max_age=shared_key_max_age, clock=clock, monotonic=monotonic)

    return AdmissionWorld("dynamodb", clock, QuarantineList(db, stack_aws.QUARANTINE_TABLE, clock), make)


def budget(scope_name, key, count, window=3600):
    from chalicelib.admission import BUDGET_SCOPES
    from chalicelib.policy import Limit

    return (BUDGET_SCOPES[scope_name], key, Limit(count, window))


def admit(admission, proof, request_id=None, **kwargs):
    return admission.admit(proof, request_id=request_id or unique("req"), method="aws",
                           valid_until=kwargs.pop("valid_until", 0), **kwargs)


class TestAdmission:
    def test_each_proof_is_spent_once_in_every_process(self, admissions):
        one, other = admissions.process(), admissions.process()
        proof = unique("proof")
        one.seen(proof)  # not spent: nothing raised
        lookup = one.look_up(proof)
        assert lookup.sent == admissions.monotonic.now
        assert admit(one, proof, "req-1", valid_until=int(admissions.clock.now) + 60) == admissions.monotonic.now
        with pytest.raises(ProofReplayed):
            admit(one, proof, "req-2")
        with pytest.raises(ProofReplayed):  # this process saw it spent: refused before any call
            one.lookup_call(proof)
        for check in (other.seen, other.look_up, lambda p: admit(other, p, "req-3")):  # another process: the store
            with pytest.raises(ProofReplayed):
                check(proof)
        admit(other, unique("proof"))  # another proof is another proof

    def test_the_request_that_spent_a_proof_asking_again_is_admitted_and_counted_once(self, admissions):
        """The answer to its first attempt was lost, and the client sent the same request again."""
        admission, proof, caller = admissions.process(), unique("proof"), unique("caller")
        budgets = (budget("identity", caller, 2),)
        admit(admission, proof, "req-1", budgets=budgets)
        admit(admissions.process(), proof, "req-1", budgets=budgets)  # not a replay
        admit(admission, unique("proof"), budgets=budgets)  # the second slot: the retry took none
        with pytest.raises(RateLimited):
            admit(admission, unique("proof"), budgets=budgets)

    def test_budgets_are_counted_in_one_step_and_a_refused_one_counts_in_none(self, admissions):
        admission = admissions.process()
        identity, principal = unique("identity"), unique("principal")
        admit(admission, unique("proof"), budgets=(budget("identity", identity, 3), budget("principal", principal, 1)))
        refused = unique("proof")
        with pytest.raises(RateLimited) as over:
            admit(admission, refused, budgets=(budget("identity", identity, 3), budget("principal", principal, 1)))
        assert over.value.scope == "issue-principal" and principal in over.value.detail
        with pytest.raises(ProofReplayed):  # refused, the proof is used up all the same
            admit(admission, refused)
        # the identity's budget counted the first admission only: two slots are left of three
        for _ in range(2):
            admit(admission, unique("proof"), budgets=(budget("identity", identity, 3),))
        with pytest.raises(RateLimited) as over:
            admit(admission, unique("proof"), budgets=(budget("identity", identity, 3),))
        assert over.value.scope == "issue-identity"

    def test_the_older_identity_key_and_limit_count_the_identity_budget(self, admissions):
        from chalicelib.policy import Limit

        admission, identity = admissions.process(), unique("identity")
        admit(admission, unique("proof"), identity_key=identity, limit=Limit(1, 60))
        with pytest.raises(RateLimited):
            admit(admission, unique("proof"), budgets=(budget("identity", identity, 1, window=60),))

    def test_a_budget_starts_afresh_in_the_next_window(self, admissions):
        admission, caller = admissions.process(), unique("caller")
        admissions.clock.now = 1_900_000_000.0 - 1_900_000_000 % 60
        admit(admission, unique("proof"), budgets=(budget("identity", caller, 1, window=60),))
        with pytest.raises(RateLimited) as over:
            admit(admission, unique("proof"), budgets=(budget("identity", caller, 1, window=60),))
        assert over.value.retry_after == 60
        admissions.clock.now += 60
        admit(admission, unique("proof"), budgets=(budget("identity", caller, 1, window=60),))

    def test_a_refund_gives_back_the_slot_and_never_more(self, admissions):
        admission, caller = admissions.process(), unique("caller")
        budgets = (budget("principal", caller, 1),)
        admit(admission, unique("proof"), budgets=budgets)
        admission.refund(budgets=budgets)
        admission.refund(budgets=budgets)  # nothing left to give back: no credit for later
        admission.refund(budgets=(budget("identity", unique("never-counted"), 1),))
        admit(admission, unique("proof"), budgets=budgets)
        with pytest.raises(RateLimited):
            admit(admission, unique("proof"), budgets=budgets)

    def test_a_quarantined_key_refuses_admission_spends_the_proof_and_counts_nothing(self, admissions):
        admission, clock = admissions.process(), admissions.clock
        instance, caller = quarantine_key("instance", unique("i")), unique("caller")
        admissions.quarantine.place(instance, revocation_id="rev-1", until=int(clock.now) + 60, reason="x", by="sec")
        proof, budgets = unique("proof"), (budget("identity", caller, 1),)
        with pytest.raises(Quarantined) as refused:
            admit(admission, proof, quarantine_keys=[quarantine_key("instance", unique("clear")), instance],
                  budgets=budgets)
        assert "rev-1" in refused.value.detail
        with pytest.raises(ProofReplayed):
            admit(admissions.process(), proof)
        clock.now += 61  # the quarantine ended: every admission checks `until` itself
        admit(admission, unique("proof"), quarantine_keys=[instance], budgets=budgets)  # the one slot: not spent before

    def test_refusals_come_replayed_then_quarantined_then_over_budget(self, admissions):
        admission, clock = admissions.process(), admissions.clock
        key, caller = quarantine_key("instance", unique("i")), unique("caller")
        full = (budget("identity", caller, 1),)
        admit(admission, unique("proof"), budgets=full)
        spent = unique("proof")
        admit(admission, spent)
        admissions.quarantine.place(key, revocation_id="r", until=int(clock.now) + 60, reason="x", by="sec")
        with pytest.raises(ProofReplayed):
            admit(admissions.process(), spent, quarantine_keys=[key], budgets=full)
        with pytest.raises(Quarantined):
            admit(admission, unique("proof"), quarantine_keys=[key], budgets=full)

    def test_without_a_quarantine_table_nothing_is_checked_or_counted_but_proofs_are_spent(self, admissions):
        admission, clock = admissions.process(quarantine_table=False), admissions.clock
        key, caller = quarantine_key("instance", unique("i")), unique("caller")
        admissions.quarantine.place(key, revocation_id="r", until=int(clock.now) + 60, reason="x", by="sec")
        for _ in range(2):
            admit(admission, unique("proof"), quarantine_keys=[key], budgets=(budget("identity", caller, 1),))
        assert admission.check_shared([key]) == admissions.monotonic.now
        proof = unique("proof")
        admit(admission, proof)
        with pytest.raises(ProofReplayed):
            admission.look_up(proof)

    def test_a_shared_key_refuses_and_a_new_quarantine_is_seen_by_the_next_lookup(self, admissions):
        admission, clock, mono = admissions.process(shared_key_max_age=1.0), admissions.clock, admissions.monotonic
        role = quarantine_key("principal", f"arn:aws:iam::123456789012:role/{unique('r')}")
        assert admission.check_shared([]) == mono.now
        before = admission.look_up(unique("proof"))
        read_at = mono.now
        assert admission.check_shared([role], before) == read_at  # clear: read, and kept under its epoch
        mono.now += 5
        clock.now += 5
        again = admission.look_up(unique("proof"))
        ready = admission.shared_check([role], again)  # same epoch: the read holds, no call
        if again.epoch is not None and again.epoch == before.epoch:
            assert ready.value == again.sent
        admissions.quarantine.place(role, revocation_id="rev-role", until=int(clock.now) + 60, reason="x", by="sec")
        after = admission.look_up(unique("proof"))
        assert after.epoch is not None and after.epoch != before.epoch  # every placement changes the epoch
        with pytest.raises(Quarantined) as refused:
            admission.check_shared([role], after)
        assert "rev-role" in refused.value.detail
        with pytest.raises(Quarantined):  # a quarantined key is read every time, not kept
            admission.shared_check([role], after)()


# ---- the audit store ------------------------------------------------------------------------------


@pytest.fixture(params=IMPLEMENTATIONS)
def audit_store(request):
    if request.param == "memory":
        return memory.MemoryAuditStore(retention_days=400)
    from chalicelib.audit import AuditStore
    from devstack import aws as stack_aws

    return AuditStore(request.getfixturevalue("stack").client("dynamodb"), stack_aws.AUDIT_TABLE, 400)


class TestAuditStore:
    def test_a_record_reads_back_as_plain_data(self, audit_store):
        from chalicelib.audit import AuditRecord

        record = AuditRecord(request_id=str(uuid.uuid4()), method="aws", outcome="issued", code="issued",
                             role="web", principal="arn:aws:sts::123456789012:assumed-role/demo-node/i-1",
                             facts={"tags": {"vault-role": "web"}, "instance_id": "i-1"}, secret_id_expires_at=1234,
                             destroyed=[{"request_id": "x", "result": "destroyed"}], rules_serial=7)
        assert audit_store.get(record.request_id) is None
        audit_store.write(record)
        got = audit_store.get(record.request_id)
        from chalicelib.audit_schema import TTL_ATTRIBUTE

        assert got == {**record.fields(), "epoch": pytest.approx(record.epoch, abs=0.001),
                       TTL_ATTRIBUTE: int(record.epoch) + 400 * 86400}  # the index attributes are not shown
        assert isinstance(got["secret_id_expires_at"], int) and isinstance(got["epoch"], float)
        assert audit_store.health() is None

    def test_a_request_id_is_written_once_and_its_retry_changes_nothing(self, audit_store):
        from chalicelib.audit import AuditRecord

        first = AuditRecord(request_id=str(uuid.uuid4()), method="aws", outcome="issued", code="issued")
        audit_store.write(first)
        audit_store.write(AuditRecord(request_id=first.request_id, method="aws", outcome="error", code="unavailable"))
        assert audit_store.get(first.request_id)["outcome"] == "issued"
