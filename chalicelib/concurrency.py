"""Overlap independent backend calls (the two Vault calls, the EC2 and IAM reads, the
replay write beside the fact reads): each request waits for the slowest, not the sum.

Only leaf calls go to the shared pool (they never wait on the pool themselves), and
the first call runs in the caller's thread, so a busy pool can't deadlock a request.
"""

from concurrent.futures import ThreadPoolExecutor

_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="broker-io")


def settle(first, *others):
    """Run `first` here and `others` in the pool, all at once.

    Returns [(result, error), ...] in call order once every call has finished;
    exactly one of result and error is meaningful for each.
    """
    futures = [_pool.submit(call) for call in others]
    outcomes = [_outcome(first)]
    for future in futures:
        try:
            outcomes.append((future.result(), None))
        except Exception as e:  # returned, not raised: the caller decides what to undo
            outcomes.append((None, e))
    return outcomes


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
