"""The quarantine keys a caller is checked against (its method's: methods/<name>/identity.py),
and the recent reads of the keys a whole role shares (chalicelib/stores/quarantine.py): what
is read, what is kept, and the time the issuance's window starts from."""

import pytest

from chalicelib.errors import Quarantined
from chalicelib.stores.memory import MemoryQuarantineList
from chalicelib.methods import identity
from chalicelib.stores.quarantine import RecentReads, keys_of, quarantine_key

ROLE = "arn:aws:iam::123456789012:role/demo-node"
SESSION = "arn:aws:sts::123456789012:assumed-role/Demo-Node/i-0123456789abcdef0"


class Clocks:
    def __init__(self):
        self.wall, self.mono = 1_800_000_000.0, 500.0


class CountingList(MemoryQuarantineList):
    def __init__(self, clock):
        super().__init__(clock)
        self.reads = []

    def entries(self, keys):
        self.reads.append(tuple(keys))
        return super().entries(keys)


@pytest.fixture
def world():
    clocks = Clocks()
    listing = CountingList(lambda: clocks.wall)
    reads = RecentReads(listing, max_age=1.0, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    return clocks, listing, reads


def split_caller_keys(method, instance, principal, canonical=None):
    own, shared = identity(method).quarantine_keys(principal, instance, canonical)
    return keys_of(own), keys_of(shared)


def test_an_instance_sessions_own_keys_are_its_machine_and_session_and_its_role_is_shared():
    own, shared = split_caller_keys("aws", "i-0123456789abcdef0", SESSION, SESSION)
    session = identity("aws").principal_key(SESSION)  # the role's name in lower case, the session's kept
    assert session == "arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0"
    assert own == [quarantine_key("instance", "i-0123456789abcdef0"), quarantine_key("principal", session)]
    assert shared == [quarantine_key("principal", ROLE)]


def test_a_service_accounts_keys_are_shared_and_a_token_without_instance_has_no_own_key():
    email = "app@proj.iam.gserviceaccount.com"
    assert split_caller_keys("gcp", "1234567890", email) == (
        [quarantine_key("instance", "1234567890")], [quarantine_key("principal", email)])
    # Cloud Run, GKE, a service-account key: every caller of the account shares both keys
    assert split_caller_keys("gcp", None, email) == (
        [], [quarantine_key("principal", email), quarantine_key("instanceless", email)])


def test_a_clear_key_is_read_once_per_max_age_and_the_window_starts_at_that_read(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    assert reads.check([key]) == 500.0
    clocks.mono += 0.6
    assert reads.check([key]) == 500.0  # the read it relied on, not now
    assert listing.reads == [(key,)]
    clocks.mono += 0.5  # 1.1 s after the read: read again
    assert reads.check([key]) == 501.1
    assert listing.reads == [(key,), (key,)]


def test_a_quarantine_placed_after_a_clear_read_is_seen_by_max_age_at_the_latest(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    reads.check([key])
    listing.place(key, revocation_id="r", until=int(clocks.wall) + 600, reason="x", by="sec")
    clocks.mono += 0.9
    assert reads.check([key]) == 500.0  # still relies on the clear read: the issuance's window says how old
    clocks.mono += 0.2
    with pytest.raises(Quarantined):
        reads.check([key])


def test_a_quarantined_key_is_read_every_time_so_lifting_it_takes_effect_at_once(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    listing.place(key, revocation_id="r", until=int(clocks.wall) + 600, reason="x", by="sec")
    with pytest.raises(Quarantined):
        reads.check([key])
    listing.lift(key, "r")
    assert reads.check([key]) == 500.0
    assert len(listing.reads) == 2


def test_recent_answers_without_a_read_exactly_when_check_would_not_read(world):
    clocks, listing, reads = world
    key, other = quarantine_key("principal", ROLE), quarantine_key("principal", ROLE + "-2")
    assert reads.recent([key]) is None  # never read: check must read
    reads.check([key])
    clocks.mono += 0.6
    assert reads.recent([key]) == 500.0 == reads.check([key])
    assert reads.recent([key, other]) is None  # one key unread: the read is needed
    clocks.mono += 0.5
    assert reads.recent([key]) is None  # older than max_age
    clocks.mono -= 0.5
    clocks.wall += 2.0  # a frozen monotonic clock: the wall clock says the read is stale
    assert reads.recent([key]) is None
    assert len(listing.reads) == 1  # recent() itself never reads


def test_a_quarantined_key_is_never_recent(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    listing.place(key, revocation_id="r", until=int(clocks.wall) + 600, reason="x", by="sec")
    with pytest.raises(Quarantined):
        reads.check([key])
    assert reads.recent([key]) is None  # only clear reads are kept: the next check reads again


# ---- the quarantine epoch (read with the replay lookup) vouches for a kept read ------------


def _lookup(clocks, epoch):
    from chalicelib.admission import Lookup

    return Lookup(clocks.mono, clocks.wall, epoch)


def test_an_unchanged_epoch_keeps_a_clear_read_past_max_age_and_the_window_starts_at_the_lookup(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    assert reads.check([key], _lookup(clocks, "e1")) == 500.0
    clocks.mono += 30.0
    clocks.wall += 30.0
    assert reads.recent([key], _lookup(clocks, "e1")) == 530.0  # the lookup is the evidence, not the old read
    assert reads.check([key], _lookup(clocks, "e1")) == 530.0
    assert listing.reads == [(key,)]


def test_a_changed_epoch_reads_again_however_young_the_read(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    reads.check([key], _lookup(clocks, "e1"))
    listing.place(key, revocation_id="r", until=int(clocks.wall) + 600, reason="x", by="sec")  # a new epoch
    clocks.mono += 0.1
    assert reads.recent([key], _lookup(clocks, "e2")) is None
    with pytest.raises(Quarantined):
        reads.check([key], _lookup(clocks, "e2"))
    assert listing.reads == [(key,), (key,)]


def test_an_epoch_vouches_for_a_read_for_a_minute_at_most(world):
    from chalicelib.stores.quarantine import EPOCH_TRUST_SECONDS

    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    reads.check([key], _lookup(clocks, "e1"))
    clocks.mono += EPOCH_TRUST_SECONDS
    clocks.wall += EPOCH_TRUST_SECONDS  # an entry put by hand changes no epoch: seen this late at worst
    assert reads.recent([key], _lookup(clocks, "e1")) is None
    reads.check([key], _lookup(clocks, "e1"))
    assert len(listing.reads) == 2


def test_a_read_kept_without_an_epoch_is_read_again_once_an_epoch_is_known(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    reads.check([key], _lookup(clocks, None))
    clocks.mono += 0.1
    assert reads.recent([key], _lookup(clocks, None)) == 500.0  # no epoch: the read's age decides
    assert reads.recent([key], _lookup(clocks, "e1")) is None   # an epoch, but not the one read before it
    reads.check([key], _lookup(clocks, "e1"))
    clocks.mono += 5.0
    clocks.wall += 5.0
    assert reads.recent([key], _lookup(clocks, "e1")) == 505.1


def test_a_placed_entry_changes_the_memory_lists_epoch_and_a_longer_one_in_place_does_not(world):
    clocks, listing, reads = world
    key = quarantine_key("principal", ROLE)
    assert listing.seed_epoch() is not None and listing.seed_epoch() is None  # only a table without one
    first = listing.epoch
    listing.place(key, revocation_id="r1", until=int(clocks.wall) + 600, reason="x", by="sec")
    second = listing.epoch
    assert second != first
    listing.place(key, revocation_id="r2", until=int(clocks.wall) + 60, reason="x", by="sec")  # shorter: stays
    assert listing.epoch == second


def test_a_failed_epoch_seed_does_not_fail_the_login():
    """Writing a first epoch is a saving, not a check: if the table refuses it, the login
    goes on as if there were no epoch (the shared key is read, as before the epoch)."""
    from chalicelib.admission import Admission, Lookup
    from chalicelib.errors import Unavailable

    class Refusing:
        def seed_epoch(self):
            raise Unavailable("quarantine store is unavailable", backend="quarantine store")

    clocks = Clocks()
    listing = CountingList(lambda: clocks.wall)
    gate = Admission(None, "replay", "quarantine", shared_key_max_age=1.0, clock=lambda: clocks.wall,
                     monotonic=lambda: clocks.mono)
    gate._list = Refusing()
    gate._shared = RecentReads(listing, max_age=1.0, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    key = quarantine_key("principal", ROLE)
    assert gate.check_shared([key], Lookup(clocks.mono, clocks.wall, None)) == 500.0
    assert listing.reads == [(key,)]
