"""`POST /v1/revocations` (cut a target off) and `DELETE /v1/revocations/{id}` (lift its quarantine).

A revocation, in this order:

1. resolves the target to its canonical spelling (its method's, chalicelib/methods/) and refuses one that
   matches no issuance and no known principal unless `force` is given;
2. places the quarantine (the admission transaction refuses the target from now on),
   and records the revocation;
3. reaches every issuance of the target that may still be in use (issued within the
   longest secret ID TTL plus the longest token lifetime): revokes its two wrapping
   tokens, destroys its secret ID, and revokes every Vault token logged in with that
   secret ID: first those the client registered (`POST /v1/tokens`, checked against
   the token's metadata), then a scan of every token accessor for the rest (AppRole
   copies the secret ID's `request_id` into the token's metadata), within
   `scan_seconds` for the whole revocation;
4. waits until `settle_seconds` after the quarantine and sweeps again, for issuances
   that were in flight when it was placed (for a revocation of one request ID that
   placed a quarantine: the quarantined target's issuances of the last minutes).

An issuance that got past the quarantine before it landed writes its audit record within
two thirds of `settle_seconds` of the quarantine reads it relied on, or takes itself back
(chalicelib/pipeline/issuance.py, chalicelib/config.py); the last third is for the audit
indexes to show the record. So the second sweep sees every issuance that could escape
the quarantine, without a re-read of the quarantine on every issuance. `complete: true`
only when every wrapping token, secret ID and token reached is dead and the token scan ran.

Vault work is done by the revoking identity (chalicelib/revoker.py); the answer lists,
per issuance, what happened to its wrapping tokens, its secret ID and each token.
"""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from ..audit_query import AuditQuery, decode_cursor, parse_query, valid_request_id
from ..errors import InvalidRequest, NotFound, Unavailable
from ..policy import SECRET_ID_TTL_BOUNDS
from .. import methods
from ..stores.quarantine import iso, quarantine_key
from .inputs import parse_body, parse_duration, parse_reason
from .audited import need

# Secret IDs older than their TTL are dead; look back this much further (clock skew, slow writes).
REVOCATION_MARGIN = 300
MAX_REVOKED_RECORDS = 5000
NO_REVOKER = "not reached: no revoking identity is configured (BROKER_REVOKER_ROLE_ID)"


