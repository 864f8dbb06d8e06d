"""The rules as data, and deciding: facts in, decision out, no I/O. Deny by default.

The engine knows no cloud. Each rule names one proof method (`[rule.aws]`,
`[rule.gcp]`, ...) and holds that method's parsed conditions; the method's
`match` module (chalicelib/methods/<name>/match.py) says whether they hold.
"""

from __future__ import annotations  # X | None in class bodies: the client runs on Python 3.9


from dataclasses import dataclass, field

from .fields import any_glob
from .limits import RateLimits

# Bounds of what a rule may ask for. The wrap TTL must also fit the broker's own
# Vault policy (policies/vault/secret-zero-broker.hcl: 10s to 5m).
WRAP_TTL_BOUNDS = (10, 300)
SECRET_ID_TTL_BOUNDS = (30, 86400)
DEFAULT_WRAP_TTL = 60
DEFAULT_SECRET_ID_TTL = 300


@dataclass(frozen=True)
class Issuance:
    """How the granted credentials are issued."""

    wrap_ttl: int = DEFAULT_WRAP_TTL
    secret_id_ttl: int = DEFAULT_SECRET_ID_TTL
    secret_id_num_uses: int = 1
    bind_source_cidr: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    role: str
    issuance: Issuance
    method: str  # the proof method whose callers it grants
    conditions: object  # that method's parsed conditions
    matcher: object = field(default=None, compare=False, repr=False)  # that method's match module
    description: str = ""

    def mismatches(self, facts):
        """The reasons this rule does not match the facts; empty when it does."""
        if facts.method != self.method:
            return [f"rule is for {self.method} callers, caller is {facts.method}"]
        if facts.claim_error:
            return [facts.claim_error]
        return self.matcher.mismatches(self.conditions, facts)


@dataclass(frozen=True)
class Decision:
    granted: bool
    role: str
    rule: str | None = None
    issuance: Issuance | None = None
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """One rule's answer for `explain`."""

    rule: str
    role: str
    granted: bool
    reasons: list = field(default_factory=list)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple
    source: str = "<rules>"
    # [security] principal_arns: globs on the canonical IAM ARN of who may use the
    # security-team routes (audit queries, revocations). Empty: nobody.
    security_principals: tuple = ()
    # [rate_limits]: issuances per identity (machine, else principal) and per role.
    rate_limits: RateLimits = None
    matchers: dict = field(default_factory=dict, compare=False, repr=False)  # {method: match module}
    serial: int = 0  # the file's `serial`: its place in the order of the rules (0: none given)
    sha256: str = ""  # of the file's text: which content exactly, in every audit record

    def is_security_principal(self, canonical_arn):
        return bool(canonical_arn) and any_glob(canonical_arn, self.security_principals)

    @property
    def roles(self):
        return sorted({r.role for r in self.rules})

    def rules_of(self, method):
        return [r for r in self.rules if r.method == method]

    def decide(self, facts, role):
        """Grant `role` to the caller if a rule for that role matches, else say why not."""
        if facts.claim_error:
            # A claim that does not hold (a session named after somebody else's instance...)
            # is refused whatever the rules say.
            return Decision(False, role, reason=facts.claim_error)
        candidates = [r for r in self.rules if r.role == role]
        if not candidates:
            return Decision(False, role, reason=f"no rule grants role {role!r}")
        failures = []
        for rule in candidates:
            reasons = rule.mismatches(facts)
            if not reasons:
                return Decision(True, role, rule=rule.name, issuance=rule.issuance,
                                reason=f"granted by rule {rule.name}")
            failures.append(f"rule {rule.name}: " + "; ".join(reasons))
        return Decision(False, role, reason=" | ".join(failures))

    def explain(self, facts, role=None):
        """Every rule's verdict (for `role` only, when given), in file order."""
        verdicts = []
        for rule in self.rules:
            if role is not None and rule.role != role:
                continue
            reasons = rule.mismatches(facts)
            verdicts.append(Verdict(rule.name, rule.role, not reasons, reasons))
        return verdicts

    def used_facts(self, facts):
        """The facts worth recording: only the tag and label keys that some rule names count."""
        matcher = self.matchers.get(facts.method)
        data = facts.to_dict()
        if matcher is None:
            return data
        return matcher.used_facts(data, [r.conditions for r in self.rules_of(facts.method)])
