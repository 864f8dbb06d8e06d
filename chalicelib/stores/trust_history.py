"""When a role's trust policy last let others than its service assume it: `trust#<key>`
items of the quarantine table.

A session outlives the trust policy it was made under (up to the role's
MaxSessionDuration, 12 h at most). A session made while anyone but EC2 (or ECS) could
assume the role may be named after any instance (or task) of it; judged against today's
trust policy alone, it would pass once the policy is restored. So the AWS method records,
per role, the last time it read a policy that was not service-only (`saw_open`), and the
first time it read a service-only one after that (`saw_closed`), and refuses instance and
task claims of the role until `closed + MaxSessionDuration` (methods/aws/trust.py,
`recently_open`). The store knows no principal: the method hands in the key (the role's
canonical ARN). Items are kept two maximum session lengths past their last write (TTL).
"""

import time
from dataclasses import dataclass

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import call, try_call

MAX_SESSION_SECONDS = 12 * 3600  # IAM's upper bound of MaxSessionDuration
KEEP_FOR = 2 * MAX_SESSION_SECONDS


@dataclass(frozen=True)
class Sighting:
    open_seen: int | None = None  # the last read of a policy that let others assume the role
    closed_seen: int | None = None  # the first read of a service-only policy after an open one

    @property
    def closed_after_open(self):
        """The time a service-only policy was first read after the last open one, else None."""
        if self.open_seen is None or self.closed_seen is None or self.closed_seen <= self.open_seen:
            return None
        return self.closed_seen


def _key(key):
    return {"pk": {"S": f"trust#{key}"}}


class TrustHistory:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def saw_open(self, key, at):
        """A policy that let others assume the role was read at `at` (keeps the latest)."""
        at = int(at)
        try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                 TableName=self._table, Key=_key(key),
                 UpdateExpression="SET open_seen = :at, #exp = :exp",
                 ConditionExpression="attribute_not_exists(open_seen) OR open_seen < :at",
                 ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
                 ExpressionAttributeValues={":at": {"N": str(at)}, ":exp": {"N": str(at + KEEP_FOR)}})

    def saw_closed(self, key, at):
        """A service-only policy was read at `at`: recorded when it is the first such read
        after the last open one (the earliest bound on when the policy was closed)."""
        at = int(at)
        try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                 TableName=self._table, Key=_key(key),
                 UpdateExpression="SET closed_seen = :at, #exp = :exp",
                 ConditionExpression="open_seen < :at AND (attribute_not_exists(closed_seen) "
                                     "OR closed_seen <= open_seen OR closed_seen > :at)",
                 ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
                 ExpressionAttributeValues={":at": {"N": str(at)}, ":exp": {"N": str(at + KEEP_FOR)}})

    def get(self, key):
        """The role's Sighting, or None when no open policy was ever recorded (or it expired)."""
        page = call("quarantine store", self._db.get_item, TableName=self._table, Key=_key(key),
                    ConsistentRead=True, ProjectionExpression="open_seen, closed_seen, #exp",
                    ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE})
        item = page.get("Item")
        if not item or "open_seen" not in item:
            return None
        # DynamoDB deletes expired items late (up to days): an expired one counts as gone.
        expires = item.get(TTL_ATTRIBUTE, {}).get("N")
        if expires is not None and int(expires) <= int(self._clock()):
            return None
        return Sighting(int(item["open_seen"]["N"]),
                        int(item["closed_seen"]["N"]) if "closed_seen" in item else None)

    def health(self):
        return None