class Revocations:
    def __init__(self, *, requests, audit, query_engine, quarantine, revocations, revoker, secret_ids, rules,
                 principals, token_max_ttl, settle_seconds, retention_days, tokens=None, scan_seconds=12.0,
                 clock=time.time, sleep=time.sleep, monotonic=time.monotonic):
        self._requests = requests  # security.audited.SecurityRequests
        self._audit = audit  # chalicelib.audit.AuditStore
        self._query = query_engine  # chalicelib.audit_query.AuditQueryEngine
        self._quarantine = quarantine  # stores: the quarantine list, or None (not configured)
        self._revocations = revocations  # stores: the revocation records, or None
        self._revoker = revoker  # chalicelib.revoker.VaultRevoker, or None (secret IDs only, via secret_ids)
        self._secret_ids = secret_ids  # chalicelib.minter.VaultMinter: destroys secret IDs when no revoker
        self._rules = rules
        # (method name, parsed target) -> (canonical spelling, known): the target's method
        # resolves it (the AWS method asks IAM how it spells a role); None: as parsed
        self._principals = principals
        self._token_max_ttl = token_max_ttl
        self._settle = settle_seconds
        self._tokens = tokens  # stores: the token accessors clients registered, or None
        self._scan_seconds = scan_seconds
        self._retention_days = retention_days
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="revocation")

    # ---- POST /v1/revocations --------------------------------------------------------------------

    def revoke(self, raw_body, **context):
        def work(record, identity):
            quarantine, revocations = need(self._quarantine), need(self._revocations)
            doc = parse_body(raw_body, ("request_id", "instance", "principal", "reason", "quarantine", "force"),
                             ("reason",))
            kinds = [k for k in ("request_id", "instance", "principal") if k in doc]
            if len(kinds) != 1:
                raise InvalidRequest("name exactly one of request_id, instance or principal")
            kind = kinds[0]
            if not isinstance(doc[kind], str):
                raise InvalidRequest(f"field {kind} must be a string")
            force = doc.get("force", False)
            if not isinstance(force, bool):
                raise InvalidRequest("field force must be true or false")
            reason = parse_reason(doc["reason"])
            duration = parse_duration(doc.get("quarantine", "24h"), "quarantine")
            record.reason = reason
            record.target = {kind: doc[kind]}
            now = int(self._clock())
            target = self._resolve(kind, doc[kind], now, force)
            record.target = {target.kind: target.value}
            record.related_request_id = target.value if kind == "request_id" else None
            if duration and not target.quarantine:
                raise InvalidRequest("that record names no instance or principal to quarantine; use quarantine 0")

            # 1. the quarantine first: from here on the target gets nothing new.
            revocation_id = str(uuid.uuid4())
            record.revocation_id = revocation_id
            until = now + duration if duration else None
            placed = []
            for q_kind, q_value, q_key in (target.quarantine if until else []):
                entry = quarantine.place(quarantine_key(q_kind, q_key), revocation_id=revocation_id,
                                         until=until, reason=reason, by=identity.principal)
                placed.append({"target": {q_kind: q_value}, "until": iso(entry.until),
                               "revocation_id": entry.revocation_id})
            quarantined_at = self._monotonic()  # the sweep's delay is a duration, as the issuances' windows are
            if placed:
                record.quarantine_until = placed[0]["until"]
            revocations.put(revocation_id, target=(target.kind, target.value), reason=reason, by=identity.principal,
                            until=until, keys=[quarantine_key(k, v) for k, _, v in target.quarantine] if until else [],
                            request_id=record.request_id)

            # 2. everything issued that may still be in use; 3. again once in-flight issuances have landed.
            problems = []
            deadline = time.monotonic() + self._scan_seconds  # every token scan of this revocation
            reached = self._reach(self._issued(target, now), now, "first pass", problems, deadline)
            if target.kind != "request_id" or placed:
                self._sleep(max(0.0, quarantined_at + self._settle - self._monotonic()))
                seen = {e["request_id"] for e in reached}
                late = [r for r in self._in_flight(target, now, bool(placed)) if r["request_id"] not in seen]
                reached += self._reach(late, int(self._clock()), "sweep", problems, deadline)
            failed = [e["request_id"] for e in reached if _failed(e)]
            if failed:
                problems.append(f"{len(failed)} issuance(s) not fully revoked: run the revocation again")
            record.destroyed = reached
            if problems:
                record.code = "incomplete"
            return {
                "revocation_id": revocation_id,
                "target": {target.kind: target.value},
                "reason": reason,
                "quarantine": placed,
                "covers": target.notes,
                "destroyed": reached,
                "swept_at": iso(self._clock()),
                "complete": not problems,
                "problems": problems,
            }

        return self._requests.run("revoke", context, work)

    # ---- the target ------------------------------------------------------------------------------

    def _resolve(self, kind, value, now, force):
        if kind == "request_id":
            valid_request_id(value)
            found = self._audit.get(value)
            if found is None:
                raise NotFound(f"no audit record {value}")
            quarantine = [_quarantine_target_of(found)] if _quarantine_target_of(found) else []
            target = Target("request_id", value, quarantine, record=found)
            self._cover_service_accounts(target, [found])
            return target
        if kind == "instance":
            parse_query({"instance": [value]}, now=now, retention_days=1)  # validates the ID
            seen = self._records(instance=value, now=now)
            if not seen and not force:
                raise NotFound(f"no audit record names instance {value}: check the ID, or set force "
                               "(--force) to quarantine it anyway")
            target = Target("instance", value, [("instance", value, value)])
            self._cover_service_accounts(target, seen)
            return target
        name, parsed = methods.parse_principal(value)
        if self._principals is not None:
            canonical, known = self._principals(name, parsed)
        else:
            canonical, known = methods.identity(name).resolve_principal(parsed, None)
        if not known and not self._records(principal=canonical, now=now) and not force:
            raise NotFound(f"principal {canonical} matches no issuance and no IAM role the broker can read: "
                           "check the spelling, or set force (--force) to quarantine it anyway")
        return Target("principal", canonical, [("principal", canonical, methods.principal_key(name, canonical))])

    def _cover_service_accounts(self, target, records):
        """What else a quarantine of these records' machine covers, as their method says (a
        GCE instance's: its service accounts' tokens that name no instance, which whoever
        holds the instance can mint from its metadata server)."""
        for kind, value, key, note in methods.quarantine_covers(records):
            target.quarantine.append((kind, value, key))
            target.notes.append(note)

    def _records(self, *, now, **where):
        query = AuditQuery(since=_dec(now - self._retention_days * 86400), until=_dec(now + 60), limit=20, **where)
        return self._query.search(query).events

    def _issued(self, target, now):
        """Issued records of the target that may still be in use (or their tokens)."""
        if target.kind == "request_id":
            found = self._audit.get(target.value)
            return [found] if found and found.get("outcome") == "issued" else []
        longest_secret_id = max([r.issuance.secret_id_ttl for r in self._rules.rules] + [SECRET_ID_TTL_BOUNDS[0]])
        since = now - longest_secret_id - self._token_max_ttl - REVOCATION_MARGIN
        return self._issued_since(since, now, **{target.kind: target.value})

    def _issued_since(self, since, now, **where):
        """Every issued record matching `where` since `since`, page by page (up to
        MAX_REVOKED_RECORDS)."""
        found, after = [], None
        while True:
            query = AuditQuery(since=_dec(since), until=_dec(now + 60), outcomes=("issued",), limit=500,
                               after=after, **where)
            result = self._query.search(query)
            found += result.events
            if not result.next_cursor or len(found) >= MAX_REVOKED_RECORDS:
                return found
            after = decode_cursor(result.next_cursor, query.given)

    def _in_flight(self, target, quarantined, placed):
        """The second sweep: the target's issued records again; for one request ID, those of
        the target it quarantined recorded since shortly before the quarantine (issuances
        that were in flight then: each is recorded within its window, far less than this).

        An `instanceless` quarantine (placed with a GCE instance's) refuses callers the
        target's records don't name: its service account's tokens that name no instance.
        One of those admitted just before the quarantine is found by its principal and its
        lack of an instance, or nothing would reach it."""
        found = self._issued(target, int(self._clock())) if target.kind != "request_id" else []
        for kind, value, _ in (target.quarantine if placed else []):
            if kind == "instanceless" or (target.kind == "request_id" and kind in ("instance", "principal")):
                field = "instance" if kind == "instance" else "principal"
                # every page: a busy service account issues more than one page in these minutes
                events = self._issued_since(quarantined - REVOCATION_MARGIN, int(self._clock()), **{field: value})
                found += [e for e in events if kind != "instanceless" or not e.get("instance")]
        unique = {}
        for record in found:
            unique.setdefault(record["request_id"], record)
        return list(unique.values())

    # ---- reaching the issuances ------------------------------------------------------------------

    def _reach(self, records, now, when, problems, deadline):
        if len(records) >= MAX_REVOKED_RECORDS:
            problems.append(f"more than {MAX_REVOKED_RECORDS} issuances: only the newest were reached")
        entries = [{"request_id": r["request_id"], "role": r.get("role"), "issued_at": r.get("time"),
                    "secret_id_accessor": r.get("secret_id_accessor"), "found_by": when} for r in records]
        list(self._pool.map(lambda pair: self._kill_credentials(*pair, now), zip(entries, records)))
        self._kill_tokens(entries, problems, deadline)
        return entries

    def _kill_credentials(self, entry, record, now):
        """The wrapping tokens (so nobody unwraps them) and the secret ID (so nobody logs in)."""
        wraps = {}
        for name, field in (("role_id", "role_id_wrap_accessor"), ("secret_id", "secret_id_wrap_accessor")):
            accessor = record.get(field)
            if not accessor:
                wraps[name] = "none recorded"
            elif self._revoker is None:
                wraps[name] = NO_REVOKER
            else:
                result = self._revoker.revoke_token(accessor)
                wraps[name] = "used or expired" if result == "gone" else result
        entry["wrapping_tokens"] = wraps
        expires = record.get("secret_id_expires_at")
        if not entry["secret_id_accessor"] or not entry["role"]:
            entry["result"] = "nothing to destroy"
        elif expires and expires < now - 60:
            entry["result"] = "expired"
        elif self._revoker is not None:
            entry["result"] = self._revoker.destroy_secret_id(entry["role"], entry["secret_id_accessor"])
        else:
            entry["result"] = self._secret_ids.destroy_secret_id_status(entry["role"], entry["secret_id_accessor"])

    def _kill_tokens(self, entries, problems, deadline):
        """Every Vault token logged in with one of these secret IDs, revoked (its children too):
        first the tokens the clients registered (checked against the token's metadata), then
        a scan of every token accessor, until `deadline`, for the others (a thief's, an Agent's)."""
        if not entries:
            return
        if self._revoker is None:
            for e in entries:
                e["tokens"] = NO_REVOKER
            problems.append("Vault tokens were not reached: no revoking identity is configured")
            return
        by_id = {e["request_id"]: e for e in entries}
        for e in entries:
            e["tokens"] = []
        done = set()

        def revoke(entry, accessor, how):
            result = self._revoker.revoke_token(accessor)
            entry["tokens"].append({"accessor": accessor, "found_by": how,
                                    "result": "expired or revoked before" if result == "gone" else result})
            done.add(accessor)

        try:
            registered = self._tokens.get_many(list(by_id)) if self._tokens is not None else {}
            for request_id, accessors in registered.items():
                for accessor in accessors:
                    meta = self._revoker.lookup(accessor)
                    if meta is None:
                        by_id[request_id]["tokens"].append({"accessor": accessor, "found_by": "registered",
                                                            "result": "expired or revoked before"})
                        done.add(accessor)
                    elif meta.get("request_id") == request_id:  # the client's word, checked with Vault
                        revoke(by_id[request_id], accessor, "registered")
            scan = self._revoker.scan(list(by_id), deadline=deadline)
        except Unavailable as error:
            for e in entries:
                e["tokens"].append({"result": f"failed: the token scan failed ({error.detail})"})
            problems.append("the token scan failed: run the revocation again")
            return
        jobs = [(by_id[rid], a) for rid, accessors in scan.found.items() for a in accessors if a not in done]
        list(self._pool.map(lambda job: revoke(job[0], job[1], "scan"), jobs))
        if not scan.finished:
            problems.append(f"the token scan looked up {scan.looked_up} of {scan.total} tokens before its time ran "
                            f"out ({self._scan_seconds:g} s): tokens not registered by the client (an Agent's, a "
                            "thief's) may still work; run the revocation again")

    # ---- DELETE /v1/revocations/{id} -------------------------------------------------------------

    def lift(self, revocation_id, raw_body=None, **context):
        def work(record, identity):
            quarantine, revocations = need(self._quarantine), need(self._revocations)
            wanted = valid_request_id(revocation_id)
            doc = parse_body(raw_body, ("reason",))
            record.reason = parse_reason(doc.get("reason"), required=False) or "quarantine lifted"
            record.revocation_id = wanted
            revocation = revocations.get(wanted)
            if revocation is None:
                raise NotFound(f"no revocation {wanted}")
            record.target = revocation["target"]
            lifted, kept = [], []
            for key in revocation["quarantine_keys"]:
                _, kind, value = key.split("#", 2)
                if quarantine.lift(key, wanted):
                    lifted.append({kind: value})
                else:
                    current = quarantine.get(key)
                    if current is not None and current.until > self._clock():
                        kept.append({"target": {kind: value}, "until": iso(current.until),
                                     "revocation_id": current.revocation_id})
            revocations.mark_lifted(wanted, identity.principal)
            return {"revocation_id": wanted, "target": revocation["target"], "lifted": lifted,
                    "still_quarantined": kept}

        return self._requests.run("lift", context, work)


