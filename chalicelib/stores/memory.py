"""In-memory stores with the DynamoDB stores' behaviour (the same contract tests pass on
both: tests/service/test_stores.py): for unit tests of the security routes, of the
issuance pipeline and of anything that uses the stores, in milliseconds and without a
stack. Thread-safe; time comes from an injectable clock.

Besides the stores of this package: the admission (chalicelib/admission.py: the replay
store, the budgets, the quarantine checks, in one step) and the audit store
(chalicelib/audit.py).
"""

import threading
import time

from ..admission import SharedKeyReads

from .quarantine import Entry, new_epoch, raise_if_quarantined
from .rate_limits import limited, window_start


class MemoryQuarantineList:
    def __init__(self, clock=time.time):
        self._items = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.epoch = None  # the quarantine epoch (stores/quarantine.py): changed by every entry placed
        self._holders = {}  # key -> {revocation ID: until}: every revocation that asked for the key

    def check(self, keys):
        raise_if_quarantined(self.entries(keys).values(), self._clock())

    def entries(self, keys):
        with self._lock:
            return {k: self._items.get(k) for k in keys}

    def place(self, key, *, revocation_id, until, reason, by):
        now = int(self._clock())
        with self._lock:
            self._holders.setdefault(key, {})[revocation_id] = until
            current = self._items.get(key)
            if current is not None and current.until > until and current.until >= now:
                return current  # held under the longer one
            self._items[key] = Entry(key, revocation_id, until)
            self.epoch = new_epoch()
            return self._items[key]

    def seed_epoch(self):
        with self._lock:
            if self.epoch is not None:
                return None
            self.epoch = new_epoch()
            return self.epoch

    def get(self, key):
        with self._lock:
            return self._items.get(key)

    def lift(self, key, revocation_id):
        with self._lock:
            current = self._items.get(key)
            holders = self._holders.get(key, {})
            if current is None:
                return False
            if current.revocation_id != revocation_id:
                holders.pop(revocation_id, None)
                return False
            holders.pop(revocation_id, None)
            now = int(self._clock())
            others = {rid: until for rid, until in holders.items() if until > now}
            if not others:
                del self._items[key]
                self._holders.pop(key, None)
                return True
            heir, heir_until = max(others.items(), key=lambda kv: (kv[1], kv[0]))
            self._items[key] = Entry(key, heir, heir_until)
            return False

    def health(self):
        return None


class MemoryRevocationStore:
    def __init__(self, clock=time.time):
        self._items = {}
        self._lock = threading.Lock()
        self._clock = clock

    def put(self, revocation_id, *, target, reason, by, until, keys, request_id):
        with self._lock:
            if revocation_id in self._items:
                from ..errors import Unavailable

                raise Unavailable("quarantine store is unavailable", backend="quarantine store",
                                  detail="quarantine store put_item failed: ConditionalCheckFailedException")
            self._items[revocation_id] = {
                "revocation_id": revocation_id, "target": {target[0]: target[1]}, "reason": reason,
                "created_by": by, "until": until or None, "quarantine_keys": sorted(keys or []),
                "lifted_at": None}

    def get(self, revocation_id):
        with self._lock:
            item = self._items.get(revocation_id)
            return dict(item) if item else None

    def mark_lifted(self, revocation_id, by):
        with self._lock:
            item = self._items.setdefault(revocation_id, {"revocation_id": revocation_id})
            item["lifted_at"] = int(self._clock())


class MemoryRateLimitStore:
    def __init__(self, clock=time.time):
        self._hits = {}
        self._lock = threading.Lock()
        self._clock = clock

    def take_slot(self, scope, caller, *, limit, window, message=None):
        now = int(self._clock())
        key = (scope, caller, window_start(now, window))
        with self._lock:
            if self._hits.get(key, 0) >= limit:
                raise limited(scope, caller, limit, window, now, message)
            self._hits[key] = self._hits.get(key, 0) + 1


