"""Queries of the audit trail: filters -> the most selective index -> newest-first pages.

Never a Scan. A query reads one index (chalicelib/audit_schema.py):

- `instance` given: `by-instance` (one partition);
- else `principal`: `by-principal` (its shards);
- else `role`: `by-role` (its shards);
- else `by-time`, one UTC day after the other, newest first (each day's shards).

The time range is the key condition (`epoch BETWEEN since AND until`); every other
filter goes into a FilterExpression on that index. The shards of a partition are
queried in parallel and merged by (epoch, request_id), newest first.

Paging: the opaque `next` cursor is the position (epoch, request_id) of the last
record returned plus a fingerprint of the filters; the next page is every match
strictly older than that position. A page stops early (with a cursor) when it has
read its budget of index pages, so a sparse filter over a long range answers in
bounded time with fewer records, or none, and a `next`.
"""

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from .audit import OUTCOMES, item_to_record
from .audit_schema import (AUDIT_INDEXES, INDEX_INSTANCE, INDEX_PRINCIPAL, INDEX_ROLE, INDEX_TIME, SORT_KEY,
                           day_of, partition_keys)
from .aws_calls import call
from .errors import InvalidRequest
from .methods import REGISTRY, index_principal

METHODS = tuple(REGISTRY)  # every proof method the registry knows
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Index pages (DynamoDB Query calls) one API call may read before it answers with a cursor.
MAX_QUERIES_PER_CALL = 64
CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 2048

_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_PRINCIPAL = re.compile(r"^[\x21-\x7e]{3,2048}$")
_REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EPOCH = re.compile(r"^\d{1,12}(\.\d{1,6})?$")

PARAMS = ("since", "until", "principal", "instance", "role", "outcome", "method", "account", "limit", "next")


@dataclass(frozen=True, order=True)
class Position:
    """Where a record sits in newest-first order: (epoch, request_id)."""

    epoch: Decimal
    request_id: str


TOP = Position(Decimal("Infinity"), "")
MAX_REQUEST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


@dataclass(frozen=True)
class AuditQuery:
    since: Decimal
    until: Decimal
    principal: str | None = None
    instance: str | None = None
    role: str | None = None
    outcomes: tuple = ()
    methods: tuple = ()
    account: str | None = None
    limit: int = DEFAULT_LIMIT
    after: Position | None = None  # from the cursor: only records strictly older than this
    given: dict = field(default_factory=dict)  # the filters as given (fingerprinted in the cursor)

    def describe(self):
        """The filters as the audit record of the search keeps them."""
        return dict(self.given, limit=self.limit, **({"page": "next"} if self.after else {}))


def valid_request_id(value):
    if not isinstance(value, str) or not _REQUEST_ID.match(value):
        raise InvalidRequest("a request ID is a UUID like 5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d")
    return value


# ---- the query string ---------------------------------------------------------------------


def parse_query(params, *, now, retention_days):
    """An AuditQuery from query-string parameters ({name: [values]}); InvalidRequest naming the problem."""
    params = params or {}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")
    one = {}
    for name, values in params.items():
        values = [values] if isinstance(values, str) else list(values)
        if len(values) != 1:
            raise InvalidRequest(f"query parameter {name} is given {len(values)} times (use a comma-separated list)")
        if not isinstance(values[0], str) or not values[0] or len(values[0]) > MAX_CURSOR_CHARS:
            raise InvalidRequest(f"query parameter {name} is empty or too long")
        one[name] = values[0]

    # The range is bounded by what the trail can hold: records expire after the retention
    # period, and none is written in the future. A since older than the retention starts at
    # the oldest record kept; an until later than now ends now (plus a day of clock skew).
    oldest = Decimal(f"{now - retention_days * 86400:.3f}")
    newest = Decimal(f"{now + 86400:.3f}")
    until = min(_time(one, "until"), newest) if "until" in one else Decimal(f"{now:.3f}")
    since = max(_time(one, "since"), oldest) if "since" in one else oldest
    if until < oldest:
        raise InvalidRequest(f"until is before the oldest record the audit trail keeps ({retention_days} days)")
    if since > until:
        raise InvalidRequest("since is after until")
    principal = one.get("principal")
    if principal is not None and not _PRINCIPAL.match(principal):
        raise InvalidRequest("principal must be an IAM/STS ARN or a service account email")
    instance = _match(one, "instance", _INSTANCE, "an EC2 or GCE instance ID")
    role = _match(one, "role", _ROLE, "an AppRole name")
    account = _match(one, "account", _ACCOUNT, "an AWS account ID or a GCP project ID")
    outcomes = _choices(one, "outcome", OUTCOMES)
    methods = _choices(one, "method", METHODS)
    limit = DEFAULT_LIMIT
    if "limit" in one:
        if not one["limit"].isdigit() or not 1 <= int(one["limit"]) <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(one["limit"])
    given = {k: v for k, v in one.items() if k not in ("limit", "next")}
    after = decode_cursor(one["next"], given) if "next" in one else None
    return AuditQuery(since=since, until=until, principal=principal, instance=instance, role=role,
                      outcomes=outcomes, methods=methods, account=account, limit=limit, after=after, given=given)


