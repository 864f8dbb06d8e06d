"""The quarantine list, the revocations, and the incident rate limit (one DynamoDB table).

Items (hash key `pk`, TTL on `expires_at`):

- `quarantine#instance#<id>` / `quarantine#principal#<arn or email>`: a caller the
  broker refuses (403 `quarantined`) until `until`; `revocation_id` says which
  revocation set it. A principal entry holding an IAM role ARN covers every session
  of the role; a session ARN only that session.
- `revocation#<id>`: what a revocation targeted, the quarantine entries it set, and
  whether it was lifted (`DELETE /v1/revocations/{id}`).
- `ratelimit#<scope>#<caller>#<window start>`: a counter, taken with a conditional update.

An expired entry may linger until DynamoDB's TTL deletes it (up to a couple of
days): every read checks `until` itself.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .audit_schema import TTL_ATTRIBUTE, canonical_principal
from .aws_calls import call, try_call
from .errors import RateLimited

# A revocation's item outlives its quarantine by this long (the audit trail keeps it for good).
REVOCATION_RETENTION = 30 * 86400


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def quarantine_key(kind, value):
    return f"quarantine#{kind}#{value}"


def caller_keys(instance, principal, canonical=None):
    """The quarantine entries that would refuse this caller: its machine (EC2 or GCE
    instance, ECS task), its exact principal, and its canonical principal (an AWS
    session's role ARN)."""
    keys = []
    if instance:
        keys.append(quarantine_key("instance", instance))
    if principal:
        keys.append(quarantine_key("principal", principal))
        canonical = canonical or canonical_principal(principal)
        if canonical and canonical != principal:
            keys.append(quarantine_key("principal", canonical))
    return keys


@dataclass(frozen=True)
class Entry:
    key: str
    revocation_id: str
    until: int

    @property
    def target(self):
        _, kind, value = self.key.split("#", 2)
        return kind, value


class QuarantineStore:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    # The issuance pipeline's check is part of the admission transaction
    # (chalicelib/admission.py): a ConditionCheck on each of caller_keys().

    # ---- revocations ------------------------------------------------------------------------

    def place(self, kind, value, *, revocation_id, until, reason, by):
        """Quarantine a target until `until`. A longer quarantine already in place stays;
        returns the Entry in force afterwards."""
        key = quarantine_key(kind, value)
        now = int(self._clock())
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.put_item,
            TableName=self._table,
            Item={"pk": {"S": key}, "revocation_id": {"S": revocation_id}, "until": {"N": str(until)},
                  "reason": {"S": reason}, "created_by": {"S": by}, "created_at": {"N": str(now)},
                  TTL_ATTRIBUTE: {"N": str(until)}},
            ConditionExpression="attribute_not_exists(pk) OR #until <= :until OR #until < :now",
            ExpressionAttributeNames={"#until": "until"},
            ExpressionAttributeValues={":until": {"N": str(until)}, ":now": {"N": str(now)}},
        )
        if refused:
            current = self.get_entry(key)
            if current is not None:
                return current
        return Entry(key, revocation_id, until)

    def get_entry(self, key):
        page = call("quarantine store", self._db.get_item, TableName=self._table, Key={"pk": {"S": key}},
                    ConsistentRead=True)
        return _entry(page["Item"]) if page.get("Item") else None

    def lift_entry(self, key, revocation_id):
        """Delete a quarantine entry if this revocation still owns it; True if deleted."""
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.delete_item,
            TableName=self._table, Key={"pk": {"S": key}},
            ConditionExpression="revocation_id = :rid", ExpressionAttributeValues={":rid": {"S": revocation_id}},
        )
        return not refused

    def put_revocation(self, revocation_id, *, target, reason, by, until, keys, request_id):
        now = int(self._clock())
        item = {
            "pk": {"S": f"revocation#{revocation_id}"},
            "target_kind": {"S": target[0]}, "target_value": {"S": target[1]},
            "reason": {"S": reason}, "created_by": {"S": by}, "created_at": {"N": str(now)},
            "request_id": {"S": request_id},
            TTL_ATTRIBUTE: {"N": str(max(until or 0, now) + REVOCATION_RETENTION)},
        }
        if until:
            item["until"] = {"N": str(until)}
        if keys:
            item["quarantine_keys"] = {"SS": list(keys)}
        call("quarantine store", self._db.put_item, TableName=self._table, Item=item,
             ConditionExpression="attribute_not_exists(pk)")

    def get_revocation(self, revocation_id):
        page = call("quarantine store", self._db.get_item, TableName=self._table,
                    Key={"pk": {"S": f"revocation#{revocation_id}"}}, ConsistentRead=True)
        item = page.get("Item")
        if not item:
            return None
        return {
            "revocation_id": revocation_id,
            "target": {item["target_kind"]["S"]: item["target_value"]["S"]},
            "reason": item["reason"]["S"],
            "created_by": item["created_by"]["S"],
            "until": int(item["until"]["N"]) if "until" in item else None,
            "quarantine_keys": sorted(item.get("quarantine_keys", {}).get("SS", [])),
            "lifted_at": int(item["lifted_at"]["N"]) if "lifted_at" in item else None,
        }

    def mark_lifted(self, revocation_id, by):
        call("quarantine store", self._db.update_item, TableName=self._table,
             Key={"pk": {"S": f"revocation#{revocation_id}"}},
             UpdateExpression="SET lifted_at = :now, lifted_by = :by",
             ExpressionAttributeValues={":now": {"N": str(int(self._clock()))}, ":by": {"S": by}})

    # ---- rate limits ---------------------------------------------------------------------------

    def take_slot(self, scope, caller, *, limit, window, message=None):
        """Count one event of `caller` in the current window; RateLimited (429) past `limit`."""
        now = int(self._clock())
        start = now - now % window
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
            TableName=self._table, Key={"pk": {"S": f"ratelimit#{scope}#{caller}#{start}"}},
            UpdateExpression="ADD hits :one SET #exp = :exp",
            ConditionExpression="attribute_not_exists(hits) OR hits < :limit",
            ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
            ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": str(limit)},
                                       ":exp": {"N": str(start + 2 * window)}},
        )
        if refused:
            raise RateLimited(message or f"too many {scope} reports from this caller; try again later",
                              retry_after=max(1, start + window - now),
                              detail=f"rate limit {scope} {caller}: {limit} per {window}s reached")

    def health(self):
        try:
            call("quarantine store", self._db.describe_table, TableName=self._table)
            return None
        except Exception as e:
            return getattr(e, "detail", "unavailable")


def _entry(item):
    return Entry(item["pk"]["S"], item.get("revocation_id", {}).get("S", ""), int(float(item["until"]["N"])))