class MemoryTokenRegistry:
    def __init__(self, clock=time.time):
        self._items = {}
        self._lock = threading.Lock()

    def add(self, request_id, accessor, *, keep_for):
        from ..errors import InvalidRequest
        from .tokens import MAX_PER_ISSUANCE

        with self._lock:
            accessors = self._items.setdefault(request_id, set())
            if accessor not in accessors and len(accessors) >= MAX_PER_ISSUANCE:
                raise InvalidRequest(f"at most {MAX_PER_ISSUANCE} tokens may be registered for one issuance")
            accessors.add(accessor)

    def get_many(self, request_ids):
        with self._lock:
            return {r: sorted(self._items[r]) for r in request_ids if self._items.get(r)}


class MemoryTrustHistory:
    """stores.trust_history.TrustHistory in memory."""

    def __init__(self, clock=time.time):
        self._items = {}
        self._lock = threading.Lock()
        self._clock = clock

    def saw_open(self, key, at):
        from .trust_history import KEEP_FOR

        at = int(at)
        with self._lock:
            item = self._items.setdefault(key, {})
            if item.get("open_seen") is None or item["open_seen"] < at:
                item.update(open_seen=at, expires=at + KEEP_FOR)

    def saw_closed(self, key, at):
        from .trust_history import KEEP_FOR

        at = int(at)
        with self._lock:
            item = self._items.get(key)
            if item is None or item.get("open_seen") is None or not item["open_seen"] < at:
                return
            closed = item.get("closed_seen")
            if closed is None or closed <= item["open_seen"] or closed > at:
                item.update(closed_seen=at, expires=at + KEEP_FOR)

    def get(self, key):
        from .trust_history import Sighting

        with self._lock:
            item = dict(self._items.get(key) or {})
        if item.get("open_seen") is None or item["expires"] <= int(self._clock()):
            return None
        return Sighting(item["open_seen"], item.get("closed_seen"))

    def health(self):
        return None


class MemoryReplayRecords:
    """The replay table: proof hash -> the record of the request that spent it. Shared by
    the MemoryAdmissions of one test that stand for several broker processes."""

    def __init__(self):
        self.lock = threading.RLock()
        self._items = {}

    def get(self, proof_hash):
        with self.lock:
            item = self._items.get(proof_hash)
            return dict(item) if item else None

    def put(self, proof_hash, record):
        """Called with `lock` held, after `get` said there is none."""
        self._items[proof_hash] = record


