"""The security team's routes and the interception reports.

- `GET /v1/audit/events`, `GET /v1/audit/events/{request_id}`: the audit trail;
- `POST /v1/revocations`, `DELETE /v1/revocations/{id}`: destroy what was issued
  to a target and quarantine it, or lift the quarantine;
- `POST /v1/incidents`: a client reports a possible interception of its issuance.

The first four are for the security team only (chalicelib/admin_auth.py). Every
call, refused or not, is an audit record (outcome `admin`, `incident`, or
`denied`/`error`) written before the answer, and one JSON log line.
"""

import json
import re
import time
import uuid

from .admin_auth import AdminAuthenticator
from .audit_query import AuditQuery, AuditQueryEngine, decode_cursor, parse_query, valid_request_id
from .audit_schema import canonical_principal
from .bodies import decode_json_object
from .concurrency import settle
from .errors import InvalidRequest, NotAuthorized, NotFound, Unavailable
from .policy import SECRET_ID_TTL_BOUNDS
from .quarantine import iso

DEFAULT_QUARANTINE = 24 * 3600
MAX_QUARANTINE = 365 * 86400
MAX_REASON = 500
# Incident reports: per caller (exact principal), per window.
INCIDENT_LIMIT = 5
INCIDENT_WINDOW = 3600
# Secret IDs older than their TTL are dead; look back this much further (clock skew, slow writes).
REVOCATION_MARGIN = 300
MAX_REVOKED_RECORDS = 5000
_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value, what):
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise InvalidRequest(f"{what} must be a duration like 30m, 24h or 7d (0 for none)")
    m = _DURATION.match(value.strip())
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_QUARANTINE:
        raise InvalidRequest(f"{what} is longer than {MAX_QUARANTINE // 86400} days")
    return seconds


def parse_reason(value, what="reason", required=True):
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"field {what} must be a non-empty string")
    text = " ".join(value.split())
    if len(text) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidRequest(f"field {what} must be printable text of at most {MAX_REASON} characters")
    return text


def parse_body(raw, allowed, required=()):
    return decode_json_object(raw, allowed, required)


