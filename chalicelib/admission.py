"""Admit a verified proof: spent once, its caller not quarantined, within its budget.

One DynamoDB transaction (TransactWriteItems) does all three, so a refused request
changes nothing: a replayed proof or a quarantined caller never uses up the caller's
per-identity rate budget (a replay attacker can't lock the real machine out), and a
request over budget leaves no half-written state. The cancellation reasons say which
condition failed. Proofs are looked up (`seen`) before the cloud is asked, so a
replayed proof costs no STS call and no certificate fetch.

Stores know no method: callers hand in the proof hash, the identity key and the
quarantine keys (from the VerifiedCaller).
"""

import random
import time

from .aws_calls import attempt, call, try_call
from .concurrency import Ready
from .audit_schema import TTL_ATTRIBUTE
from .errors import ProofReplayed, Quarantined, Unavailable
from .stores.rate_limits import counter_key, limited, window_start

# STS accepts a signature for 15 minutes; keep the record at least that long past our own window.
STS_SIGNATURE_LIFETIME = 15 * 60
# Transactions cancelled only by conflicts with concurrent ones are tried again (jittered).
CONFLICT_ATTEMPTS = 4
CONFLICT_BACKOFF = 0.02  # seconds, doubled per attempt
IDENTITY_SCOPE = "issue-identity"  # the per-identity budget's counters (stores.rate_limits items)


