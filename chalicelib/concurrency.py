"""Overlap independent backend calls (the two Vault calls, the EC2 and IAM reads, the
replay write beside the fact reads): each request waits for the slowest, not the sum.

Only leaf calls go to the shared pool (they never wait on the pool themselves), and
the first call runs in the caller's thread, so a busy pool can't deadlock a request.
"""

from concurrent.futures import ThreadPoolExecutor

_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="broker-io")


class Ready:
    """A result already at hand (a cache hit) in a call list: `settle` hands it back as it
    is. Sending it to the pool would cost two thread switches for nothing."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def settle(first, *others):
    """Run the calls all at once: the first one that is not Ready here, the others in
    the pool; a Ready is its value.

    Returns [(result, error), ...] in call order once every call has finished;
    exactly one of result and error is meaningful for each.
    """
    calls = (first, *others)
    here = next((i for i, call in enumerate(calls) if not isinstance(call, Ready)), None)
    futures = {i: _pool.submit(call) for i, call in enumerate(calls)
               if i != here and not isinstance(call, Ready)}
    mine = _outcome(calls[here]) if here is not None else None
    outcomes = []
    for i, call in enumerate(calls):
        if isinstance(call, Ready):
            outcomes.append((call.value, None))
        elif i == here:
            outcomes.append(mine)
        else:
            try:
                outcomes.append((futures[i].result(), None))
            except Exception as e:  # returned, not raised: the caller decides what to undo
                outcomes.append((None, e))
    return outcomes


def start(call):
    """Run a leaf call in the pool now; its Future (e.g. the init's Vault login, waited for
    later by Runtime.warm_up)."""
    return _pool.submit(call)


def _outcome(call):
    try:
        return call(), None
    except Exception as e:
        return None, e


def raise_first(outcomes):
    """The results, or the first error in call order."""
    for _, error in outcomes:
        if error is not None:
            raise error
    return [result for result, _ in outcomes]
