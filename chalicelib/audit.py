"""The audit trail: one DynamoDB record per decision, written before the answer.

A record holds who asked (principal, account, instance, source IP), what was
decided (outcome, rule, role, reason) and what was issued (the wrapping
accessors and the secret ID accessor) -- never a token, secret ID or signature.
"""

import json
from time import time as _now
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .aws_calls import call

OUTCOMES = ("issued", "denied", "error")


@dataclass
class AuditRecord:
    request_id: str
    method: str
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    epoch: float = field(default_factory=_now)
    outcome: str = "error"
    code: str = ""
    reason: str = ""
    role: str | None = None
    rule: str | None = None
    principal: str | None = None
    account: str | None = None
    instance: str | None = None
    facts: dict | None = None
    source_ip: str | None = None
    api_request_id: str | None = None
    role_id_wrap_accessor: str | None = None
    secret_id_wrap_accessor: str | None = None
    secret_id_accessor: str | None = None

    def fields(self):
        """The record as plain data without empty fields (also what the log line shows)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, "", {})}


class AuditStore:
    def __init__(self, dynamodb, table, retention_days):
        self._db = dynamodb
        self._table = table
        self._retention = retention_days * 86400

    def write(self, record):
        """Write the record; Unavailable if the store can't take it (the caller then issues nothing)."""
        item = {}
        for key, value in record.fields().items():
            if key == "facts":
                item[key] = {"S": json.dumps(value, sort_keys=True, separators=(",", ":"))}
            elif key == "epoch":
                item[key] = {"N": f"{value:.3f}"}
            else:
                item[key] = {"S": str(value)}
        item["expires_at"] = {"N": str(int(record.epoch) + self._retention)}
        call("audit store", self._db.put_item, TableName=self._table, Item=item,
             ConditionExpression="attribute_not_exists(request_id)")

    def get(self, request_id):
        """One record as plain data, or None (used by the tests and the security CLI)."""
        page = call("audit store", self._db.get_item, TableName=self._table,
                    Key={"request_id": {"S": request_id}}, ConsistentRead=True)
        item = page.get("Item")
        if not item:
            return None
        out = {k: (v.get("S") if "S" in v else float(v["N"])) for k, v in item.items()}
        if "facts" in out:
            out["facts"] = json.loads(out["facts"])
        return out

    def health(self):
        """None when the table answers, else what is wrong."""
        try:
            call("audit store", self._db.describe_table, TableName=self._table)
            return None
        except Exception as e:
            return getattr(e, "detail", "unavailable")
