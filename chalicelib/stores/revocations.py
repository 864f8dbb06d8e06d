"""Revocations: what each one targeted, the quarantine entries it set, whether it was lifted.

Items `revocation#<id>` of the quarantine table (hash key `pk`). The item outlives its
quarantine by REVOCATION_RETENTION; the audit trail keeps the revocation for good.
"""

import time

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import call

REVOCATION_RETENTION = 30 * 86400


class RevocationStore:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def put(self, revocation_id, *, target, reason, by, until, keys, request_id):
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

    def get(self, revocation_id):
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
