"""The audited request: every route that decides something runs inside one.

It does, once, for issuance and for the security routes: create the record, run the
work, record a refusal or failure, write the record before the answer, and turn an
unexpected exception into `internal_error` with its record. If the record can't be
written, the answer is 503 and `on_unrecorded` takes back whatever the work made:
nothing leaves the broker without its audit record.
"""

import logging
import uuid

from ..audit import AuditRecord
from ..errors import BrokerError, RateLimited, Unavailable
from ..jsonlog import decision_metrics, log


class InternalError(BrokerError):
    status = 500
    code = "internal_error"


class AuditedRequests:
    def __init__(self, audit, logger, rules_stamp=None):
        self._audit = audit
        self._log = logger
        self._rules_stamp = rules_stamp  # () -> (serial, sha256) of the rules in force

    def new_record(self, method, context, **fields):
        if self._rules_stamp is not None:
            fields["rules_serial"], fields["rules_sha256"] = self._rules_stamp()
        return AuditRecord(request_id=str(uuid.uuid4()), method=method, source_ip=context.get("source_ip"),
                           api_request_id=context.get("api_request_id"), **fields)

    def run(self, record, work, *, event="decision", metrics=True, on_unrecorded=None,
            unrecorded_message="the audit store is unavailable; nothing was issued"):
        """`work()` -> the answer's body; `record` is filled by the work as it goes.

        `on_unrecorded()` undoes what the work made when its record can't be written
        (or when the work fails unexpectedly after making something); it returns True
        when everything was undone."""
        try:
            body = work()
        except BrokerError as error:
            error.request_id = record.request_id
            self._record_failure(record, error, event, metrics, unrecorded_message)
            raise
        except Exception as error:  # a bug: still nothing without a record, and no 500 without one
            if on_unrecorded is not None:
                on_unrecorded()
            wrapped = InternalError("internal error", detail=f"unexpected {type(error).__name__}")
            wrapped.request_id = record.request_id
            self._log.exception("unexpected error", extra={"fields": {"request_id": record.request_id}})
            self._record_failure(record, wrapped, event, metrics, unrecorded_message)
            raise wrapped from None
        try:
            self._write(record, event, metrics, unrecorded_message)
        except Unavailable as error:
            if on_unrecorded is not None and on_unrecorded() is True:
                self._record_take_back(record)
            error.request_id = record.request_id
            raise
        body["request_id"] = record.request_id
        return body

    def _record_take_back(self, record):
        """After a record whose write got no usable answer (no read-back either) and whose
        issuance was then taken back in full: a take_back record naming it, in case it landed
        unseen and calls a destroyed credential issued. Append-only, as every record (the
        broker never rewrites one); best effort, the store was failing a moment ago."""
        follow = self.new_record(record.method, {"source_ip": record.source_ip,
                                                 "api_request_id": record.api_request_id},
                                 role=record.role, principal=record.principal,
                                 index_principal=record.index_principal, account=record.account,
                                 instance=record.instance, related_request_id=record.request_id,
                                 action="take_back", outcome="error", code="unavailable",
                                 reason=f"issuance {record.request_id} taken back (wrapping tokens spent, secret ID "
                                        f"destroyed): the write of its record got no answer, so the caller was "
                                        f"answered 503; if that record landed, it is not in force")
        try:
            self._audit.write(follow)
        except Unavailable:
            log(self._log, logging.ERROR, "take-back record not written", request_id=record.request_id)

    def _record_failure(self, record, error, event, metrics, unrecorded_message):
        record.outcome = "denied" if error.status < 500 else "error"
        record.code = error.code
        record.reason = error.detail
        try:
            self._write(record, event, metrics, unrecorded_message, backend=getattr(error, "backend", None),
                        budget=getattr(error, "scope", None) if isinstance(error, RateLimited) else None)
        except Unavailable as audit_error:
            # The decision stands, but unrecorded it must not be an answer: say 503.
            audit_error.request_id = record.request_id
            raise audit_error from None

    def _write(self, record, event, metrics, unrecorded_message, backend=None, budget=None):
        try:
            self._audit.write(record)
        except Unavailable as e:
            log(self._log, logging.ERROR, "audit write failed", **record.fields(), audit_error=e.detail)
            raise Unavailable(unrecorded_message, backend="audit store",
                              detail=e.detail) from None
        extra = decision_metrics(record, backend=backend, budget=budget) if metrics else {}
        log(self._log, logging.INFO, event, **record.fields(), **extra)

    def audit_health(self):
        return self._audit.health()
