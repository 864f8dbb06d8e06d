"""One contract, two implementations: each store of chalicelib/stores/ and its in-memory fake
(chalicelib/stores/memory.py) pass the same tests (the DynamoDB one against the stack's
moto, SigV4 verified), so the fakes can stand in for them in fast tests."""

import uuid

import pytest

from chalicelib.errors import InvalidRequest, Quarantined, RateLimited
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


@pytest.fixture(params=["memory", "dynamodb"])
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
