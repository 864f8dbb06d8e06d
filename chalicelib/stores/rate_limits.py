"""Rate-limit counters: events per scope, caller and fixed window.

Items `ratelimit#<scope>#<caller>#<window start>` of the quarantine table, counted with
a conditional update (the admission transaction counts `issue-identity` the same way).
"""

import time

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import try_call
from ..errors import RateLimited


def window_start(now, window):
    return now - now % window


def counter_key(scope, caller, now, window):
    """The key of `caller`'s counter item for the window `now` falls in."""
    return {"pk": {"S": f"ratelimit#{scope}#{caller}#{window_start(now, window)}"}}


def limited(scope, caller, limit, window, now, message=None):
    start = window_start(now, window)
    return RateLimited(message or f"too many {scope} reports from this caller; try again later",
                       retry_after=max(1, start + window - now),
                       detail=f"rate limit {scope} {caller}: {limit} per {window}s reached", scope=scope)


class RateLimitStore:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def take_slot(self, scope, caller, *, limit, window, message=None):
        """Count one event of `caller` in the current window; RateLimited (429) past `limit`."""
        now = int(self._clock())
        start = window_start(now, window)
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
            TableName=self._table, Key=counter_key(scope, caller, now, window),
            UpdateExpression="ADD hits :one SET #exp = :exp",
            ConditionExpression="attribute_not_exists(hits) OR hits < :limit",
            ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
            ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": str(limit)},
                                       ":exp": {"N": str(start + 2 * window)}},
        )
        if refused:
            raise limited(scope, caller, limit, window, now, message)
