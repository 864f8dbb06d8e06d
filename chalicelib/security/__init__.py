"""The security team's routes and the clients' interception reports, one module per concern:

- audited.py      the frame every call runs in (the audited request + the admin check)
- inputs.py       reasons, durations, strict bodies
- audit_reads.py  `GET /v1/audit/events`, `GET /v1/audit/events/{request_id}`
- revocations.py  `POST /v1/revocations`, `DELETE /v1/revocations/{id}`
- incidents.py    `POST /v1/incidents`
- token_registrations.py  `POST /v1/tokens`

`SecurityRoutes` is what app.py calls; chalicelib/backends.py builds each part with
named dependencies.
"""


from dataclasses import dataclass

from .incidents import INCIDENT_LIMIT, INCIDENT_WINDOW, Incidents
from .inputs import MAX_QUARANTINE, MAX_REASON, parse_duration, parse_reason
from .audit_reads import AuditReads
from .revocations import Revocations
from .token_registrations import TokenRegistrations


@dataclass(frozen=True)
class SecurityRoutes:
    audit: AuditReads
    revocations: Revocations
    incidents: Incidents
    tokens: TokenRegistrations

    def search(self, params, **context):
        return self.audit.search(params, **context)

    def show(self, request_id, **context):
        return self.audit.show(request_id, **context)

    def revoke(self, raw_body, **context):
        return self.revocations.revoke(raw_body, **context)

    def lift(self, revocation_id, raw_body=None, **context):
        return self.revocations.lift(revocation_id, raw_body, **context)

    def report_incident(self, raw_body, **context):
        return self.incidents.report(raw_body, **context)

    def register_token(self, raw_body, **context):
        return self.tokens.register(raw_body, **context)


__all__ = ["SecurityRoutes", "AuditReads", "Revocations", "Incidents", "TokenRegistrations", "INCIDENT_LIMIT", "INCIDENT_WINDOW",
           "MAX_QUARANTINE", "MAX_REASON", "parse_duration", "parse_reason"]
