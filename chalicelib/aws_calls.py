"""One way to call AWS APIs: AWS errors (botocore's, chalicelib/aws_clients.py) become the
broker's typed errors, and an answer without the part the broker reads is no answer."""

from .errors import Unavailable

_THROTTLING = frozenset({"ThrottlingException", "Throttling", "ProvisionedThroughputExceededException",
                         "RequestLimitExceeded", "TooManyRequestsException"})


def error_code(error):
    """The AWS error code of a botocore ClientError, or None."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def call(backend, fn, /, *args, **kwargs):
    """Call a botocore client method; every failure becomes Unavailable naming the backend."""
    result, _ = try_call(backend, (), fn, *args, **kwargs)
    return result


def attempt(backend, expected_codes, fn, /, *args, **kwargs):
    """Like try_call, but (None, the botocore error) for an expected code: for callers that
    read more than the code (a transaction's CancellationReasons)."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:
        code = error_code(e)
        if code is not None and code in expected_codes:
            return None, e
        raise Unavailable(
            f"{backend} is unavailable", backend=backend,
            retry_after=2 if code in _THROTTLING else 5,
            detail=f"{backend} {getattr(fn, '__name__', 'call')} failed: {code or type(e).__name__}",
        ) from None


def try_call(backend, expected_codes, fn, /, *args, **kwargs):
    """Call a botocore client method and return (result, None), or (None, code) when
    AWS answered with one of the expected error codes. Anything else is Unavailable."""
    result, error = attempt(backend, expected_codes, fn, *args, **kwargs)
    return result, (error_code(error) if error is not None else None)


def answer_part(backend, page, key, kind=dict):
    """page[key], which every answer of the operation holds (AWS sends an empty list or
    object, never nothing): without it the answer is no answer (Unavailable), never "no
    instance", "no tags" or "no roles". botocore parses whatever 2xx body it gets."""
    part = page.get(key) if isinstance(page, dict) else None
    if not isinstance(part, kind):
        raise Unavailable(f"{backend} is unavailable", backend=backend, retry_after=5,
                          detail=f"{backend} answered without {key}")
    return part


# Transactions cancelled only by conflicts with concurrent ones are tried again (jittered).
CONFLICT_ATTEMPTS = 4
CONFLICT_BACKOFF = 0.02  # seconds, doubled per attempt
CONFLICT_BACKOFF_MAX = 0.32  # seconds: the longest wait between two attempts


def transact(backend, fn, items, *, sleep, attempts=CONFLICT_ATTEMPTS):
    """A DynamoDB transaction (fn: the client's transact_write_items): None when it went
    through, else its cancellation (TransactionCanceledException; anything else is
    Unavailable). DynamoDB cancels concurrent transactions on one item with
    TransactionConflict, nothing written: contention, not an outage. Those are tried
    again `attempts` times in all, with jitter, first."""
    import random

    for attempt_number in range(attempts):
        _, cancelled = attempt(backend, ("TransactionCanceledException",), fn, TransactItems=items)
        if cancelled is None or not only_conflicts(cancelled) or attempt_number == attempts - 1:
            return cancelled
        sleep(random.uniform(0, min(CONFLICT_BACKOFF * 2 ** attempt_number, CONFLICT_BACKOFF_MAX)))
    return cancelled


def cancellation_codes(error):
    """The code of each item of a cancelled transaction, in item order ("None": no problem)."""
    return [str((r or {}).get("Code")) for r in getattr(error, "response", {}).get("CancellationReasons") or []]


def only_conflicts(error):
    """Was the transaction cancelled by concurrent transactions only (nothing else failed)?"""
    codes = set(cancellation_codes(error))
    return "TransactionConflict" in codes and codes <= {"TransactionConflict", "None"}


def failed_items(error):
    """The indexes of the transaction items whose condition failed, or None when the
    transaction was cancelled for another reason (a conflict, throttling)."""
    codes = cancellation_codes(error)
    failed = {i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"}
    others = [code for code in codes if code not in ("None", "ConditionalCheckFailed")]
    return None if others or not failed else failed