class SecurityService:
    def __init__(self, *, settings, rules, method, replay, minter, audit, query_engine, quarantine, logger,
                 frame, clock=time.time):
        self.settings = settings
        self.rules = rules
        self._method = method  # name -> Method (the login routes' verifiers)
        self._replay = replay  # chalicelib.admission.Admission: spends each proof once
        self._frame = frame  # chalicelib.pipeline.frame.AuditedRequests
        self._minter = minter
        self._audit = audit
        self._query = query_engine
        self._quarantine = quarantine
        self._log = logger
        self._clock = clock
        self._admins = AdminAuthenticator(rules, lambda login: self._method("aws").verify(login), replay,
                                          proof_hash=lambda login: self._method("aws").proof_hash(login))

    @classmethod
    def for_service(cls, service, *, dynamodb, quarantine):
        """Built beside the BrokerService, sharing its verifiers, stores and Vault session."""
        return cls(settings=service.settings, rules=service.rules, method=service.method,
                   replay=service._admission, minter=service._minter, audit=service._frame._audit,
                   frame=service._frame,
                   query_engine=AuditQueryEngine(dynamodb, service.settings.audit_table),
                   quarantine=quarantine, logger=service._log)

    # ---- the frame every call runs in ------------------------------------------------------

    def _run(self, action, context, work, *, admin=True, method="aws", outcome="admin", event="admin"):
        """Authenticate (admin routes), run `work(record, identity)` in the audited frame:
        any refusal or failure is recorded too (outcome denied or error) before it goes up."""
        record = self._frame.new_record(method, context, action=action, outcome=outcome, code="ok")

        def audited():
            identity = None
            if admin:
                identity = self._admins.authenticate(context.get("headers"), request_id=record.request_id,
                                                     record=record, iam_caller_arn=context.get("iam_caller_arn"))
            return work(record, identity)

        return self._frame.run(record, audited, event=event, metrics=False,
                               unrecorded_message="the audit store is unavailable")

    def _need_quarantine_store(self):
        if self._quarantine is None:
            raise Unavailable("revocation is not configured on this broker", backend="configuration",
                              detail="BROKER_QUARANTINE_TABLE is not set", retry_after=60)

    # ---- GET /v1/audit/events ------------------------------------------------------------------

    def search(self, params, **context):
        def work(record, identity):
            query = parse_query(params, now=self._clock(), retention_days=self.settings.audit_retention_days)
            record.query = query.describe()
            result = self._query.search(query)
            record.result_count = len(result.events)
            record.reason = f"audit search on index {result.index}: {len(result.events)} record(s)"
            return {"events": result.events, "count": len(result.events), "next": result.next_cursor}

        return self._run("audit.search", context, work)

    # ---- GET /v1/audit/events/{request_id} -------------------------------------------------------

    def show(self, request_id, **context):
        def work(record, identity):
            wanted = valid_request_id(request_id)
            record.related_request_id = wanted
            found = self._audit.get(wanted)
            if found is None:
                raise NotFound(f"no audit record {wanted}")
            record.result_count = 1
            record.reason = f"read audit record {wanted}"
            return {"event": found}

        return self._run("audit.show", context, work)

    # ---- POST /v1/revocations ------------------------------------------------------------------------

    def revoke(self, raw_body, **context):
        def work(record, identity):
            self._need_quarantine_store()
            doc = parse_body(raw_body, ("request_id", "instance", "principal", "reason", "quarantine"), ("reason",))
            targets = [k for k in ("request_id", "instance", "principal") if k in doc]
            if len(targets) != 1:
                raise InvalidRequest("name exactly one of request_id, instance or principal")
            kind = targets[0]
            value = doc[kind]
            if not isinstance(value, str):
                raise InvalidRequest(f"field {kind} must be a string")
            reason = parse_reason(doc["reason"])
            duration = parse_duration(doc.get("quarantine", "24h"), "quarantine")
            record.reason = reason
            record.target = {kind: value}
            now = int(self._clock())
            by = identity.principal

            # What was issued to the target and may still be valid.
            if kind == "request_id":
                valid_request_id(value)
                found = self._audit.get(value)
                if found is None:
                    raise NotFound(f"no audit record {value}")
                record.related_request_id = value
                issued = [found] if found.get("outcome") == "issued" else []
                quarantine_target = _quarantine_target_of(found)
            else:
                probe = parse_query({kind: [value]}, now=now, retention_days=1)  # validates the value
                issued = self._issued_to(kind, getattr(probe, kind), now)
                if kind == "principal" and ":iam::" in value:
                    value = canonical_principal(value)  # an IAM role/user ARN: without its path, as checked
                quarantine_target = (kind, value)
            if duration and quarantine_target is None:
                raise InvalidRequest("that record names no instance or principal to quarantine; use quarantine 0")

            revocation_id = str(uuid.uuid4())
            record.revocation_id = revocation_id
            destroyed = self._destroy(issued, now)
            record.destroyed = destroyed

            placed = []
            until = now + duration if duration else None
            if until:
                entry = self._quarantine.place(quarantine_target[0], quarantine_target[1], revocation_id=revocation_id,
                                               until=until, reason=reason, by=by)
                record.quarantine_until = iso(entry.until)
                placed.append({"target": {quarantine_target[0]: quarantine_target[1]}, "until": iso(entry.until),
                               "revocation_id": entry.revocation_id})
            keys = [f"quarantine#{quarantine_target[0]}#{quarantine_target[1]}"] if until else []
            self._quarantine.put_revocation(revocation_id, target=(kind, value), reason=reason, by=by, until=until,
                                            keys=keys, request_id=record.request_id)
            failed = [d for d in destroyed if d["result"].startswith("failed")]
            if failed:
                record.code = "incomplete"
            return {
                "revocation_id": revocation_id,
                "target": {kind: value},
                "reason": reason,
                "destroyed": destroyed,
                "quarantine": placed,
                "complete": not failed,
            }

        return self._run("revoke", context, work)

    def _issued_to(self, kind, value, now):
        """Issued records of an instance or principal whose secret ID may still be valid."""
        max_ttl = max([r.issuance.secret_id_ttl for r in self.rules.rules] + [SECRET_ID_TTL_BOUNDS[0]])
        since = now - max_ttl - REVOCATION_MARGIN
        found, after = [], None
        while True:
            query = AuditQuery(since=_dec(since), until=_dec(now + 60), outcomes=("issued",), limit=500,
                               after=after, **{kind: value})
            result = self._query.search(query)
            found += result.events
            if not result.next_cursor or len(found) >= MAX_REVOKED_RECORDS:
                return found
            after = decode_cursor(result.next_cursor, query.given)

    def _destroy(self, records, now):
        out, todo = [], []
        for rec in records:
            entry = {"request_id": rec["request_id"], "role": rec.get("role"),
                     "secret_id_accessor": rec.get("secret_id_accessor")}
            expires = rec.get("secret_id_expires_at")
            if not entry["secret_id_accessor"] or not entry["role"]:
                entry["result"] = "nothing to destroy"
            elif expires and expires < now - 60:
                entry["result"] = "expired"
            else:
                todo.append(entry)
            out.append(entry)
        for start in range(0, len(todo), 16):
            chunk = todo[start:start + 16]
            outcomes = settle(*(lambda e=e: self._minter.destroy_secret_id_status(e["role"], e["secret_id_accessor"])
                                for e in chunk))
            for entry, (result, error) in zip(chunk, outcomes):
                entry["result"] = result if error is None else f"failed: {type(error).__name__}"
        return out

    # ---- DELETE /v1/revocations/{id} ----------------------------------------------------------------

    def lift(self, revocation_id, raw_body=None, **context):
        def work(record, identity):
            self._need_quarantine_store()
            wanted = valid_request_id(revocation_id)
            doc = parse_body(raw_body, ("reason",))
            record.reason = parse_reason(doc.get("reason"), required=False) or "quarantine lifted"
            record.revocation_id = wanted
            revocation = self._quarantine.get_revocation(wanted)
            if revocation is None:
                raise NotFound(f"no revocation {wanted}")
            record.target = revocation["target"]
            lifted, kept = [], []
            for key in revocation["quarantine_keys"]:
                _, kind, value = key.split("#", 2)
                if self._quarantine.lift_entry(key, wanted):
                    lifted.append({kind: value})
                else:
                    current = self._quarantine.get_entry(key)
                    if current is not None and current.until > self._clock():
                        kept.append({"target": {kind: value}, "until": iso(current.until),
                                     "revocation_id": current.revocation_id})
            self._quarantine.mark_lifted(wanted, identity.principal)
            return {"revocation_id": wanted, "target": revocation["target"], "lifted": lifted,
                    "still_quarantined": kept}

        return self._run("lift", context, work)

    # ---- POST /v1/incidents ------------------------------------------------------------------------------

    def report_incident(self, raw_body, **context):
        proof_fields = {f for name in self._method_names() for f in self._proof_fields(name)}
        allowed = ("request_id", "reason", "accessor", *sorted(proof_fields))
        doc = None
        try:
            doc = parse_body(raw_body, allowed, ("request_id",))
        except InvalidRequest:
            pass
        issuance = None
        if isinstance(doc, dict) and isinstance(doc.get("request_id"), str):
            try:
                issuance = self._audit.get(valid_request_id(doc["request_id"]))
            except InvalidRequest:
                pass
        # The proof's method is the reported issuance's (the audit trail's word), not a guess
        # from which fields the body carries.
        method_name = (issuance or {}).get("method") or "aws"

        def work(record, identity):
            if doc is None:
                parse_body(raw_body, allowed, ("request_id",))
            wanted = valid_request_id(doc["request_id"])
            record.related_request_id = wanted
            reason = parse_reason(doc.get("reason"), required=False) or "possible interception reported by the client"
            accessor = doc.get("accessor")
            if accessor is not None and (not isinstance(accessor, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", accessor)):
                raise InvalidRequest("field accessor must be a wrapping token accessor")
            method = self._method(method_name)
            proof = {k: doc[k] for k in self._proof_fields(method_name) if k in doc}
            login = method.parse(json.dumps(dict(proof, role="incident")).encode())
            self._replay.seen(method.proof_hash(login))  # as a login: a replayed proof costs no cloud call
            caller = method.verify(login)
            record.principal, record.account = caller.principal, caller.account
            record.instance = caller.claimed.id if caller.claimed else None
            self._replay.admit(caller.proof_hash, request_id=record.request_id, method=method_name,
                               valid_until=caller.valid_until)
            if self._quarantine is not None:
                self._quarantine.take_slot("incident", caller.principal, limit=INCIDENT_LIMIT, window=INCIDENT_WINDOW)
            mismatch = _not_the_callers(issuance, caller, record.instance)
            if mismatch:
                raise NotAuthorized("that request ID was not issued to this caller", detail=mismatch)
            record.role = issuance.get("role")
            record.reason = reason + (f" (wrapping accessor {accessor})" if accessor else "")
            result = "nothing to destroy"
            if issuance.get("secret_id_accessor"):
                result = self._minter.destroy_secret_id_status(issuance["role"], issuance["secret_id_accessor"])
            record.destroyed = [{"request_id": wanted, "role": issuance.get("role"),
                                 "secret_id_accessor": issuance.get("secret_id_accessor"), "result": result}]
            record.code = "interception_reported"
            return {"related_request_id": wanted, "secret_id": result}

        return self._run("incident", context, work, admin=False, method=method_name, outcome="incident",
                         event="incident")

    def _method_names(self):
        from .methods import REGISTRY

        return tuple(REGISTRY)

    @staticmethod
    def _proof_fields(name):
        from .methods import package

        return package(name).PROOF_FIELDS


def _not_the_callers(issuance, caller, instance):
    """Why the issuance is not the caller's to report, or None."""
    if issuance is None:
        return "no such audit record"
    if issuance.get("outcome") != "issued":
        return f"the record is not an issuance (outcome {issuance.get('outcome')})"
    if issuance.get("principal") != caller.principal:
        return f"issued to {issuance.get('principal')}, reported by {caller.principal}"
    if issuance.get("instance") and issuance["instance"] != instance:
        return f"issued to instance {issuance['instance']}, reported from {instance}"
    return None


def _quarantine_target_of(record):
    """What to quarantine for an audit record: its machine when the broker verified it,
    else the principal that made the request.

    SECURITY: a refused request's `instance` may be a mere claim (an AWS session named
    after someone else's instance or task, from any account). Quarantining it would lock
    the real machine out and leave the requester free."""
    instance, principal = record.get("instance"), record.get("principal")
    if instance and _machine_verified(record):
        return ("instance", instance)
    if principal:
        return ("principal", principal)
    return ("instance", instance) if instance else None


def _machine_verified(record):
    facts = record.get("facts")
    if isinstance(facts, dict):  # the facts step ran: the machine is verified when it holds it
        return (not facts.get("claim_error") and not facts.get("claim_trust_error")
                and any(isinstance(facts.get(k), dict) for k in ("instance", "task")))
    from .methods import REGISTRY, package

    method = record.get("method")  # refused before the facts step: only a claim the cloud signed counts
    return method in REGISTRY and bool(getattr(package(method), "CLAIMS_SIGNED", False))


def _dec(seconds):
    from decimal import Decimal

    return Decimal(f"{seconds:.3f}")
