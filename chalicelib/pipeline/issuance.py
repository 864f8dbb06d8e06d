"""Issuance: proof -> facts -> rules -> minting -> audit, for every proof method.

Cheap refusals first, budgets spent last:
1. parse the body and check the proof offline (400 / 401);
2. at once: look the proof up in the replay store (with the quarantine epoch, one
   request) and verify it with the cloud -> VerifiedCaller. A replay of a proof spent
   before its lookup is refused (401 proof_replayed) before any fact is read or budget
   counted; it costs at most the one STS call a forged proof costs, none when this
   process saw the proof spent. A proof raced against itself (both lookups answered
   before either was admitted) is refused by the admission transaction of step 3,
   its facts read but no budget counted, nothing minted;
3. at once: read the caller's facts, and admit the proof in one DynamoDB transaction
   (spent, its own quarantine keys clear, within its budgets) beside the
   keys its role shares (read again only when the epoch changed: chalicelib/admission.py);
4. the rules decide (403 not_authorized); the per-role cap counts granted requests only;
5. mint the wrapped role ID and secret ID; 6. the audit record, before the answer;
7. the window: an issuance whose record was written later than `issuance_window_seconds`
   after the quarantine reads it relied on reads its quarantine keys again, and takes
   itself back if its caller was quarantined meanwhile (403) or the list can't be read
   (503). A revocation's second sweep, `settle` seconds after its quarantine, finds every
   issuance within its window that got past the quarantine before it landed
   (chalicelib/security/revocations.py, chalicelib/config.py): no extra read on the way.

Every request ends in exactly one audit record (chalicelib/pipeline/frame.py). If that
record can't be written, whatever was minted is taken back and the caller gets 503.
"""

import hashlib
import logging
import secrets
import threading
import time

from ..admission import BUDGET_SCOPES
from ..concurrency import settle
from ..errors import InvalidRequest, NotAuthorized, Quarantined, Unavailable
from ..jsonlog import log
from ..policy import RateLimits
from ..stores.quarantine import keys_of
from .proving import prove


def registration_key_sha256(key):
    return hashlib.sha256(key.encode("ascii")).hexdigest()


