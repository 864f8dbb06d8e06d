"""Red team (s20), pure: the process-local memo of spent proofs (chalicelib/admission.py
SpentProofs) and the conflict retries of a placement (chalicelib/aws_calls.py transact)."""

import threading

import pytest

from chalicelib.admission import SpentProofs
from chalicelib.aws_calls import CONFLICT_BACKOFF_MAX, transact

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all


def test_the_memo_of_spent_proofs_stays_bounded_and_keeps_the_newest():
    memo = SpentProofs(limit=8)
    for i in range(100):
        memo.add(f"h{i}")
        assert len(memo._hashes) <= 8
    assert "h99" in memo and "h98" in memo
    assert "h0" not in memo  # forgotten: only costs the lookup again


def test_the_memo_under_concurrent_adds_from_a_boot_storm_stays_bounded():
    memo = SpentProofs(limit=64)
    errors = []

    def add_many(prefix):
        try:
            for i in range(5000):
                memo.add(f"{prefix}-{i}")
                f"{prefix}-{i}" in memo  # noqa: B015 (reads beside the writes)
        except Exception as e:  # pragma: no cover - the failure reported below
            errors.append(e)

    threads = [threading.Thread(target=add_many, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(memo._hashes) <= 64


def test_the_memo_says_spent_only_for_what_it_was_told():
    memo = SpentProofs()
    memo.add("a" * 64)
    assert "a" * 64 in memo
    assert "b" * 64 not in memo and "" not in memo


class Cancelled(Exception):
    def __init__(self, *codes):
        super().__init__("TransactionCanceledException")
        self.response = {"Error": {"Code": "TransactionCanceledException"},
                         "CancellationReasons": [{"Code": c} for c in codes]}


def test_a_run_of_conflicts_is_retried_with_capped_backoff_then_returned():
    calls, waits = [], []

    def write(TransactItems):
        calls.append(TransactItems)
        raise Cancelled("None", "TransactionConflict")

    cancelled = transact("quarantine store", write, ["item"], sleep=waits.append, attempts=10)
    assert cancelled is not None and len(calls) == 10 and len(waits) == 9
    assert max(waits) <= CONFLICT_BACKOFF_MAX
    assert sum(waits) <= 2.5  # a revocation waits about two seconds at most


def test_a_condition_failure_is_not_retried():
    calls = []

    def write(TransactItems):
        calls.append(1)
        raise Cancelled("ConditionalCheckFailed", "None")

    assert transact("quarantine store", write, ["item"], sleep=lambda s: None, attempts=10) is not None
    assert calls == [1]


# ---- every writer of the quarantine table, and which items it writes --------------------------------

# Writers of the quarantine table (the rows of .chalice/POLICY.md, which the least-privilege
# tests tie to every AWS call in the code) -> the items each one writes. Only
# QuarantineList.place writes `quarantine#` entries, and it changes the epoch with them:
# a new writer of entries that did not would be trusted by warm environments for up to
# EPOCH_TRUST_SECONDS. Adding a writer here means checking that.
QUARANTINE_TABLE_WRITERS = {
    "`chalicelib/admission.py` `Admission.admit`": "ratelimit#",
    "`chalicelib/admission.py` `Admission.refund`": "ratelimit#",
    "`chalicelib/stores/quarantine.py` `QuarantineList.place`": "quarantine# entries, with the epoch",
    "`chalicelib/stores/quarantine.py` `QuarantineList.seed_epoch`": "epoch#quarantine",
    "`chalicelib/stores/quarantine.py` `QuarantineList.lift`": "quarantine# entries (deleted: seen at once)",
    "`chalicelib/stores/revocations.py` `RevocationStore.put`": "revocation#",
    "`chalicelib/stores/revocations.py` `RevocationStore.mark_lifted`": "revocation#",
    "`chalicelib/stores/rate_limits.py` `RateLimitStore.take_slot`": "ratelimit#",
    "`chalicelib/stores/tokens.py` `TokenRegistry.add`": "token#",
    "`chalicelib/stores/tokens.py` `TokenRegistry.add_by_key`": "token#",
    "`chalicelib/stores/trust_history.py` `TrustHistory.saw_open`": "trust#",
    "`chalicelib/rules_source.py` `HighWater.advance`": "rules#high-water#",
}


def test_only_the_placement_writes_quarantine_entries_and_it_changes_the_epoch():
    import inspect
    import re
    from pathlib import Path

    from chalicelib.stores.quarantine import EPOCH_KEY, QuarantineList

    policy = (Path(__file__).resolve().parents[2] / ".chalice" / "POLICY.md").read_text()
    writers = set()
    for row in policy.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[4] == "the quarantine table" and re.search(
                r"dynamodb:(PutItem|UpdateItem|DeleteItem|BatchWriteItem)", cells[3]):
            writers.add(re.match(r"(`[^`]+` `[^`]+`)", cells[0]).group(1))
    assert writers == set(QUARANTINE_TABLE_WRITERS), sorted(writers ^ set(QUARANTINE_TABLE_WRITERS))
    # the placement's transaction carries the epoch's change; the seed writes the epoch only
    place = inspect.getsource(QuarantineList.place)
    assert "_epoch_change(" in place and '"Update": in_force' in place
    change = QuarantineList(None, "quarantine")._epoch_change(0)
    assert change["Key"] == {"pk": {"S": EPOCH_KEY}} and "SET epoch = :epoch" in change["UpdateExpression"]
    assert change["ExpressionAttributeValues"][":epoch"]["S"] != QuarantineList(None, "q")._epoch_change(0)[
        "ExpressionAttributeValues"][":epoch"]["S"]  # a new value every time: an epoch never comes back
