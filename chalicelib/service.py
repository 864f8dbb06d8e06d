"""The broker's pipeline: proof -> facts -> rules -> minting -> audit.

Every request ends in exactly one audit record (issued, denied or error), written
before the answer. If that record can't be written, whatever was minted is taken
back and the caller gets 503: nothing is issued without its record.
"""

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from .audit import AuditRecord
from .concurrency import settle
from .rules import RateLimits
from .errors import BrokerError, InvalidProof, NotAuthorized, Unavailable
from .jsonlog import decision_metrics, log
from .quarantine import claimed_instance


class InternalError(BrokerError):
    status = 500
    code = "internal_error"


@dataclass(frozen=True)
class ProofMethod:
    """One kind of identity proof: how to parse the body, verify the proof, and read facts.

    `verify` returns an identity with `principal`, `account`, `proof_hash` and
    `valid_until`; `read_facts` turns it into facts the rules understand.
    """

    parse: Callable
    verify: Callable
    read_facts: Callable


class BrokerService:
    def __init__(self, *, settings, rules, methods, replay, minter, audit, logger, quarantine=None):
        self.settings = settings
        self._quarantine = quarantine  # chalicelib.quarantine.QuarantineStore, or None (no quarantine)
        self.security = None  # chalicelib.security.SecurityService, set by backends.build_service
        self.rules = rules
        self._method_factories = methods  # {"aws": () -> ProofMethod, ...}, built on first use
        self._methods = {}
        self._methods_lock = threading.Lock()
        self._replay = replay
        self._minter = minter
        self._audit = audit
        self._log = logger

    def _method(self, name):
        if name not in self._methods:
            with self._methods_lock:
                if name not in self._methods:
                    factory = self._method_factories.get(name)
                    if factory is None:
                        raise InvalidProof(f"{name} proofs are not enabled on this broker")
                    self._methods[name] = factory()
        return self._methods[name]

    # ---- POST /v1/credentials/{aws,gcp} ----------------------------------------

    def issue_aws(self, raw_body, **context):
        return self.issue("aws", raw_body, **context)

    def issue_gcp(self, raw_body, **context):
        return self.issue("gcp", raw_body, **context)

    def issue(self, method_name, raw_body, *, source_ip=None, api_request_id=None):
        """The success body, or a BrokerError carrying `request_id`."""
        record = AuditRecord(request_id=str(uuid.uuid4()), method=method_name,
                             source_ip=source_ip, api_request_id=api_request_id)
        issued = None
        try:
            method = self._method(method_name)
            login = method.parse(raw_body)
            record.role = login.role
            identity = method.verify(login)
            record.principal, record.account = identity.principal, identity.account
            # Spent once verified, whatever the decision: a refused proof can't be tried for another role.
            # The replay record is written while the facts are read; a replay's error comes first.
            # A quarantined caller (revocation) is refused before anything is minted.
            # The per-identity rate limit is counted there too, on what the cloud signed.
            (facts, facts_error), (_, replay_error), (_, quarantine_error), (_, limit_error) = settle(
                lambda: method.read_facts(identity),
                lambda: self._replay.spend(identity.proof_hash, request_id=record.request_id, method=method_name,
                                           valid_until=identity.valid_until),
                lambda: self._check_quarantine(identity),
                lambda: self._take_identity_slot(identity))
            if (quarantine_error or limit_error) and not replay_error:
                record.instance = claimed_instance(identity)
            first_error = replay_error or quarantine_error or limit_error or facts_error
            if first_error:
                raise first_error
            record.account = facts.account or record.account
            record.instance = facts.instance_id or facts.claimed_instance
            record.facts = self.rules.used_facts(facts)
            decision = self.rules.decide(facts, login.role)
            record.rule = decision.rule
            if not decision.granted:
                raise NotAuthorized(f"role {login.role!r} is not granted to this caller", detail=decision.reason)
            self._take_role_slot(login.role)
            issued = self._minter.issue(
                login.role, decision.issuance,
                metadata={"request_id": record.request_id, "principal": identity.principal,
                          "instance": facts.instance_id, "rule": decision.rule},
                source_ip=source_ip,
            )
            record.role_id_wrap_accessor = issued.role_id_wrap.accessor
            record.secret_id_wrap_accessor = issued.secret_id_wrap.accessor
            record.secret_id_accessor = issued.secret_id_accessor
            record.secret_id_expires_at = int(time.time()) + decision.issuance.secret_id_ttl
            record.vault_audit_hmacs = self._audit_hashes(issued)
            record.outcome, record.code, record.reason = "issued", "issued", decision.reason
            self._write_audit(record, issued)
            return {
                "request_id": record.request_id,
                "role": login.role,
                "vault_addr": self.settings.vault_public_addr,
                "role_id_wrap": issued.role_id_wrap.public(),
                "secret_id_wrap": issued.secret_id_wrap.public(),
            }
        except BrokerError as error:
            error.request_id = record.request_id
            if record.outcome == "issued":  # the audit write itself failed: already handled
                raise
            self._record_failure(record, error)
            raise
        except Exception as error:  # a bug: still no credential without a record, and no 500 without one
            if issued is not None:
                self._take_back(record, issued)
            wrapped = InternalError("internal error", detail=f"unexpected {type(error).__name__}")
            wrapped.request_id = record.request_id
            self._log.exception("unexpected error", extra={"fields": {"request_id": record.request_id}})
            self._record_failure(record, wrapped)
            raise wrapped from None

    def _limits(self):
        return self.rules.rate_limits or RateLimits()

    def _take_identity_slot(self, identity):
        """Count this request against the per-identity limit: a compromised machine can't
        mint secret IDs in a loop. The identity is what the cloud signed: a GCE token's
        instance ID, else the principal (an EC2 instance's session ARN names the instance).
        Counters live in the quarantine table, shared by every Lambda instance."""
        limit = self._limits().per_identity
        if self._quarantine is None or not limit:
            return
        gce_instance = claimed_instance(identity) if getattr(identity, "claims", None) else None
        key = f"instance:{gce_instance}" if gce_instance else f"principal:{identity.principal}"
        self._quarantine.take_slot("issue-identity", key, limit=limit.count, window=limit.window,
                                   message="too many credentials asked for by this caller recently; try again later")

    def _take_role_slot(self, role):
        """The optional cap per AppRole, counted only for granted requests (a refused
        caller must not be able to use up a role's budget)."""
        limit = self._limits().per_role.get(role)
        if self._quarantine is None or not limit:
            return
        self._quarantine.take_slot("issue-role", role, limit=limit.count, window=limit.window,
                                   message=f"too many credentials issued for role {role!r} recently; try again later")

    def _check_quarantine(self, identity):
        if self._quarantine is not None:
            self._quarantine.check(instance=claimed_instance(identity), principal=identity.principal)

    def _audit_hashes(self, issued):
        """HMACs of the accessors and wrapping tokens as Vault's audit log shows them (best
        effort), or None. An HMAC is not a secret: Vault's audit device logs exactly these."""
        path = getattr(self.settings, "vault_audit_hash_path", None)
        if not path:
            return None
        return self._minter.audit_hashes(path, {
            "role_id_wrap_accessor": issued.role_id_wrap.accessor,
            "secret_id_wrap_accessor": issued.secret_id_wrap.accessor,
            "secret_id_accessor": issued.secret_id_accessor,
            "role_id_wrap_token": issued.role_id_wrap.token,  # finds failed unwraps too (no accessor then)
            "secret_id_wrap_token": issued.secret_id_wrap.token,
        }) or None

    def _record_failure(self, record, error):
        record.outcome = "denied" if error.status < 500 else "error"
        record.code = error.code
        record.reason = error.detail
        try:
            self._write_audit(record, None, backend=getattr(error, "backend", None))
        except Unavailable as audit_error:
            # The decision stands, but unrecorded it must not be an answer: say 503.
            audit_error.request_id = record.request_id
            raise audit_error from None

    def _write_audit(self, record, issued, backend=None):
        try:
            self._audit.write(record)
        except Unavailable as e:
            if issued is not None:
                self._take_back(record, issued)
            log(self._log, logging.ERROR, "audit write failed", **record.fields(), audit_error=e.detail)
            raise Unavailable("the audit store is unavailable; nothing was issued", backend="audit store",
                              detail=e.detail) from None
        log(self._log, logging.INFO, "decision", **record.fields(), **decision_metrics(record, backend=backend))

    def _take_back(self, record, issued):
        failures = self._minter.take_back(issued)
        if failures:
            log(self._log, logging.ERROR, "could not take back an unrecorded issuance",
                request_id=record.request_id, role=issued.role, left=failures)

    # ---- GET /v1/health ----------------------------------------------------

    def health(self):
        checks = {"vault": self._minter.health() or "ok", "audit_store": self._audit.health() or "ok"}
        return all(v == "ok" for v in checks.values()), checks
