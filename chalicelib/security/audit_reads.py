"""`GET /v1/audit/events` (search) and `GET /v1/audit/events/{request_id}` (one record)."""

import time

from ..audit_query import parse_query, valid_request_id
from ..errors import NotFound


class AuditReads:
    def __init__(self, *, requests, audit, query_engine, retention_days, clock=time.time):
        self._requests = requests
        self._audit = audit
        self._query = query_engine
        self._retention_days = retention_days
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
            return {"event": found}

        return self._requests.run("audit.show", context, work)