class BrokerService:
    def __init__(self, *, settings, rules, methods, admission, minter, frame, logger, rate_limits=None,
                 quarantine=None, security=None, security_factory=None, monotonic=time.monotonic):
        self.settings = settings
        self.rules = rules
        self._rate_limits = rate_limits  # chalicelib.stores rate-limit store, or None (no per-role caps)
        self._quarantine = quarantine  # chalicelib.stores quarantine list, or None (no quarantine)
        # chalicelib.security.SecurityRoutes (app.py's security routes), or the function that
        # builds it on first use (an issuance never needs its modules: chalicelib/backends.py)
        self._security = security
        self._security_factory = security_factory
        self._method_factories = methods  # {name: () -> Method}, built on first use
        self._methods = {}
        self._methods_lock = threading.Lock()
        self._admission = admission
        self._minter = minter
        self._frame = frame
        self._log = logger
        self._monotonic = monotonic

    @property
    def security(self):
        if self._security is None and self._security_factory is not None:
            self._security = self._security_factory()  # backends._once: one object, whichever thread asks first
        return self._security

    @property
    def method_names(self):
        return tuple(self._method_factories)

    def method(self, name):
        """The enabled proof method `name`, built on first use."""
        if name not in self._methods:
            with self._methods_lock:
                if name not in self._methods:
                    factory = self._method_factories.get(name)
                    if factory is None:
                        raise InvalidRequest(f"unknown proof method {name!r}; this broker accepts "
                                             f"{', '.join(self._method_factories)}")
                    self._methods[name] = factory()
        return self._methods[name]

    # ---- POST /v1/credentials/{method} ----------------------------------------------------

    def issue(self, method_name, raw_body, **context):
        """The success body, or a BrokerError carrying `request_id`."""
        known = method_name if method_name in self._method_factories else "unknown"
        record = self._frame.new_record(known, context)
        issued, evidence = [], []

        def work():
            method = self.method(method_name)
            login = method.parse(raw_body)
            record.role = login.role
            # Parse, validate, execute, check. Security-critical: the replay lookup and the
            # verification run at once, and both must pass before anything else is asked
            # (facts, budgets, Vault). A proof this process saw spent is refused here, with
            # no call at all.
            caller, lookup = prove(method, login, admission=self._admission, record=record)
            own, shared = self._quarantine_keys(caller)
            # Three leaf calls at once: the facts, the admission transaction (the proof spent,
            # the budget counted, the caller's own quarantine keys), the keys its role shares.
            # The proof is spent even when a shared key refuses the caller.
            (facts, facts_error), (admitted_at, admit_error), (shared_at, shared_error) = settle(
                lambda: method.read_facts(caller, login),
                lambda: self._admit(caller, record, own),
                self._admission.shared_check(shared, lookup))
            if shared_error is not None and admit_error is None:
                self._refund(caller)  # refused by its role's key: the budget slot is given back
            if admit_error or shared_error or facts_error:
                raise admit_error or shared_error or facts_error
            if self._quarantine is not None:  # no quarantine, no revocations: no window to keep
                evidence.append((min(admitted_at, shared_at), [*own, *shared]))  # read again past the window
            record.account = facts.account or record.account
            if facts.entity is not None:
                record.instance = facts.entity.id
            rules = self._rules_now()  # one version of the rules for the whole decision
            record.facts = rules.used_facts(facts)
            decision = rules.decide(facts, login.role)
            record.rule = decision.rule
            if not decision.granted:
                raise NotAuthorized(f"role {login.role!r} is not granted to this caller", detail=decision.reason)
            self._take_role_slot(login.role)
            minted = self._minter.issue(
                login.role, decision.issuance,
                metadata={"request_id": record.request_id, "principal": caller.principal,
                          "instance": record.instance, "rule": decision.rule},
                source_ip=context.get("source_ip"),
            )
            issued.append(minted)
            record.role_id_wrap_accessor = minted.role_id_wrap.accessor
            record.secret_id_wrap_accessor = minted.secret_id_wrap.accessor
            record.secret_id_accessor = minted.secret_id_accessor
            record.secret_id_expires_at = int(time.time()) + decision.issuance.secret_id_ttl
            record.outcome, record.code, record.reason = "issued", "issued", decision.reason
            # The key that registers the token logged in with this issuance (POST /v1/tokens):
            # it goes to this caller only; the record keeps its SHA-256, never the key.
            registration_key = secrets.token_urlsafe(32)
            record.registration_key_sha256 = registration_key_sha256(registration_key)
            return {
                "role": login.role,
                "vault_addr": self.settings.vault_public_addr,
                # The namespace the tokens were minted in (null: the root namespace): the client
                # refuses an answer naming another than the one it is pinned to.
                "vault_namespace": self.settings.vault_namespace,
                "role_id_wrap": minted.role_id_wrap.public(),
                "secret_id_wrap": minted.secret_id_wrap.public(),
                "token_registration_key": registration_key,
            }

        def take_back():
            # a list, not a generator: every issuance is taken back, even after one failed
            return bool(issued) and all([self._take_back(record, minted) for minted in issued])

        body = self._frame.run(record, work, on_unrecorded=take_back)
        if issued and evidence:
            self._within_window(record, *evidence[0], issued, context)
        return {"request_id": body.pop("request_id"), **body}

    def _within_window(self, record, evidence_read_at, keys, issued, context):
        """After the record is written: if the quarantine reads this issuance relied on are
        older than its window, a revocation's second sweep may have run before the record
        could be seen. Then its quarantine keys are read again (consistent reads, after the
        record was written: the old confirmation, on slow issuances only): clear, the record
        was written before any quarantine now in force, and its revocation's passes find it;
        else it is taken back, and the refusal is a record of its own (related to the
        issuance's). A slow but healthy backend so still serves (without the re-read every
        issuance past 2 s, and every retry, was taken back)."""
        # Security-critical: this is what lets a revocation's sweep stand in for a re-read
        # of the quarantine (the window and the sweep's delay are set together in config.py).
        elapsed = self._monotonic() - evidence_read_at
        window = self.settings.issuance_window_seconds
        if elapsed <= window:
            return
        log(self._log, logging.WARNING, "issuance past its window: its quarantine keys read again",
            request_id=record.request_id, elapsed=round(elapsed, 3), window=round(window, 3))
        try:
            self._quarantine.check(keys)
            return
        except (Quarantined, Unavailable) as error:
            refusal = error
        for minted in issued:
            self._take_back(record, minted)
        refusal.detail = (f"issuance {record.request_id} taken back (wrapping tokens spent, secret ID destroyed): "
                          f"its record was written {elapsed:.2f} s after the quarantine reads it relied on, over "
                          f"its window of {window:.2f} s, and its quarantine keys read again: {refusal.detail}")
        follow = self._frame.new_record(record.method, context, role=record.role, principal=record.principal,
                                        index_principal=record.index_principal,
                                        account=record.account, instance=record.instance,
                                        related_request_id=record.request_id, action="take_back")

        def refuse():
            raise refusal

        self._frame.run(follow, refuse)

    def _rules_now(self):
        """The RuleSet in force (chalicelib/rules_source.py LiveRules re-reads its source)."""
        current = getattr(self.rules, "current", None)
        return current() if callable(current) else self.rules

    def _limits(self):
        return self._rules_now().rate_limits or RateLimits()

    def _quarantine_keys(self, caller):
        """(own, shared) quarantine keys: the caller's own (its machine, its session) go in the
        admission transaction; keys shared by many callers (a role, a service account) are
        read beside it."""
        if self._quarantine is None:
            return [], []
        return keys_of(caller.quarantine_own), keys_of(caller.quarantine_shared)

    def _admit(self, caller, record, own_keys):
        """Spend the proof, check the caller's own quarantine keys and count its budgets
        (its identity's; its principal's when it claims no machine): one transaction, so a
        replay or a quarantined caller never spends a budget. Returns when it was sent
        (monotonic)."""
        return self._admission.admit(caller.proof_hash, request_id=record.request_id, method=caller.method,
                                     valid_until=caller.valid_until, quarantine_keys=own_keys,
                                     budgets=self._budgets(caller))

    def _budgets(self, caller):
        """((scope, key, Limit), ...) of the budgets the caller's method says it counts."""
        limits = self._limits()
        return tuple((BUDGET_SCOPES[name], key, limits.of_budget(name)) for name, key in caller.budgets)

    def _refund(self, caller):
        try:
            self._admission.refund(budgets=self._budgets(caller))
        except Unavailable as e:  # the refusal stands; the slot ends with its window
            log(self._log, logging.WARNING, "budget slot not given back", problem=e.detail)

    def _take_role_slot(self, role):
        """The optional cap per AppRole, counted only for granted requests (a refused
        caller must not be able to use up a role's budget)."""
        limit = self._limits().per_role.get(role)
        if self._rate_limits is None or not limit:
            return
        self._rate_limits.take_slot("issue-role", role, limit=limit.count, window=limit.window,
                                   message=f"too many credentials issued for role {role!r} recently; try again later")

    def _take_back(self, record, issued):
        """True when nothing of `issued` is usable any more."""
        failures = self._minter.take_back(issued)
        if failures:
            log(self._log, logging.ERROR, "could not take back an unrecorded issuance",
                request_id=record.request_id, role=issued.role, left=failures)
        return not failures

    # ---- GET /v1/health --------------------------------------------------------------------

    def health(self):
        checks = {"vault": self._minter.health() or "ok", "audit_store": self._frame.audit_health() or "ok"}
        return all(v == "ok" for v in checks.values()), checks
