"""Red team (s20), pure: the process-local memo of spent proofs (chalicelib/admission.py
SpentProofs) and the conflict retries of a placement (chalicelib/aws_calls.py transact)."""

import threading

from chalicelib.admission import SpentProofs
from chalicelib.aws_calls import CONFLICT_BACKOFF_MAX, transact


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