class MemoryAdmission(SharedKeyReads):
    """chalicelib.admission.Admission in memory: the same contract.

    - each proof is spent once (a second request with it is refused ProofReplayed; the
      request that spent it, asking again, is admitted: its first answer was lost);
    - `admit` spends the proof, checks the caller's own quarantine keys and counts its
      budgets in one step: a refused admission counts no budget, and still spends the
      proof; refusals in the order replayed, quarantined, over budget;
    - `refund` gives back the slots a successful admission counted (never below zero);
    - `check_shared` reads the keys many callers share through the same recent reads as
      the DynamoDB admission (stores/quarantine.py RecentReads), vouched for by the
      quarantine epoch its `look_up` read (MemoryQuarantineList.epoch).

    `quarantine` (a MemoryQuarantineList) None: no quarantine checks and no budgets, as
    the DynamoDB admission without a quarantine table. The budgets' counters are those
    of `rate_limits` (a MemoryRateLimitStore), as both share the quarantine table in
    DynamoDB. `replay` (MemoryReplayRecords) is shared by admissions standing for several
    processes; each has its own memory of spent proofs and of recent reads.
    """

    def __init__(self, quarantine=None, rate_limits=None, *, replay=None, shared_key_max_age=0.0,
                 clock=time.time, monotonic=time.monotonic):
        from ..admission import SpentProofs
        from .quarantine import RecentReads

        self._quarantine = quarantine
        self._counters = rate_limits if rate_limits is not None else MemoryRateLimitStore(clock)
        self.replay = replay if replay is not None else MemoryReplayRecords()
        self._shared = RecentReads(quarantine, shared_key_max_age, clock, monotonic) if quarantine else None
        self._clock = clock
        self._monotonic = monotonic
        self._spent = SpentProofs()
        self._seeded = False

    # ---- the replay lookup -------------------------------------------------------------

    def seen(self, proof_hash):
        if proof_hash in self._spent or self.replay.get(proof_hash) is not None:
            raise self._refused_replay(proof_hash)

    def _refused_replay(self, proof_hash):
        from ..admission import replayed

        self._spent.add(proof_hash)
        return replayed()

    def lookup_call(self, proof_hash):
        from ..admission import replayed

        if proof_hash in self._spent:
            raise replayed()
        return lambda: self.look_up(proof_hash)

    def look_up(self, proof_hash):
        from ..admission import Lookup

        sent, sent_wall = self._monotonic(), self._clock()
        if self.replay.get(proof_hash) is not None:
            raise self._refused_replay(proof_hash)
        return Lookup(sent, sent_wall, self._quarantine.epoch if self._quarantine is not None else None)

    # ---- the keys a role shares --------------------------------------------------------

    def _seed_epoch(self, lookup):
        from ..admission import Lookup

        self._seeded = True
        sent, sent_wall = self._monotonic(), self._clock()
        epoch = self._quarantine.seed_epoch()
        return Lookup(sent, sent_wall, epoch) if epoch is not None else lookup

    # ---- the admission -----------------------------------------------------------------

    def admit(self, proof_hash, *, request_id, method, valid_until, identity_key=None, limit=None,
              quarantine_keys=(), budgets=()):
        from ..admission import STS_SIGNATURE_LIFETIME, over_budget

        sent = self._monotonic()
        now = int(self._clock())
        counted = self._counted(identity_key, limit, budgets)
        checks = list(quarantine_keys) if self._quarantine is not None else []
        hits = self._counters._hits
        with self.replay.lock, self._counters._lock:
            record = self.replay.get(proof_hash)
            if record is not None:
                if record["request_id"] != request_id:
                    raise self._refused_replay(proof_hash)
                self._spent.add(proof_hash)  # our own first attempt: admitted, counted once
                return sent
            entries = self._quarantine.entries(checks) if checks else {}
            quarantined = [k for k in checks if entries.get(k) is not None and entries[k].until > now]
            slots = [(scope, key, window_start(now, budget_limit.window)) for scope, key, budget_limit in counted]
            over = [i for i, (slot, (_, _, budget_limit)) in enumerate(zip(slots, counted))
                    if hits.get(slot, 0) >= budget_limit.count]
            self.replay.put(proof_hash, {"proof_hash": proof_hash, "request_id": request_id, "method": method,
                                         "spent_at": now,
                                         "expires_at": int(max(valid_until, now)) + STS_SIGNATURE_LIFETIME})
            if not quarantined and not over:
                for slot in slots:
                    hits[slot] = hits.get(slot, 0) + 1
        self._spent.add(proof_hash)  # refused or not, the proof is used up
        if quarantined:
            raise self._quarantined(quarantined[0])
        if over:
            scope, key, budget_limit = counted[over[0]]
            raise over_budget(scope, key, budget_limit, now)
        return sent

    def _counted(self, identity_key, limit, budgets):
        from ..admission import counted_budgets

        return counted_budgets(self._quarantine is not None, identity_key, limit, budgets)

    def refund(self, identity_key=None, limit=None, *, budgets=()):
        now = int(self._clock())
        hits = self._counters._hits
        with self._counters._lock:
            for scope, key, budget_limit in self._counted(identity_key, limit, budgets):
                slot = (scope, key, window_start(now, budget_limit.window))
                if hits.get(slot, 0) > 0:
                    hits[slot] -= 1

    def _quarantined(self, key):
        from ..errors import Quarantined
        from .quarantine import quarantined_error

        error = quarantined_error(self._quarantine.get(key), self._clock())
        return error or Quarantined("this caller is quarantined by the security team", detail=f"quarantined: {key}")


class MemoryAuditStore:
    """chalicelib.audit.AuditStore in memory: each request ID's record written once (a
    second write of it is our own retry, and changes nothing), read back as plain data
    exactly as the DynamoDB store shows it. `written` lists the request IDs in the order
    their records were written."""

    def __init__(self, retention_days=400):
        self._items = {}
        self._lock = threading.Lock()
        self._retention = retention_days * 86400
        self.written = []

    def write(self, record):
        from ..audit import record_item

        item = record_item(record, self._retention)
        with self._lock:
            if record.request_id in self._items:
                return
            self._items[record.request_id] = item
            self.written.append(record.request_id)

    def get(self, request_id):
        from ..audit import item_to_record

        with self._lock:
            item = self._items.get(request_id)
        return item_to_record(item) if item else None

    def health(self):
        return None
