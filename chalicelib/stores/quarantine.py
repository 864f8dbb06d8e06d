"""The quarantine list: callers the broker refuses (403 `quarantined`) until a time.

Items (hash key `pk`, TTL on `expires_at`) named `quarantine#<kind>#<value>`:

- `instance#<id>`: a machine (an EC2 or GCE instance, an ECS task): every caller claiming it;
- `principal#<principal>`: a principal, as its method spells it (an IAM role ARN covers
  every session of the role, a session ARN only that session, a service account email
  every caller of it);
- `instanceless#<principal>`: only the callers of that principal that name no machine
  (GCP service-account ID tokens): placed with a GCE instance's quarantine, since whoever
  holds the instance can mint them from its metadata server.

Which entries refuse a caller, and how a principal is spelled in them, is its method's
word (VerifiedCaller.quarantine_own / quarantine_shared, methods/<name>/identity.py):
the list takes the keys as they are. The admission transaction (chalicelib/admission.py)
checks a caller's own keys atomically with the proof's spending.

An expired entry may linger until DynamoDB's TTL deletes it (up to a couple of days):
every read checks `until` itself.
"""

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import call, cancellation_codes, failed_items, transact, try_call
from ..errors import Quarantined, Unavailable

KINDS = ("instance", "principal", "instanceless")

# The quarantine epoch: one item of the quarantine table (not a `quarantine#` entry, not a
# rate-limit counter) whose value changes in the same transaction as every quarantine
# placed. An issuance reads it with its replay lookup, beside STS (chalicelib/admission.py):
# while it is unchanged, no quarantine was placed since this process read a role's key, and
# that read still holds (RecentReads). So the keys a whole role shares cost no read per
# login, and a new quarantine is seen by the next login of every Lambda environment.
EPOCH_KEY = "epoch#quarantine"
# How long an epoch vouches for a read: a writer that does not change the epoch (an entry
# put by hand, an older broker's revocation during an upgrade) is seen this late at worst.
EPOCH_TRUST_SECONDS = 60.0
# Every placement changes the one epoch item, so revocations run at once (a script, an
# incident) cancel each other's transactions (TransactionConflict): a placement is tried
# this many times (about 2 s of backoff at most) before its revocation answers 503.
PLACE_CONFLICT_ATTEMPTS = 10
PLACE_ROUNDS = 3  # a placement or lift whose entry changed under it is tried again
# Each revocation holding a key is an attribute of its entry: "holder#<revocation ID>" = its until.
HOLDER_PREFIX = "holder#"


def new_epoch():
    return str(uuid.uuid4())


def epoch_of(item):
    """The epoch value of the epoch item as read (None: no epoch item, or no value)."""
    value = (item or {}).get("epoch", {}).get("S")
    return value or None


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def quarantine_key(kind, value):
    """The item key of a quarantine entry; `value` is spelled by the method the entry is
    about (methods/<name>/identity.py `principal_key`): the list never parses a principal."""
    if kind not in KINDS:
        raise ValueError(f"unknown quarantine kind {kind!r}")
    return f"quarantine#{kind}#{value}"


def keys_of(entries):
    """[item key] of ((kind, value), ...) entries (a VerifiedCaller's quarantine_own/_shared)."""
    return [quarantine_key(kind, value) for kind, value in entries]