def _time(one, name):
    raw = one[name]
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            when = datetime.combine(date.fromisoformat(raw), datetime.min.time(), timezone.utc)
        else:
            when = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO 8601 time like 2024-05-01T12:00:00Z") from None
    if when.tzinfo is None:
        raise InvalidRequest(f"{name} needs a time zone (Z or +00:00)")
    try:
        return Decimal(f"{when.timestamp():.3f}")
    except (OverflowError, ValueError):  # e.g. 9999-12-31T23:59:59-23:59 is past the last UTC date
        raise InvalidRequest(f"{name} is out of range") from None


def _match(one, name, pattern, what):
    value = one.get(name)
    if value is not None and not pattern.match(value):
        raise InvalidRequest(f"{name} must be {what}")
    return value


def _choices(one, name, allowed):
    if name not in one:
        return ()
    values = tuple(dict.fromkeys(v.strip() for v in one[name].split(",")))
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise InvalidRequest(f"{name} must be one or more of {', '.join(allowed)} (comma-separated)")
    return values


# ---- the cursor ---------------------------------------------------------------------------


def _fingerprint(given):
    text = json.dumps(given, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(position, given):
    doc = {"v": CURSOR_VERSION, "e": str(position.epoch), "r": position.request_id, "q": _fingerprint(given)}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text, given):
    """The position a cursor names; InvalidRequest unless it is exactly what encode_cursor makes
    for these same filters."""
    bad = InvalidRequest("next is not a cursor this API returned for these filters")
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,1024}", text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict) or set(doc) != {"v", "e", "r", "q"} or doc["v"] != CURSOR_VERSION:
        raise bad
    if not all(isinstance(doc[k], str) for k in ("e", "r", "q")) or not _EPOCH.match(doc["e"]):
        raise bad
    if not _REQUEST_ID.match(doc["r"]) or doc["q"] != _fingerprint(given):
        raise bad
    try:
        epoch = Decimal(doc["e"])
    except InvalidOperation:
        raise bad from None
    return Position(epoch, doc["r"])


# ---- running a query ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    index: str
    key_attribute: str
    segments: list  # [[partition key values]], newest segment first (by-time: one per day)
    filter_expression: str | None
    names: dict
    values: dict


def plan(query):
    """Choose the index (the most selective filter) and build the FilterExpression for the rest."""
    names, values, conditions = {}, {}, []

    def condition(attr, op_values, template):
        names[f"#{attr}"] = attr
        placeholders = []
        for i, v in enumerate(op_values):
            values[f":{attr}{i}"] = {"S": v}
            placeholders.append(f":{attr}{i}")
        conditions.append(template.format(name=f"#{attr}", values=", ".join(placeholders), value=placeholders[0]))

    canonical = index_principal(query.principal) if query.principal else None
    if query.instance:
        index, key_value = INDEX_INSTANCE, query.instance
    elif query.principal:
        index, key_value = INDEX_PRINCIPAL, canonical
    elif query.role:
        index, key_value = INDEX_ROLE, query.role
    else:
        index, key_value = INDEX_TIME, None

    if query.principal:
        if query.principal != canonical:  # a session ARN: only that session
            condition("principal", [query.principal], "{name} = {value}")
        elif index != INDEX_PRINCIPAL:  # a role ARN: any of its sessions
            condition("gsi_principal", [canonical + "#"], "begins_with({name}, {value})")
    if query.role and index != INDEX_ROLE:
        condition("role", [query.role], "{name} = {value}")
    if query.account:
        condition("account", [query.account], "{name} = {value}")
    if query.outcomes:
        condition("outcome", list(query.outcomes), "{name} IN ({values})")
    if query.methods:
        condition("method", list(query.methods), "{name} IN ({values})")

    key_attribute = AUDIT_INDEXES[index][0]
    top = min(query.until, query.after.epoch) if query.after else query.until
    if index == INDEX_TIME:
        segments = [partition_keys(INDEX_TIME, day) for day in _days(query.since, top)]
    else:
        segments = [partition_keys(index, key_value)]
    return Plan(index, key_attribute, segments, " AND ".join(conditions) or None, names, values)


