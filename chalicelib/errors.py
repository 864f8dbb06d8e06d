"""Typed errors of the broker. Each maps to one HTTP status and one machine-readable code.

Messages are shown to the caller: they say which check failed but never carry a
secret (no tokens, signatures or secret IDs).
"""


class BrokerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message, *, detail=None):
        super().__init__(message)
        self.message = message
        # What the audit record keeps beyond the caller-facing message (e.g. the
        # exact rule conditions that failed). Never shown to the caller.
        self.detail = detail or message


class InvalidRequest(BrokerError):
    status = 400
    code = "invalid_request"


class InvalidProof(BrokerError):
    status = 401
    code = "invalid_proof"


class ProofReplayed(BrokerError):
    status = 401
    code = "proof_replayed"


class NotAuthorized(BrokerError):
    status = 403
    code = "not_authorized"


class Unavailable(BrokerError):
    """A backend (Vault, STS, DynamoDB, EC2/IAM, Secrets Manager) failed: try again later."""

    status = 503
    code = "unavailable"

    def __init__(self, message, *, backend, retry_after=5, detail=None):
        super().__init__(message, detail=detail)
        self.backend = backend
        self.retry_after = retry_after


class ConfigError(Exception):
    """The broker's configuration is unusable: raised at start, names the variable."""


class Quarantined(BrokerError):
    """The caller (its instance or principal) is quarantined by a revocation."""

    status = 403
    code = "quarantined"


class NotFound(BrokerError):
    status = 404
    code = "not_found"


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"

    def __init__(self, message, *, retry_after, detail=None, scope=None):
        super().__init__(message, detail=detail)
        self.retry_after = retry_after
        self.scope = scope  # which budget was exhausted ("issue-identity", ...): the BudgetExhausted metric
