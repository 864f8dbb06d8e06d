"""In-memory stores with the DynamoDB stores' behaviour (the same contract tests pass on
both): for unit tests of the security routes and of anything that uses the stores,
in milliseconds and without a stack. Thread-safe; time comes from an injectable clock."""

import threading
import time

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
