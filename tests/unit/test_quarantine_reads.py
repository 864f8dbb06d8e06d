"""The quarantine keys a caller is checked against, and the recent reads of the keys a
whole role shares (chalicelib/stores/quarantine.py): what is read, what is kept, and
the time the issuance's window starts from."""

import pytest

from chalicelib.errors import Quarantined
from chalicelib.stores.memory import MemoryQuarantineList
from chalicelib.stores.quarantine import RecentReads, quarantine_key, split_caller_keys

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


def test_an_instance_sessions_own_keys_are_its_machine_and_session_and_its_role_is_shared():
    own, shared = split_caller_keys("i-0123456789abcdef0", SESSION, SESSION)
    assert own == [quarantine_key("instance", "i-0123456789abcdef0"), quarantine_key("principal", SESSION)]
    assert shared == [quarantine_key("principal", ROLE)]


def test_a_service_accounts_keys_are_shared_and_a_token_without_instance_has_no_own_key():
    email = "app@proj.iam.gserviceaccount.com"
    assert split_caller_keys("1234567890", email) == (
        [quarantine_key("instance", "1234567890")], [quarantine_key("principal", email)])
    # Cloud Run, GKE, a service-account key: every caller of the account shares both keys
    assert split_caller_keys(None, email) == (
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