class Admission:
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

    def seen(self, proof_hash):
        """ProofReplayed when this proof was spent before (a cheap read before verification)."""
        if self._replay_record(proof_hash) is not None:
            raise ProofReplayed("this proof was already used; sign a new one")

    def _spent_by(self, proof_hash):
        """The request ID that spent this proof (None if unknown)."""
        return (self._replay_record(proof_hash) or {}).get("request_id", {}).get("S")

    def _replay_record(self, proof_hash):
        page = call("replay store", self._db.get_item, TableName=self._replay, Key={"proof_hash": {"S": proof_hash}},
                    ConsistentRead=True, ProjectionExpression="proof_hash, request_id")
        return page.get("Item")

    def check_shared(self, keys):
        """Quarantined (403) if a key many callers share (a role's ARN, a service account
        every instance runs as) is in force; else the monotonic time the oldest read relied
        on was sent. Not in the transaction: every machine of a role would check the same
        item, and concurrent transactions on one item cancel each other
        (TransactionConflict) in a boot storm. Read through recent reads (see RecentReads)."""
        if self._shared is None or not keys:
            return self._monotonic()
        return self._shared.check(keys)

    def shared_check(self, keys):
        """`check_shared(keys)` as a call for `settle`: Ready when this process's recent reads
        answer it, so a boot storm's logins don't hand a cache hit to a thread."""
        if self._shared is None or not keys:
            return Ready(self._monotonic())
        sent = self._shared.recent(keys)
        return Ready(sent) if sent is not None else (lambda: self.check_shared(keys))

    def admit(self, proof_hash, *, request_id, method, valid_until, identity_key=None, limit=None,
              quarantine_keys=()):
        """Spend the proof, count the identity's budget and check the caller's own quarantine
        keys (its machine, its session: ConditionChecks), atomically.

        Returns the monotonic time the transaction was sent (the issuance's window starts
        there at the latest). Raises ProofReplayed, Quarantined or RateLimited (in that order
        of precedence); a quarantined or over-budget caller's proof is still spent
        afterwards, so it can't be tried again once the quarantine is lifted.
        """
        sent = self._monotonic()
        now = int(self._clock())
        items = [{"Put": self._replay_item(proof_hash, request_id, method, valid_until, now)}]
        counted = self._quarantine is not None and limit is not None and identity_key is not None
        if counted:
            items.append({"Update": self._counter_update(identity_key, limit, now)})
        checks = list(quarantine_keys) if self._quarantine is not None else []
        for key in checks:
            items.append({"ConditionCheck": {
                "TableName": self._quarantine, "Key": {"pk": {"S": key}},
                "ConditionExpression": "attribute_not_exists(pk) OR #until <= :now",
                "ExpressionAttributeNames": {"#until": "until"},
                "ExpressionAttributeValues": {":now": {"N": str(now)}}}})
        if len(items) == 1:
            self._spend(items[0]["Put"])
            return sent
        cancelled = self._transact(items)
        if cancelled is None:
            return sent
        failed = _failed_items(cancelled)
        if failed is None:  # cancelled for another reason (a conflicting write, throttling)
            raise Unavailable("the replay store is unavailable", backend="replay store",
                              detail="transact_write_items was cancelled: " + _reasons(cancelled))
        if 0 in failed:
            if self._spent_by(proof_hash) == request_id:
                # Our own earlier attempt committed (its answer was lost, botocore sent the
                # transaction again): admitted, counted and checked once, by that attempt.
                return sent
            raise ProofReplayed("this proof was already used; sign a new one")
        self._spend(items[0]["Put"])  # refused below: the proof is still used up
        first_check = 2 if counted else 1
        quarantined = [checks[i - first_check] for i in sorted(failed) if i >= first_check]
        if quarantined:
            raise self._quarantined(quarantined[0])
        raise limited(IDENTITY_SCOPE, identity_key, limit.count, limit.window, now,
                      "too many credentials asked for by this caller recently; try again later")

    def refund(self, identity_key, limit):
        """Give back the budget slot a successful admission counted (best effort): for a
        caller the keys its role shares refused after the transaction went through (a
        quarantined caller must not use up its budget; issue 10)."""
        if self._quarantine is None or limit is None or identity_key is None:
            return
        key = counter_key(IDENTITY_SCOPE, identity_key, int(self._clock()), limit.window)
        try_call("quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
                 TableName=self._quarantine, Key=key,
                 UpdateExpression="ADD hits :minus_one", ConditionExpression="hits > :zero",
                 ExpressionAttributeValues={":minus_one": {"N": "-1"}, ":zero": {"N": "0"}})

    def _transact(self, items):
        """The transaction; None when it went through, else its cancellation.

        The items are the caller's own (its replay record, its counter, its machine's
        quarantine key: the keys a role shares are read beside the transaction), so a
        conflict comes from the same caller's concurrent requests, or a revocation writing
        its quarantine key. DynamoDB cancels them with TransactionConflict (nothing
        written): contention, not an outage. Try again a few times, with jitter, first."""
        for attempt_number in range(CONFLICT_ATTEMPTS):
            _, cancelled = attempt("replay store", ("TransactionCanceledException",), self._db.transact_write_items,
                                   TransactItems=items)
            if cancelled is None or not _only_conflicts(cancelled) or attempt_number == CONFLICT_ATTEMPTS - 1:
                return cancelled
            self._sleep(random.uniform(0, CONFLICT_BACKOFF * 2 ** attempt_number))
        return cancelled

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

    def _counter_update(self, identity_key, limit, now):
        # The same counter items as stores.rate_limits.RateLimitStore.take_slot("issue-identity", ...).
        start = window_start(now, limit.window)
        return {
            "TableName": self._quarantine,
            "Key": counter_key(IDENTITY_SCOPE, identity_key, now, limit.window),
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
            raise ProofReplayed("this proof was already used; sign a new one")

    def _quarantined(self, key):
        """The refusal for a quarantine key whose ConditionCheck failed, with its entry's details."""
        from .stores.quarantine import quarantined_error

        error = quarantined_error(self._list.get(key), self._clock())
        # lifted meanwhile: still refused this time, the transaction said so
        return error or Quarantined("this caller is quarantined by the security team", detail=f"quarantined: {key}")



def _reasons(error):
    return ",".join(str((r or {}).get("Code")) for r in getattr(error, "response", {}).get("CancellationReasons", []))


def _only_conflicts(error):
    """Was the transaction cancelled by concurrent transactions only (nothing else failed)?"""
    codes = {(r or {}).get("Code") for r in getattr(error, "response", {}).get("CancellationReasons") or []}
    return "TransactionConflict" in codes and codes <= {"TransactionConflict", "None", None}


def _failed_items(error):
    """The indexes of the transaction items whose condition failed, or None when the
    transaction was cancelled for another reason (a conflict, throttling)."""
    reasons = getattr(error, "response", {}).get("CancellationReasons")
    if not reasons:
        return None
    failed = {i for i, r in enumerate(reasons) if (r or {}).get("Code") == "ConditionalCheckFailed"}
    others = [r.get("Code") for r in reasons if (r or {}).get("Code") not in (None, "None", "ConditionalCheckFailed")]
    return None if others or not failed else failed