def _days(since, until):
    """The UTC days from until's back to since's, newest first."""
    if until < since:
        return []
    first = datetime.strptime(day_of(since), "%Y-%m-%d").date()
    day = datetime.strptime(day_of(until), "%Y-%m-%d").date()
    out = []
    while day >= first:
        out.append(day.isoformat())
        day -= timedelta(days=1)
    return out


@dataclass(slots=True)
class _Shard:
    key: str
    start_key: dict | None = None
    frontier: Position = TOP  # the last position read (matching or not); TOP before the first read
    exhausted: bool = False


@dataclass
class SearchResult:
    events: list
    next_cursor: str | None
    queries: int  # DynamoDB Query calls made
    index: str


class AuditQueryEngine:
    def __init__(self, dynamodb, table, *, max_queries=MAX_QUERIES_PER_CALL, workers=8):
        self._db = dynamodb
        self._table = table
        self._max_queries = max_queries
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-query")

    def search(self, query):
        p = plan(query)
        top = min(query.until, query.after.epoch) if query.after else query.until
        found, budget, resume = [], {"queries": 0}, None
        for n, segment in enumerate(p.segments):
            # One more than the page holds, to know whether there is a next page.
            taken, stopped_at = self._segment(p, segment, query, top, query.limit + 1 - len(found), budget)
            found.extend(taken)
            if len(found) > query.limit:
                break
            if stopped_at is not None:  # budget spent inside this segment
                resume = stopped_at
                break
            if n + 1 < len(p.segments) and budget["queries"] >= self._max_queries:
                # Budget spent at a day boundary: go on with the older days next time.
                resume = Position(Decimal(_day_start(segment[0])) - Decimal("0.001"), MAX_REQUEST_ID)
                break
        events = found[:query.limit]
        if len(found) > query.limit:
            resume = events[-1][0]
        next_cursor = encode_cursor(resume, query.given) if resume is not None else None
        return SearchResult([record for _, record in events], next_cursor, budget["queries"], p.index)

    def _segment(self, p, keys, query, top, need, budget):
        """Up to `need` matches of one segment (the shards of one partition), newest first.

        Returns (matches, stopped_at): `stopped_at` is the position down to which every
        shard was read when the query budget ran out first, else None.
        """
        shards = [_Shard(k) for k in keys]
        candidates = []
        while True:
            active = [s for s in shards if not s.exhausted]
            # Every shard has been read down to its frontier: a candidate at or above the
            # highest frontier can't be beaten by anything still unread.
            bound = max((s.frontier for s in active), default=None)
            candidates.sort(key=lambda c: c[0], reverse=True)
            ready = [c for c in candidates if bound is None or c[0] >= bound]
            if len(ready) >= need or not active:
                return ready[:need], None
            if budget["queries"] >= self._max_queries and bound != TOP:
                return ready, bound
            # Only shards whose unread part could still place a record in the page.
            threshold = candidates[need - 1][0] if len(candidates) >= need else None
            todo = [s for s in active if threshold is None or s.frontier > threshold]
            budget["queries"] += len(todo)
            # A shard holds about 1/n of the page: read twice that share, at least 10 records.
            share = need if len(shards) == 1 else max(10, -(-2 * need // len(shards)))
            pages = list(self._pool.map(lambda s: self._page(p, s, query, top, share), todo))
            for shard, (items, last_key) in zip(todo, pages):
                for item in items:
                    position = Position(Decimal(item[SORT_KEY]["N"]), item["request_id"]["S"])
                    if query.after is not None and not position < query.after:
                        continue  # returned on an earlier page
                    candidates.append((position, item_to_record(item)))
                if last_key:
                    shard.start_key = last_key
                    shard.frontier = Position(Decimal(last_key[SORT_KEY]["N"]), last_key["request_id"]["S"])
                else:
                    shard.exhausted = True

    def _page(self, p, shard, query, top, share):
        values = dict(p.values, **{":pk": {"S": shard.key}, ":lo": {"N": str(query.since)}, ":hi": {"N": str(top)}})
        kwargs = {
            "TableName": self._table,
            "IndexName": p.index,
            "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": dict(p.names, **{"#pk": p.key_attribute, "#sk": SORT_KEY}),
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            # DynamoDB applies Limit before the filter: read more when a filter thins the page.
            "Limit": min(1000, share if not p.filter_expression else max(100, share * 4)),
        }
        if p.filter_expression:
            kwargs["FilterExpression"] = p.filter_expression
        if shard.start_key:
            kwargs["ExclusiveStartKey"] = shard.start_key
        page = call("audit store", self._db.query, **kwargs)
        return page.get("Items", []), page.get("LastEvaluatedKey")


def _day_start(partition_key):
    day = partition_key.split("#", 1)[0]
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return f"{start.timestamp():.3f}"