class Target:
    def __init__(self, kind, value, quarantine, record=None):
        self.kind = kind  # request_id, instance, principal
        self.value = value  # canonical
        # [(kind, value, key value)] of the quarantine list: the value as shown, and as its
        # method spells it in the entry's key
        self.quarantine = list(quarantine)
        self.record = record
        self.notes = []


def _quarantine_target_of(record):
    """What to quarantine for an audit record: its machine when the broker verified it,
    else the principal that made the request.

    SECURITY: a refused request's `instance` may be a mere claim (an AWS session named
    after someone else's instance or task, from any account). Quarantining it would lock
    the real machine out and leave the requester free."""
    instance, principal = record.get("instance"), record.get("principal")
    if instance and methods.machine_verified(record):
        return ("instance", instance, instance)
    if principal:
        return ("principal", principal, methods.principal_key(record.get("method"), principal))
    return ("instance", instance, instance) if instance else None


def _failed(entry):
    values = [entry.get("result", ""), *entry.get("wrapping_tokens", {}).values()]
    tokens = entry.get("tokens")
    values += [t["result"] for t in tokens] if isinstance(tokens, list) else [tokens or ""]
    return any(str(v).startswith("failed") for v in values)


def _dec(seconds):
    return Decimal(f"{seconds:.3f}")
