"""`GET /v1/audit/events` (search) and `GET /v1/audit/events/{request_id}` (one record)."""

import time

from ..audit_query import parse_query, valid_request_id
from ..errors import NotFound


# The accessors of an issued record, hashed as Vault's audit device logs them when the
# security team reads the record (not on every issuance: the HMACs are deterministic).
# The wrapping tokens' own HMACs are in the device's log beside their accessors (the
# creation response's `wrap_info.token`), so nothing is lost by not storing them.
HASHED_ACCESSORS = ("role_id_wrap_accessor", "secret_id_wrap_accessor", "secret_id_accessor")


class AuditReads:
    def __init__(self, *, requests, audit, query_engine, retention_days, audit_hashes=None, clock=time.time):
        self._requests = requests
        self._audit = audit
        self._query = query_engine
        self._retention_days = retention_days
        self._audit_hashes = audit_hashes  # {name: value} -> {name: HMAC}, or None (no audit device named)
        self._clock = clock

    def search(self, params, **context):
        def work(record, identity):
            query = parse_query(params, now=self._clock(), retention_days=self._retention_days)
            record.query = query.describe()
            result = self._query.search(query)
            record.result_count = len(result.events)
            record.reason = f"audit search on index {result.index}: {len(result.events)} record(s)"
            return {"events": result.events, "count": len(result.events), "next": result.next_cursor}

        return self._requests.run("audit.search", context, work)

    def show(self, request_id, **context):
        def work(record, identity):
            wanted = valid_request_id(request_id)
            record.related_request_id = wanted
            found = self._audit.get(wanted)
            if found is None:
                raise NotFound(f"no audit record {wanted}")
            record.result_count = 1
            record.reason = f"read audit record {wanted}"
            return {"event": self._with_vault_hmacs(found)}

        return self._requests.run("audit.show", context, work)

    def _with_vault_hmacs(self, event):
        """The record with `vault_audit_hmacs` of its accessors (best effort: left out when
        Vault can't be asked). A record that stored some (older broker versions) keeps them."""
        accessors = {name: event.get(name) for name in HASHED_ACCESSORS if event.get(name)}
        if self._audit_hashes is None or not accessors:
            return event
        hmacs = {**(event.get("vault_audit_hmacs") or {}), **self._audit_hashes(accessors)}
        return {**event, "vault_audit_hmacs": hmacs} if hmacs else event