@dataclass(frozen=True)
class Entry:
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

    def __init__(self, dynamodb, table, clock=time.time, sleep=time.sleep):
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._sleep = sleep

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
        """Quarantine `key` until `until` on behalf of `revocation_id`; returns the Entry in
        force afterwards.

        Every revocation that asked for the key stays on its entry as a holder (an
        attribute `holder#<revocation ID>`: its until), so that lifting one leaves the key
        quarantined by the longest other one still in force. The entry's own fields
        (revocation_id, until: what a login is refused by) are the longest holder's. A
        longer quarantine replaces them, in the same transaction as a new epoch (an
        issuance that reads the new epoch reads its shared keys again, so it sees this
        entry). A shorter one is only added as a holder: nothing a login sees changes."""
        now = int(self._clock())
        names = {"#until": "until", "#holder": HOLDER_PREFIX + revocation_id, "#exp": TTL_ATTRIBUTE}
        values = {":rid": {"S": revocation_id}, ":until": {"N": str(until)}, ":now": {"N": str(now)},
                  ":reason": {"S": reason}, ":by": {"S": by}, ":one": {"N": "1"}}
        in_force = {
            "TableName": self._table, "Key": {"pk": {"S": key}},
            "UpdateExpression": ("SET revocation_id = :rid, #until = :until, reason = :reason, created_by = :by, "
                                 "created_at = :now, #exp = :until, #holder = :until ADD version :one"),
            "ConditionExpression": "attribute_not_exists(pk) OR #until <= :until OR #until < :now",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
        }
        for _ in range(PLACE_ROUNDS):
            cancelled = transact("quarantine store", self._db.transact_write_items,
                                 [{"Update": in_force}, {"Update": self._epoch_change(now)}], sleep=self._sleep,
                                 attempts=PLACE_CONFLICT_ATTEMPTS)
            if cancelled is None:
                return Entry(key, revocation_id, until)
            if failed_items(cancelled) != {0}:  # a conflict that outlasted the retries, throttling
                raise Unavailable("the quarantine store is unavailable", backend="quarantine store",
                                  detail="transact_write_items was cancelled: " + ",".join(cancellation_codes(cancelled)))
            # A longer quarantine is in force: this revocation becomes one of its holders.
            _, refused = try_call(
                "quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                TableName=self._table, Key={"pk": {"S": key}}, UpdateExpression="SET #holder = :until ADD version :one",
                ConditionExpression="attribute_exists(pk) AND #until > :until AND #until >= :now",
                ExpressionAttributeNames={"#until": "until", "#holder": names["#holder"]},
                ExpressionAttributeValues={":until": values[":until"], ":now": values[":now"], ":one": values[":one"]})
            current = None if refused else self.get(key)
            if current is not None and current.until >= until:
                return current
            # Security-critical: the longer entry was lifted (or shortened) since the refusal:
            # never answer an entry nobody holds; place this one again.
        raise Unavailable("the quarantine store is unavailable", backend="quarantine store",
                          detail=f"the quarantine entry changed under {PLACE_ROUNDS} placements in a row")

    def _epoch_change(self, now):
        return {"TableName": self._table, "Key": {"pk": {"S": EPOCH_KEY}},
                "UpdateExpression": "SET epoch = :epoch, changed_at = :now",
                "ExpressionAttributeValues": {":epoch": {"S": new_epoch()}, ":now": {"N": str(now)}}}

    def seed_epoch(self):
        """Write a first epoch when there is none (a table no quarantine was ever placed
        in); returns it, or None when another writer got there first (its value unknown)."""
        epoch = new_epoch()
        _, refused = try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.put_item,
                              TableName=self._table,
                              Item={"pk": {"S": EPOCH_KEY}, "epoch": {"S": epoch},
                                    "changed_at": {"N": str(int(self._clock()))}},
                              ConditionExpression="attribute_not_exists(pk)")
        return None if refused else epoch

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
        """Take `revocation_id`'s hold off `key`. True when the key is free afterwards
        because of it: the entry was this revocation's and no other holder is in force.
        When another is (a shorter revocation placed under this one), the entry becomes the
        longest of them, still quarantined, and False; False too when this revocation held
        the key only under a longer one, or not at all."""
        for _ in range(PLACE_ROUNDS):
            page = call("quarantine store", self._db.get_item, TableName=self._table, Key={"pk": {"S": key}},
                        ConsistentRead=True)
            item = page.get("Item")
            if item is None:
                return False
            holders = _holders(item)
            owner = item.get("revocation_id", {}).get("S")
            if owner != revocation_id:
                if revocation_id in holders:  # held under a longer revocation: its own hold goes
                    # (only from the entry as it is: an update of a lifted entry would write a stub)
                    try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                             TableName=self._table, Key={"pk": {"S": key}},
                             UpdateExpression="REMOVE #holder ADD version :one",
                             ConditionExpression="attribute_exists(#until)",
                             ExpressionAttributeNames={"#holder": HOLDER_PREFIX + revocation_id, "#until": "until"},
                             ExpressionAttributeValues={":one": {"N": "1"}})
                return False
            now = int(self._clock())
            others = {rid: until for rid, until in holders.items() if rid != revocation_id and until > now}
            # Security-critical: the version read above must still be the entry's, or a
            # revocation placed under this one meanwhile would be lifted with it.
            unchanged = ("version = :version" if "version" in item else "attribute_not_exists(version)")
            version = {":version": item["version"]} if "version" in item else {}
            if not others:
                _, refused = try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.delete_item,
                                      TableName=self._table, Key={"pk": {"S": key}},
                                      ConditionExpression=f"revocation_id = :rid AND {unchanged}",
                                      ExpressionAttributeValues={":rid": {"S": revocation_id}, **version})
                if not refused:
                    return True
                continue
            heir, heir_until = max(others.items(), key=lambda kv: (kv[1], kv[0]))
            _, refused = try_call(
                "quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                TableName=self._table, Key={"pk": {"S": key}},
                UpdateExpression="SET revocation_id = :heir, #until = :until, #exp = :until, reason = :reason "
                                 "REMOVE #holder ADD version :one",
                ConditionExpression=f"revocation_id = :rid AND {unchanged}",
                ExpressionAttributeNames={"#until": "until", "#exp": TTL_ATTRIBUTE,
                                          "#holder": HOLDER_PREFIX + revocation_id},
                ExpressionAttributeValues={":heir": {"S": heir}, ":until": {"N": str(heir_until)},
                                           ":reason": {"S": f"held by revocation {heir} since {revocation_id} "
                                                             f"was lifted"},
                                           ":rid": {"S": revocation_id}, ":one": {"N": "1"}, **version})
            if not refused:
                return False
        raise Unavailable("the quarantine store is unavailable", backend="quarantine store",
                          detail=f"the quarantine entry changed under {PLACE_ROUNDS} lifts in a row")

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
    """The quarantine entries of shared keys, read before and still holding (only keys
    found clear are kept; a quarantined caller's keys are read every time).

    Every session of a role checks the role's key. A read holds while the quarantine
    epoch the login read with its replay lookup (`lookup`) is the one read before it,
    for up to EPOCH_TRUST_SECONDS: no quarantine was placed since, so in a boot storm a
    role's key is read once per Lambda environment, and a new quarantine is seen by the
    next login. Without an epoch, a read holds `max_age` seconds. Either way a
    quarantine can land after the read a login relied on: the revocation closes that
    gap (its second sweep runs `settle` seconds after its quarantine, and an issuance
    relying on a read older than its window when its record is written takes itself
    back: chalicelib/pipeline/issuance.py; the windows are set together in
    chalicelib/config.py). `check` returns when the newest evidence it relied on was
    sent (monotonic): the oldest key's read, or the epoch read that vouched for it.
    """

    def __init__(self, quarantine_list, max_age, clock=time.time, monotonic=time.monotonic):
        self._list = quarantine_list
        self._max_age = max_age
        self._clock = clock
        self._monotonic = monotonic
        # key -> (monotonic time the read was sent, wall-clock time it was sent, the epoch read before it)
        self._reads = {}
        self._lock = threading.Lock()

    def check(self, keys, lookup=None):
        """Quarantined (403) if an entry of `keys` is in force; else the monotonic time the
        evidence relied on was sent (now, when nothing was relied on). `lookup` (a Lookup,
        chalicelib/admission.py) must have been answered before this call: reads made here
        are kept under its epoch."""
        now, wall = self._monotonic(), self._clock()
        with self._lock:
            known = {k: (self._holds(self._reads.get(k), lookup, now, wall), None) for k in keys}
        known = {k: v for k, v in known.items() if v[0] is not None}
        missing = [k for k in keys if k not in known]
        if missing:
            epoch = lookup.epoch if lookup is not None else None
            sent, sent_wall = self._monotonic(), self._clock()
            fresh = self._list.entries(missing)
            with self._lock:
                for key in missing:
                    known[key] = (sent, fresh.get(key))
                    if fresh.get(key) is None:  # only "clear" is kept: a lifted quarantine is seen at once
                        self._reads[key] = (sent, sent_wall, epoch)
                if len(self._reads) > 4096:  # many roles: forget the reads that hold no more
                    self._reads = {k: v for k, v in self._reads.items() if self._holds(v, lookup, now, wall)}
        raise_if_quarantined((entry for _, entry in known.values()), self._clock())
        return min((sent for sent, _ in known.values()), default=now)

    def recent(self, keys, lookup=None):
        """What `check` would return when every key was found clear by a read that still
        holds (no read needed, nothing raised); else None."""
        now, wall = self._monotonic(), self._clock()
        with self._lock:
            held = [self._holds(self._reads.get(k), lookup, now, wall) for k in keys]
        if any(sent is None for sent in held):
            return None
        return min(held, default=now)

    def _holds(self, read, lookup, now, wall):
        """When the evidence that `read` still holds was sent (monotonic), or None.

        Vouched for by the epoch: the login's lookup read the same epoch as the one read
        before this key was (security-critical: the epoch changes in the transaction that
        places any quarantine, so an unchanged epoch means none was placed between the two
        reads); the evidence is then the lookup, and the key's read is at most
        EPOCH_TRUST_SECONDS old. Any other epoch: read again, however young the read.
        Without an epoch (none read, or no lookup): young, read less than `max_age` ago
        by both clocks.
        The monotonic clock may not count the time a Lambda environment spent frozen
        between invocations (a paused microVM's CLOCK_MONOTONIC can stand still): a read
        kept from before a long freeze would pass for fresh, after the revocation that
        quarantined the key had swept. The wall clock bounds it too (a clock stepped
        backwards makes the read stale, never younger)."""
        if read is None:
            return None
        sent, sent_wall, epoch = read
        if lookup is not None and lookup.epoch is not None:  # an epoch was read: it alone decides
            if epoch == lookup.epoch and 0 <= lookup.sent_wall - sent_wall < EPOCH_TRUST_SECONDS:
                return max(sent, lookup.sent)
            return None
        if now - sent < self._max_age and 0 <= wall - sent_wall < self._max_age:
            return sent
        return None


def _holders(item):
    """{revocation ID: until} of an entry's holders (an entry written before holders: none)."""
    return {name[len(HOLDER_PREFIX):]: int(float(value["N"])) for name, value in item.items()
            if name.startswith(HOLDER_PREFIX) and "N" in value}


def _entry(item):
    """An entry as read; one without its `until` (no writer of the broker leaves one) is in
    force for no time, never a crash of the login that reads it."""
    until = item.get("until", {}).get("N")
    return Entry(item["pk"]["S"], item.get("revocation_id", {}).get("S", ""), int(float(until)) if until else 0)


entry_from_item = _entry
