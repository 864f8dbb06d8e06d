"""chalicelib/concurrency.py: settle runs calls at once, Ready values take no thread."""

import threading

import pytest

from chalicelib.concurrency import Ready, raise_first, settle


def where():
    return threading.current_thread().name


def test_results_come_back_in_call_order_with_ready_values_in_place():
    here = where()
    outcomes = settle(Ready("a"), lambda: where(), Ready("c"), lambda: where())
    assert [o[0] for o in outcomes][::2] == ["a", "c"]
    assert outcomes[1] == (here, None)  # the first real call runs in the caller's thread
    assert outcomes[3][0].startswith("broker-io")  # the next ones in the pool


def test_only_ready_values_take_no_thread_at_all():
    assert settle(Ready(1), Ready(None)) == [(1, None), (None, None)]


def test_errors_are_returned_in_place_and_raise_first_raises_the_first_in_call_order():
    def boom(message):
        def call():
            raise ValueError(message)
        return call

    outcomes = settle(boom("here"), Ready(2), boom("pool"))
    assert [type(e).__name__ if e else r for r, e in outcomes] == ["ValueError", 2, "ValueError"]
    with pytest.raises(ValueError, match="here"):
        raise_first(outcomes)
