"""Typed errors of the client, each carrying the process exit code it maps to.

Messages of these errors are shown to the operator, so they must never contain
a secret: no wrapping token, role ID, secret ID, Vault token, AWS secret key,
session token or signature. Accessors and request IDs are fine.
"""

from __future__ import annotations

# Exit codes. Keep this table, the help epilog in cli.py and docs/client.md in step.
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_NO_AWS_CREDENTIALS = 3
EXIT_NO_IDENTITY = EXIT_NO_AWS_CREDENTIALS  # the same code, whichever cloud
EXIT_REFUSED = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERCEPTION = 6
EXIT_HANDOFF = 7
EXIT_RULES_INVALID = 8
EXIT_POLICY_DENIED = 9
EXIT_RATE_LIMITED = 10
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_UNEXPECTED: "unexpected error (a bug; --debug shows the traceback)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_NO_AWS_CREDENTIALS: "no cloud identity for the proof: no AWS credentials, no GCE identity token "
    "(or, without --cloud, neither cloud detected)",
    EXIT_REFUSED: "refused by the broker (400 invalid_request, 401 invalid_proof, 403 not_authorized, other 4xx; "
    "401 proof_replayed on every attempt)",
    EXIT_UNAVAILABLE: "broker unavailable after retries (5xx/connection errors/timeouts), or an unusable answer",
    EXIT_INTERCEPTION: "POSSIBLE INTERCEPTION: the answer names a Vault other than the pinned one, or a wrapping token "
    "unknown/expired/already used or of another Vault namespace, a wrong creation path, or a failed unwrap",
    EXIT_HANDOFF: "Vault unreachable, Vault login failed, or the hand-off (files, sink, exec) failed",
    EXIT_RULES_INVALID: "policy commands: the rules file or the facts file is invalid",
    EXIT_POLICY_DENIED: "policy explain: no rule grants the role for these facts",
    EXIT_RATE_LIMITED: "rate limited by the broker (429): its Retry-After did not fit in --max-wait, or every "
    "attempt was rate limited; the message says when to retry",
    EXIT_INTERRUPTED: "interrupted (SIGINT)",
    EXIT_BROKEN_PIPE: "stdout was closed before the output was written (a reader such as `head` stopped)",
}


class ClientError(Exception):
    """Base of every expected failure; ``exit_code`` is the process exit code."""

    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request ID {self.request_id})"
        return self.message


class UsageError(ClientError):
    """Bad flags or configuration."""

    exit_code = EXIT_USAGE


class NoCredentialsError(ClientError):
    """No cloud identity to build the proof with: the default AWS credential chain found
    nothing to sign with, or the GCE metadata server gave no identity token."""

    exit_code = EXIT_NO_AWS_CREDENTIALS


class RefusedError(ClientError):
    """The broker answered with a non-retryable 4xx (400/401/403/...)."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(f"the broker refused the request: HTTP {status} {code}: {message}", request_id=request_id)
        self.status = status
        self.code = code
        self.broker_message = message


class UnavailableError(ClientError):
    """The broker stayed unavailable for every attempt, or answered nonsense."""

    exit_code = EXIT_UNAVAILABLE


class RateLimitedError(ClientError):
    """The broker answered 429 and its Retry-After does not fit in what is left of --max-wait
    (or every attempt was rate limited)."""

    exit_code = EXIT_RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float | None, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.retry_after = retry_after


class InterceptionError(ClientError):
    """A wrapping token failed its checks: somebody else may hold the credential."""

    exit_code = EXIT_INTERCEPTION

    def __init__(self, detail: str, *, what: str, accessor: str | None, request_id: str | None) -> None:
        super().__init__(detail, request_id=request_id)
        self.detail = detail
        self.what = what
        self.accessor = accessor

    def __str__(self) -> str:
        return (
            "POSSIBLE INTERCEPTION of the wrapped {what}: {detail}. "
            "Broker request ID: {rid}; wrapping token accessor: {acc}. "
            "Do not retry blindly: tell the security team, who can look up the request ID "
            "in the broker's audit trail and revoke what was issued."
        ).format(what=self.what, detail=self.detail, rid=self.request_id or "unknown", acc=self.accessor or "unknown")


class UntrustedVaultError(ClientError):
    """The broker's answer names a Vault this client must not use: another address than the
    pinned one, or (nothing pinned) one that is not https. Nothing was looked up or unwrapped
    there: a broker that names its own Vault could "verify" its own wrapping tokens."""

    exit_code = EXIT_INTERCEPTION

    def __init__(self, message: str, *, accessors: tuple = (), request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.accessors = accessors

    def __str__(self) -> str:
        return (
            "POSSIBLE INTERCEPTION: {msg}. Nothing was sent to that address and nothing was unwrapped. "
            "Broker request ID: {rid}; wrapping token accessors: {acc}. Tell the security team."
        ).format(msg=self.message, rid=self.request_id or "unknown", acc=", ".join(self.accessors) or "unknown")


class VaultError(ClientError):
    """Vault could not be reached, or a Vault call (other than the wrapping checks) failed."""

    exit_code = EXIT_HANDOFF

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status


class HandoffError(ClientError):
    """Writing the files or the sink, or exec'ing the command, failed."""

    exit_code = EXIT_HANDOFF


class RulesInvalidError(ClientError):
    """``broker policy``: the rules file or the facts file is invalid."""

    exit_code = EXIT_RULES_INVALID
