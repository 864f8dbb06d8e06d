"""The quarantine list: callers the broker refuses (403 `quarantined`) until a time.

Items (hash key `pk`, TTL on `expires_at`) named `quarantine#<kind>#<value>`:

- `instance#<id>`: an EC2 or GCE instance, an ECS task: every caller claiming it;
- `principal#<arn or email>`: an IAM role ARN covers every session of the role, a
  session ARN only that session, a service account email every caller of it;
- `instanceless#<email>`: only the callers of that service account that name no
  instance (GCP service-account ID tokens): placed with a GCE instance's quarantine,
  since whoever holds the instance can mint them from its metadata server.

AWS principals are keyed in one canonical spelling (`principal_key`): IAM user and
role names are case-insensitive, so `role/Demo-Batch` and `role/demo-batch` are one
key; a session name keeps its case. The admission transaction
(chalicelib/admission.py) checks the same keys atomically with the proof's spending.

An expired entry may linger until DynamoDB's TTL deletes it (up to a couple of days):
every read checks `until` itself.
"""

import threading
import time
from datetime import datetime, timezone

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import call, try_call
from ..errors import Quarantined, Unavailable
from ..records import Record

KINDS = ("instance", "principal", "instanceless")


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def principal_key(principal):
    """The one spelling of a principal in the quarantine list: an AWS ARN with its user or
    role name in lower case (IAM names are case-insensitive) and no path; anything else
    (a service account email, lower-cased: emails are too) as it is."""
    if not principal:
        return principal
    if principal.startswith("arn:"):
        from ..errors import InvalidProof
        from ..methods.aws.arn import parse_principal_arn

        try:
            arn = parse_principal_arn(principal)
        except InvalidProof:
            return principal
        if arn.kind == "assumed-role":
            return f"arn:{arn.partition}:sts::{arn.account}:assumed-role/{arn.name.lower()}/{arn.session_name}"
        return f"arn:{arn.partition}:iam::{arn.account}:{arn.kind}/{arn.name.lower()}"
    return principal.lower() if "@" in principal else principal


def role_key(principal):
    """The quarantine key of the IAM role (or user) behind an AWS principal, or None."""
    if not principal or not principal.startswith("arn:"):
        return None
    from ..errors import InvalidProof
    from ..methods.aws.arn import parse_principal_arn

    try:
        return principal_key(parse_principal_arn(principal).canonical_arn)
    except InvalidProof:
        return None


def quarantine_key(kind, value):
    if kind not in KINDS:
        raise ValueError(f"unknown quarantine kind {kind!r}")
    return f"quarantine#{kind}#{principal_key(value) if kind != 'instance' else value}"


def caller_keys(instance, principal, canonical=None):
    """The quarantine entries that would refuse this caller: its machine (EC2 or GCE
    instance, ECS task), its exact principal, its role (an AWS session's), and, for a
    caller naming no machine, the instance-less entry of its principal."""
    keys = []
    if instance:
        keys.append(quarantine_key("instance", instance))
    if principal:
        keys.append(quarantine_key("principal", principal))
        role = role_key(canonical or principal)
        if role and quarantine_key("principal", role) not in keys:
            keys.append(quarantine_key("principal", role))
        if not instance and not principal.startswith("arn:"):
            keys.append(quarantine_key("instanceless", principal))
    return keys


def split_caller_keys(instance, principal, canonical=None):
    """(own, shared): the caller's quarantine keys split by how many callers check them.

    Own keys (its machine; an AWS session's exact ARN; else its AWS principal) are checked
    in the admission transaction. Shared keys (an AWS role, a service account: every GCE
    instance, Cloud Run instance or GKE pod running as it) are checked by every caller of
    the role at once: in a transaction they would make concurrent boots cancel each other
    (TransactionConflict), so they are read beside it instead. A service-account token
    naming no instance has no own key."""
    keys = caller_keys(instance, principal, canonical)
    if not instance and principal and not principal.startswith("arn:"):
        return [], keys
    own = keys[:1]
    if instance and principal and ":assumed-role/" in principal:
        session = quarantine_key("principal", principal)
        if session in keys and session != role_key_of(principal):
            own.append(session)
    return own, [k for k in keys if k not in own]


def role_key_of(principal):
    role = role_key(principal)
    return quarantine_key("principal", role) if role else None


class Entry(Record, frozen=True):
    key: str
    revocation_id: str
    until: int

    @property
    def target(self):
        _, kind, value = self.key.split("#", 2)
        return kind, value


def quarantined_error(entry, now):
    """The 403 a caller gets for this entry (None when it has expired)."""
    if entry is None or entry.until <= now:
        return None
    kind, value = entry.target
    return Quarantined(f"this caller is quarantined by the security team until {iso(entry.until)}",
                       detail=f"quarantined: {kind} {value} by revocation {entry.revocation_id} until {iso(entry.until)}")


