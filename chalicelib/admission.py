"""Admit a verified proof: spent once, its caller not quarantined, within its budget.

One DynamoDB transaction (TransactWriteItems) does all three, so a refused request
changes nothing: a replayed proof or a quarantined caller never uses up the caller's
per-identity rate budget (a replay attacker can't lock the real machine out), and a
request over budget leaves no half-written state. The cancellation reasons say which
condition failed.

Before that, the replay lookup (`look_up`) runs beside the proof's verification: a
replayed proof is refused before any fact of its caller is read or any budget counted,
and costs at most the one STS call (or certificate fetch) a forged proof costs anyway.
The same request (BatchGetItem) reads the quarantine epoch (chalicelib/stores/
quarantine.py), which says whether this process's reads of a role's quarantine key still
hold. Proofs this process saw spent are refused with no call at all (SpentProofs). The
security routes look up first and verify after (`seen`): they are not on a boot's path.

Stores know no method: callers hand in the proof hash, the budget keys and the
quarantine keys (from the VerifiedCaller, whose method derived them).
"""

import threading
import time
from dataclasses import dataclass

from .aws_calls import call, cancellation_codes, failed_items, transact, try_call
from .concurrency import Ready
from .audit_schema import TTL_ATTRIBUTE
from .errors import ProofReplayed, Quarantined, Unavailable
from .stores.rate_limits import counter_key, limited, window_start

# STS accepts a signature for 15 minutes; keep the record at least that long past our own window.
STS_SIGNATURE_LIFETIME = 15 * 60
IDENTITY_SCOPE = "issue-identity"  # the per-identity budget's counters (stores.rate_limits items)
PRINCIPAL_SCOPE = "issue-principal"  # the per-principal budget's: every session of one role, one account
BUDGET_SCOPES = {"identity": IDENTITY_SCOPE, "principal": PRINCIPAL_SCOPE}  # methods/base.py's budget names
_BUDGET_MESSAGES = {
    PRINCIPAL_SCOPE: "too many credentials asked for by callers of this principal (all its sessions) recently; "
                     "try again later"}
LOOKUP_ATTEMPTS = 3  # BatchGetItem answers keys it did not read (throttling) as UnprocessedKeys


def replayed():
    return ProofReplayed("this proof was already used; sign a new one")


def over_budget(scope, key, budget_limit, now):
    """The refusal (429) of a caller over the budget `scope` of `key`."""
    return limited(scope, key, budget_limit.count, budget_limit.window, now, _BUDGET_MESSAGES.get(
        scope, "too many credentials asked for by this caller recently; try again later"))


@dataclass(frozen=True)
class Lookup:
    """What an issuance's replay lookup found besides "not spent": when it was sent (both
    clocks), and the quarantine epoch it read (None: none, or no quarantine table)."""
    sent: float
    sent_wall: float
    epoch: object = None


