"""The frame every security-route call runs in: the lead's audited request
(chalicelib/pipeline/frame.py) plus, on the security team's routes, the admin check
(chalicelib/admin_auth.py), so that a refusal is on the record like any answer."""

from ..errors import Unavailable


class SecurityRequests:
    def __init__(self, frame, admins):
        self._frame = frame  # chalicelib.pipeline.frame.AuditedRequests
        self._admins = admins  # chalicelib.admin_auth.AdminAuthenticator

    def run(self, action, context, work, *, admin=True, method=None, outcome="admin", event="admin"):
        """Authenticate (admin routes), then `work(record, identity)` in the audited frame:
        any refusal or failure is recorded too (outcome denied or error) before it goes up.
        `method`: the proof method of the request's caller (None: the admin check's)."""
        record = self._frame.new_record(method or self._admins.method_name, context, action=action,
                                        outcome=outcome, code="ok")

        def audited():
            identity = None
            if admin:
                identity = self._admins.authenticate(context.get("headers"), request_id=record.request_id,
                                                     record=record, iam_caller_arn=context.get("iam_caller_arn"),
                                                     request=context.get("request"))
            return work(record, identity)

        return self._frame.run(record, audited, event=event, metrics=False,
                               unrecorded_message="the audit store is unavailable")


def need(store, what="revocation"):
    if store is None:
        raise Unavailable(f"{what} is not configured on this broker", backend="configuration",
                          detail="BROKER_QUARANTINE_TABLE is not set", retry_after=60)
    return store
