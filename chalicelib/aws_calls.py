"""One way to call AWS APIs: AWS errors (botocore's or the lean clients', chalicelib/lean_aws/)
become the broker's typed errors."""

from .errors import Unavailable

_THROTTLING = frozenset({"ThrottlingException", "Throttling", "ProvisionedThroughputExceededException",
                         "RequestLimitExceeded", "TooManyRequestsException"})


def error_code(error):
    """The AWS error code of a botocore ClientError or a lean client's AwsError, or None."""
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
            # a lean client's connection error names its failure (ReadTimeoutError, ...), as botocore's class would
            detail=f"{backend} {getattr(fn, '__name__', 'call')} failed: {code or getattr(e, 'kind', None) or type(e).__name__}",
        ) from None


def try_call(backend, expected_codes, fn, /, *args, **kwargs):
    """Call a botocore client method and return (result, None), or (None, code) when
    AWS answered with one of the expected error codes. Anything else is Unavailable."""
    result, error = attempt(backend, expected_codes, fn, *args, **kwargs)
    return result, (error_code(error) if error is not None else None)