class QuarantineList:
    """The DynamoDB quarantine list (items `quarantine#...` of the quarantine table)."""

    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def check(self, keys):
        """Quarantined (403) if any of these entries is in force now."""
        raise_if_quarantined(self.entries(keys).values(), self._clock())

    def entries(self, keys):
        """{key: Entry or None}: consistent reads, at once (not a transaction: items every
        machine of a role reads must not make concurrent requests conflict)."""
        if not keys:
            return {}
        from ..concurrency import raise_first, settle

        items = raise_first(settle(*(lambda k=k: self._read(k) for k in keys)))
        return {key: _entry(item) if item else None for key, item in zip(keys, items)}

    def place(self, key, *, revocation_id, until, reason, by):
        """Quarantine `key` until `until`. A longer quarantine already in place stays;
        returns the Entry in force afterwards."""
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
            current = self.get(key)
            if current is not None:
                return current
        return Entry(key, revocation_id, until)

    def _read(self, key):
        page = call("quarantine store", self._db.get_item, TableName=self._table, Key={"pk": {"S": key}},
                    ConsistentRead=True, ProjectionExpression="pk, revocation_id, #until",
                    ExpressionAttributeNames={"#until": "until"})
        return page.get("Item")

    def get(self, key):
        page = call("quarantine store", self._db.get_item, TableName=self._table, Key={"pk": {"S": key}},
                    ConsistentRead=True)
        return _entry(page["Item"]) if page.get("Item") else None

    def lift(self, key, revocation_id):
        """Delete an entry if this revocation still owns it; True if deleted."""
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.delete_item,
            TableName=self._table, Key={"pk": {"S": key}},
            ConditionExpression="revocation_id = :rid", ExpressionAttributeValues={":rid": {"S": revocation_id}},
        )
        return not refused

    def health(self):
        try:
            call("quarantine store", self._db.describe_table, TableName=self._table)
            return None
        except Unavailable as e:
            return e.detail


def raise_if_quarantined(entries, now):
    for entry in entries:
        error = quarantined_error(entry, now)
        if error is not None:
            raise error


class RecentReads:
    """The quarantine entries of shared keys, read at most `max_age` seconds ago (only
    keys found clear are kept; a quarantined caller's keys are read every time).

    Every session of a role checks the role's key: in a boot storm one read per role per
    `max_age` in each Lambda environment instead of one per login. Safe because the
    revocation closes the gap: its second sweep runs `settle` seconds after its
    quarantine, and an issuance relying on a read older than its window when its record
    is written takes itself back (chalicelib/pipeline/issuance.py; the windows are set
    together in chalicelib/config.py). `check` returns when the oldest read it relied on
    was sent (monotonic), which starts that window.
    """

    def __init__(self, quarantine_list, max_age, clock=time.time, monotonic=time.monotonic):
        self._list = quarantine_list
        self._max_age = max_age
        self._clock = clock
        self._monotonic = monotonic
        self._reads = {}  # key -> (monotonic time the read was sent, None: clear, wall-clock time it was sent)
        self._lock = threading.Lock()

    def check(self, keys):
        """Quarantined (403) if an entry of `keys` is in force; else the monotonic time the
        oldest read relied on was sent (now, when nothing was relied on)."""
        now, wall = self._monotonic(), self._clock()
        with self._lock:
            known = {k: self._reads[k][:2] for k in keys if k in self._reads and self._young(self._reads[k], now, wall)}
        missing = [k for k in keys if k not in known]
        if missing:
            sent, sent_wall = self._monotonic(), self._clock()
            fresh = self._list.entries(missing)
            with self._lock:
                for key in missing:
                    known[key] = (sent, fresh.get(key))
                    if fresh.get(key) is None:  # only "clear" is kept: a lifted quarantine is seen at once
                        self._reads[key] = (sent, None, sent_wall)
                if len(self._reads) > 4096:  # many roles: forget the stale reads
                    self._reads = {k: v for k, v in self._reads.items() if self._young(v, now, wall)}
        raise_if_quarantined((entry for _, entry in known.values()), self._clock())
        return min((sent for sent, _ in known.values()), default=now)

    def recent(self, keys):
        """What `check` would return when every key was found clear by a read younger than
        `max_age` (no read needed, nothing raised); else None."""
        now, wall = self._monotonic(), self._clock()
        with self._lock:
            reads = [self._reads.get(k) for k in keys]
        if any(read is None or not self._young(read, now, wall) for read in reads):
            return None
        return min((read[0] for read in reads), default=now)

    def _young(self, read, now, wall):
        """Read less than `max_age` ago by both clocks. The monotonic clock may not count the
        time a Lambda environment spent frozen between invocations (a paused microVM's
        CLOCK_MONOTONIC can stand still): a read kept from before a long freeze would pass
        for fresh, after the revocation that quarantined the key had swept. The wall clock
        bounds it too (a clock stepped backwards makes the read stale, never younger)."""
        sent, _, sent_wall = read
        return now - sent < self._max_age and 0 <= wall - sent_wall < self._max_age


def _entry(item):
    return Entry(item["pk"]["S"], item.get("revocation_id", {}).get("S", ""), int(float(item["until"]["N"])))


entry_from_item = _entry