class SpentProofs:
    """Proof hashes this process saw spent (its own issuances', and replays the store
    refused): a replay sent to the same Lambda environment again is refused with no
    call at all. Bounded; a forgotten hash only costs the lookup again. Only ever says
    "spent" for a proof the replay store said was spent, so it can't refuse a new one."""

    def __init__(self, limit=8192):
        self._hashes = {}
        self._limit = limit
        self._lock = threading.Lock()

    def __contains__(self, proof_hash):
        return proof_hash in self._hashes

    def add(self, proof_hash):
        with self._lock:
            self._hashes[proof_hash] = None
            if len(self._hashes) > self._limit:  # forget the oldest half
                self._hashes = dict.fromkeys(list(self._hashes)[self._limit // 2:])


def counted_budgets(has_quarantine_table, identity_key, limit, budgets):
    """[(scope, key, Limit)] an admission counts (none without a quarantine table): the
    identity's budget and every other budget the caller counts that has a key and a limit."""
    if not has_quarantine_table:
        return []
    counted = [(IDENTITY_SCOPE, identity_key, limit)] if identity_key is not None and limit else []
    counted += [(scope, key, budget_limit) for scope, key, budget_limit in budgets
                if key is not None and budget_limit]
    return counted


class SharedKeyReads:
    """The keys many callers share, read beside the admission transaction: Admission's, and
    its in-memory fake's (chalicelib/stores/memory.py). Uses `_shared` (RecentReads or None),
    `_monotonic`, `_seeded` and `_seed_epoch`."""

    def check_shared(self, keys, lookup=None):
        """Quarantined (403) if a key many callers share (a role's ARN, a service account
        every instance runs as) is in force; else the monotonic time the oldest read relied
        on was sent. Not in the transaction: every machine of a role would check the same
        item, and concurrent transactions on one item cancel each other
        (TransactionConflict) in a boot storm. Read through recent reads (see RecentReads),
        which the quarantine epoch of `lookup` (answered before this call) vouches for."""
        if self._shared is None or not keys:
            return self._monotonic()
        if lookup is not None and lookup.epoch is None and not self._seeded:
            lookup = self._seed_epoch(lookup)
        return self._shared.check(keys, lookup)

    def shared_check(self, keys, lookup=None):
        """`check_shared(keys, lookup)` as a call for `settle`: Ready when this process's
        recent reads answer it, so a boot storm's logins don't hand a cache hit to a thread."""
        if self._shared is None or not keys:
            return Ready(self._monotonic())
        sent = self._shared.recent(keys, lookup)
        return Ready(sent) if sent is not None else (lambda: self.check_shared(keys, lookup))


class Admission(SharedKeyReads):
    def __init__(self, dynamodb, replay_table, quarantine_table=None, *, shared_key_max_age=0.0, clock=time.time,
                 sleep=time.sleep, monotonic=time.monotonic):
        from .stores.quarantine import QuarantineList, RecentReads

        self._db = dynamodb
        self._replay = replay_table
        self._quarantine = quarantine_table  # None: no quarantine and no rate limits
        # The quarantine list's own reads (which entry refused a caller), and the shared keys'
        # recent reads (a role's key, read once per `shared_key_max_age` in this process).
        self._list = QuarantineList(dynamodb, quarantine_table, clock) if quarantine_table else None
        self._shared = (RecentReads(self._list, shared_key_max_age, clock, monotonic)
                        if quarantine_table else None)
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._spent = SpentProofs()
        self._seeded = False  # a first quarantine epoch written (or tried) by this process

    def seen(self, proof_hash):
        """ProofReplayed when this proof was spent before: the security routes' lookup,
        before they verify."""
        if proof_hash in self._spent or self._replay_record(proof_hash) is not None:
            raise self._refused_replay(proof_hash)

    def _refused_replay(self, proof_hash):
        """The replay store said this proof is spent: remembered, and the refusal to raise."""
        self._spent.add(proof_hash)
        return replayed()

    def lookup_call(self, proof_hash):
        """The replay lookup of an issuance, as a call for `settle` beside the proof's
        verification. Raises ProofReplayed at once, before any call is made, for a proof
        this process saw spent."""
        if proof_hash in self._spent:
            raise replayed()
        return lambda: self.look_up(proof_hash)

    def look_up(self, proof_hash):
        """ProofReplayed when the replay store has this proof; else a Lookup with the
        quarantine epoch, read in the same request (consistent reads, one BatchGetItem)."""
        sent, sent_wall = self._monotonic(), self._clock()
        if self._quarantine is None:  # no epoch to read: the replay record alone
            self.seen(proof_hash)
            return Lookup(sent, sent_wall)
        from .stores.quarantine import EPOCH_KEY, epoch_of

        found = self._batch_get({
            self._replay: {"Keys": [{"proof_hash": {"S": proof_hash}}], "ConsistentRead": True,
                           "ProjectionExpression": "proof_hash, request_id"},
            self._quarantine: {"Keys": [{"pk": {"S": EPOCH_KEY}}], "ConsistentRead": True,
                               "ProjectionExpression": "pk, epoch"}})
        if found.get(self._replay):
            raise self._refused_replay(proof_hash)
        epoch_items = found.get(self._quarantine) or [None]
        return Lookup(sent, sent_wall, epoch_of(epoch_items[0]))

    def _batch_get(self, requests):
        """{table: [items]} for a BatchGetItem of `requests`, every key read."""
        found, pending = {}, requests
        for attempt_number in range(LOOKUP_ATTEMPTS):
            page = call("replay store", self._db.batch_get_item, RequestItems=pending)
            for table, items in (page.get("Responses") or {}).items():
                found.setdefault(table, []).extend(items)
            pending = page.get("UnprocessedKeys") or {}
            if not pending:
                return found
            self._sleep(0.01 * (attempt_number + 1))
        raise Unavailable("the replay store is unavailable", backend="replay store", retry_after=2,
                          detail=f"batch_get_item left keys unread {LOOKUP_ATTEMPTS} times (throttled)")

    def _spent_by(self, proof_hash):
        """The request ID that spent this proof (None if unknown)."""
        return (self._replay_record(proof_hash) or {}).get("request_id", {}).get("S")

    def _replay_record(self, proof_hash):
        page = call("replay store", self._db.get_item, TableName=self._replay, Key={"proof_hash": {"S": proof_hash}},
                    ConsistentRead=True, ProjectionExpression="proof_hash, request_id")
        return page.get("Item")

    def _seed_epoch(self, lookup):
        """A table with no quarantine epoch yet (no quarantine ever placed): write one, once
        per process, so that later logins' reads of shared keys are vouched for. Reads
        after this write are vouched for by it; if another writer got there first, this
        login reads as if there were no epoch."""
        self._seeded = True
        sent, sent_wall = self._monotonic(), self._clock()
        try:
            epoch = self._list.seed_epoch()
        except Unavailable:  # a saving, not a check: this login reads as if there were no epoch
            return lookup
        return Lookup(sent, sent_wall, epoch) if epoch is not None else lookup

    def admit(self, proof_hash, *, request_id, method, valid_until, identity_key=None, limit=None,
              quarantine_keys=(), budgets=()):
        """Spend the proof, count the caller's budgets and check the caller's own quarantine
        keys (its machine, its session: ConditionChecks), atomically.

        `budgets` is ((scope, key, Limit), ...): every budget the caller counts (its
        identity's, and for a caller that claims no machine its principal's); the older
        `identity_key` and `limit` count the identity budget alone. Returns the monotonic
        time the transaction was sent (the issuance's window starts there at the latest).
        Raises ProofReplayed, Quarantined or RateLimited (in that order of precedence); a
        quarantined or over-budget caller's proof is still spent afterwards, so it can't be
        tried again once the quarantine is lifted. A refused transaction counts no budget.
        """
        sent = self._monotonic()
        now = int(self._clock())
        items = [{"Put": self._replay_item(proof_hash, request_id, method, valid_until, now)}]
        counted = self._counted(identity_key, limit, budgets)
        for scope, key, budget_limit in counted:
            items.append({"Update": self._counter_update(scope, key, budget_limit, now)})
        checks = list(quarantine_keys) if self._quarantine is not None else []
        for key in checks:
            items.append({"ConditionCheck": {
                "TableName": self._quarantine, "Key": {"pk": {"S": key}},
                "ConditionExpression": "attribute_not_exists(pk) OR #until <= :now",
                "ExpressionAttributeNames": {"#until": "until"},
                "ExpressionAttributeValues": {":now": {"N": str(now)}}}})
        if len(items) == 1:
            self._spend(items[0]["Put"])
            self._spent.add(proof_hash)
            return sent
        cancelled = self._transact(items)
        if cancelled is None:
            self._spent.add(proof_hash)
            return sent
        failed = failed_items(cancelled)
        if failed is None:  # cancelled for another reason (a conflicting write, throttling)
            raise Unavailable("the replay store is unavailable", backend="replay store",
                              detail="transact_write_items was cancelled: " + ",".join(cancellation_codes(cancelled)))
        if 0 in failed:
            if self._spent_by(proof_hash) == request_id:
                # Our own earlier attempt committed (its answer was lost, botocore sent the
                # transaction again): admitted, counted and checked once, by that attempt.
                self._spent.add(proof_hash)
                return sent
            raise self._refused_replay(proof_hash)
        self._spend(items[0]["Put"])  # refused below: the proof is still used up
        self._spent.add(proof_hash)
        first_check = 1 + len(counted)
        quarantined = [checks[i - first_check] for i in sorted(failed) if i >= first_check]
        if quarantined:
            raise self._quarantined(quarantined[0])
        scope, key, budget_limit = counted[min(failed) - 1]
        raise over_budget(scope, key, budget_limit, now)

    def _counted(self, identity_key, limit, budgets):
        return counted_budgets(self._quarantine is not None, identity_key, limit, budgets)

    def refund(self, identity_key=None, limit=None, *, budgets=()):
        """Give back the budget slots a successful admission counted (best effort): for a
        caller the keys its role shares refused after the transaction went through (a
        quarantined caller must not use up its budget)."""
        now = int(self._clock())
        for scope, key, budget_limit in self._counted(identity_key, limit, budgets):
            try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                     TableName=self._quarantine, Key=counter_key(scope, key, now, budget_limit.window),
                     UpdateExpression="ADD hits :minus_one", ConditionExpression="hits > :zero",
                     ExpressionAttributeValues={":minus_one": {"N": "-1"}, ":zero": {"N": "0"}})

    def _transact(self, items):
        """The transaction; None when it went through, else its cancellation. The items
        are the caller's own (its replay record, its counter, its machine's quarantine key:
        the keys a role shares are read beside the transaction), so a conflict comes from
        the same caller's concurrent requests, or a revocation writing its quarantine key:
        tried again (aws_calls.transact)."""
        return transact("replay store", self._db.transact_write_items, items, sleep=self._sleep)

    # ---- items ---------------------------------------------------------------------------

    def _replay_item(self, proof_hash, request_id, method, valid_until, now):
        return {
            "TableName": self._replay,
            "Item": {
                "proof_hash": {"S": proof_hash},
                "request_id": {"S": request_id},
                "method": {"S": method},
                "spent_at": {"N": str(now)},
                TTL_ATTRIBUTE: {"N": str(int(max(valid_until, now)) + STS_SIGNATURE_LIFETIME)},
            },
            "ConditionExpression": "attribute_not_exists(proof_hash)",
        }

    def _counter_update(self, scope, key, limit, now):
        # The same counter items as stores.rate_limits.RateLimitStore.take_slot(scope, key, ...).
        start = window_start(now, limit.window)
        return {
            "TableName": self._quarantine,
            "Key": counter_key(scope, key, now, limit.window),
            "UpdateExpression": "ADD hits :one SET #exp = :exp",
            "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
            "ExpressionAttributeNames": {"#exp": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": str(limit.count)},
                                          ":exp": {"N": str(start + 2 * limit.window)}},
        }

    def _spend(self, put):
        _, refused = try_call("replay store", ("ConditionalCheckFailedException",), self._db.put_item, **put)
        # Refused by our own earlier attempt (its answer was lost, the client sent the put
        # again): spent by this request, not a replay, as for the transaction above.
        if refused and self._spent_by(put["Item"]["proof_hash"]["S"]) != put["Item"]["request_id"]["S"]:
            raise self._refused_replay(put["Item"]["proof_hash"]["S"])

    def _quarantined(self, key):
        """The refusal for a quarantine key whose ConditionCheck failed, with its entry's details."""
        from .stores.quarantine import quarantined_error

        error = quarantined_error(self._list.get(key), self._clock())
        # lifted meanwhile: still refused this time, the transaction said so
        return error or Quarantined("this caller is quarantined by the security team", detail=f"quarantined: {key}")


