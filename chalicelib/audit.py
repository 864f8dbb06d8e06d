"""The audit trail: one DynamoDB record per decision, written before the answer.

A record holds who asked (principal, account, instance, source IP), what was
decided (outcome, rule, role, reason) and what was issued (the wrapping
accessors and the secret ID accessor) -- never a token, secret ID or signature.
The security team's own actions (audit reads, revocations) and interception
reports are records too (outcomes `admin` and `incident`).

Keys and indexes: chalicelib/audit_schema.py; queries: chalicelib/audit_query.py.
"""

import json
from dataclasses import dataclass, field, fields
from time import time as _now
from datetime import datetime, timezone

from .audit_schema import INTERNAL_ATTRIBUTES, TTL_ATTRIBUTE, index_attributes
from .aws_calls import call, try_call
from .errors import Unavailable

OUTCOMES = ("issued", "denied", "error", "incident", "admin", "registration")
# Fields held as JSON text in DynamoDB (and decoded when read).
# vault_audit_hmacs: stored by older versions (HMACs are computed when a record is shown now)
JSON_FIELDS = frozenset({"facts", "query", "target", "destroyed", "vault_audit_hmacs"})


@dataclass(slots=True)  # a misspelt field assigned in the pipeline is an error, not a lost value
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
    secret_id_expires_at: int | None = None  # when the issued secret ID expires (epoch seconds)
    # SHA-256 (hex) of the token registration key the issuance's answer carried (POST /v1/tokens)
    registration_key_sha256: str | None = None
    # security-team actions and incidents
    action: str | None = None  # audit.search, audit.show, revoke, lift, incident
    related_request_id: str | None = None  # the issuance an incident or revocation is about
    revocation_id: str | None = None
    target: dict | None = None  # what a revocation targets: {"instance": ...} / {"principal": ...} / ...
    query: dict | None = None  # the filters of an audit search
    result_count: int | None = None
    destroyed: list | None = None  # [{"request_id", "role", "secret_id_accessor", "result"}]
    quarantine_until: str | None = None
    # the rules the decision was made by: their serial and the SHA-256 of their text
    rules_serial: int | None = None
    rules_sha256: str | None = None
    # The principal the by-principal index keys on, as the caller's method derived it
    # (VerifiedCaller.canonical_principal: an AWS session's role ARN). Not an attribute of
    # its own: it is the index key. Unset, the record's method spells it from `principal`.
    index_principal: str | None = None

    def proven(self, caller):
        """Who the proof says the caller is: its principal, account, claimed machine."""
        self.principal, self.account = caller.principal, caller.account
        self.index_principal = caller.canonical_principal
        self.instance = caller.claimed.id if caller.claimed else None

    def fields(self):
        """The record as plain data without empty fields (also what the log line shows).
        Shallow: its values are strings, numbers and JSON-like data nobody changes here
        (dataclasses.asdict's deep copy cost ~3 ms per issuance, twice)."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "index_principal")
        return {k: v for k, v in values if v not in (None, "", {}, [])}


def _index_principal(record):
    if record.index_principal or not record.principal:
        return record.index_principal
    from .methods import index_principal_of

    return index_principal_of(record.method, record.principal)


class AuditStore:
    def __init__(self, dynamodb, table, retention_days):
        self._db = dynamodb
        self._table = table
        self._retention = retention_days * 86400

    def write(self, record):
        """Write the record; Unavailable if the store can't take it (the caller then issues nothing)."""
        item = record_item(record, self._retention)
        epoch = item["epoch"]["N"]
        try:
            _, exists = try_call("audit store", ("ConditionalCheckFailedException",), self._db.put_item,
                                 TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(request_id)")
        except Unavailable:
            # No answer to any attempt (read timeouts under load): the put's outcome is unknown,
            # and it may have landed. Taking back an issuance whose record landed would leave a
            # record that calls it issued, and the client's retry a second one (the boot storm
            # of `make bench` found 4 such). One consistent read tells.
            if self._landed(record.request_id, epoch):
                return
            raise
        if exists is not None:
            # Request IDs are ours (uuid4) and written once: the record is there because our own
            # first attempt landed and its answer was lost (botocore sent it again). Written.
            # Treating it as a failure would take back an issuance its record calls issued.
            return

    def _landed(self, request_id, epoch):
        """True when our record (its request ID, its epoch) is in the table; False when it is
        not, or when the table can't tell either."""
        try:
            item = self._db.get_item(TableName=self._table, Key={"request_id": {"S": request_id}},
                                     ConsistentRead=True).get("Item")
        except Exception:  # unavailable too: the caller takes the issuance back
            return False
        return bool(item) and item.get("epoch", {}).get("N") == epoch

    def get(self, request_id):
        """One record as plain data, or None (used by the tests and the security CLI)."""
        page = call("audit store", self._db.get_item, TableName=self._table,
                    Key={"request_id": {"S": request_id}}, ConsistentRead=True)
        item = page.get("Item")
        return item_to_record(item) if item else None

    def health(self):
        """None when the table answers, else what is wrong."""
        try:
            call("audit store", self._db.describe_table, TableName=self._table)
            return None
        except Exception as e:
            return getattr(e, "detail", "unavailable")


def record_item(record, retention_seconds):
    """The audit table's item for `record` (its index attributes and its expiry included):
    what AuditStore writes, and what its in-memory fake keeps (chalicelib/stores/memory.py)."""
    item = {}
    for key, value in record.fields().items():
        if key in JSON_FIELDS or isinstance(value, (dict, list)):
            item[key] = {"S": json.dumps(value, sort_keys=True, separators=(",", ":"))}
        elif key == "epoch":
            item[key] = {"N": f"{value:.3f}"}
        elif isinstance(value, int) and not isinstance(value, bool):
            item[key] = {"N": str(value)}
        else:
            item[key] = {"S": str(value)}
    indexed = index_attributes(record.request_id, item["epoch"]["N"], _index_principal(record), record.role)
    for key, value in indexed.items():
        item[key] = {"S": value}
    item[TTL_ATTRIBUTE] = {"N": str(int(record.epoch) + retention_seconds)}
    return item


def item_to_record(item):
    """A DynamoDB item of the audit table as plain data (what the API shows)."""
    out = {}
    for key, value in item.items():
        if key in INTERNAL_ATTRIBUTES:
            continue
        if "S" in value:
            out[key] = value["S"]
        elif "N" in value:
            number = float(value["N"])
            out[key] = int(number) if number.is_integer() and key != "epoch" else number
    for key in JSON_FIELDS & set(out):
        try:
            out[key] = json.loads(out[key])
        except ValueError:
            pass
    return out
