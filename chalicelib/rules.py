"""The access rules: which verified caller may receive which AppRole. Deny by default.

The rules file (TOML, `policies/rules.toml`) is validated when it is loaded; a bad
file stops the broker's start with a message naming the rule and the field.
Deciding is pure: facts in, decision out, no I/O.
"""

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field

SUPPORTED_VERSION = 1
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_DURATION = re.compile(r"^(\d+)(s|m|h)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}

# Bounds of what a rule may ask for. The wrap TTL must also fit the broker's own
# Vault policy (policies/vault/secret-zero-broker.hcl: 10s to 5m).
WRAP_TTL_BOUNDS = (10, 300)
SECRET_ID_TTL_BOUNDS = (30, 86400)
DEFAULT_WRAP_TTL = 60
DEFAULT_SECRET_ID_TTL = 300


class RulesError(ValueError):
    """The rules file is invalid; the message names the rule and the field."""


@dataclass(frozen=True)
class Issuance:
    """How the granted credentials are issued."""

    wrap_ttl: int = DEFAULT_WRAP_TTL
    secret_id_ttl: int = DEFAULT_SECRET_ID_TTL
    secret_id_num_uses: int = 1
    bind_source_cidr: bool = False


@dataclass(frozen=True)
class AwsMatch:
    accounts: tuple
    principal_arns: tuple
    require_instance: bool = False
    instance_tags: tuple = ()  # ((key, value glob), ...)
    role_tags: tuple = ()


@dataclass(frozen=True)
class GcpMatch:
    projects: tuple  # globs on the project ID
    service_accounts: tuple = ()  # globs on the token's service account email
    require_instance: bool = False
    zones: tuple = ()
    regions: tuple = ()
    instance_names: tuple = ()
    labels: tuple = ()  # ((key, value glob), ...)


@dataclass(frozen=True)
class Rule:
    name: str
    role: str
    issuance: Issuance
    aws: AwsMatch | None = None
    gcp: GcpMatch | None = None
    description: str = ""

    @property
    def method(self):
        return "aws" if self.aws else "gcp"

    def mismatches(self, facts):
        """The reasons this rule does not match the facts; empty when it does."""
        if facts.method != self.method:
            return [f"rule is for {self.method} callers, caller is {facts.method}"]
        return self._aws_mismatches(facts) if self.aws else self._gcp_mismatches(facts)

    def _gcp_mismatches(self, facts):
        match = self.gcp
        reasons = []
        if facts.project_id is None or not _any_glob(facts.project_id, match.projects):
            reasons.append(f"project {facts.project_id} matches none of {', '.join(match.projects)}")
        if match.service_accounts and not _any_glob(facts.email, match.service_accounts):
            reasons.append(f"service account {facts.email} matches none of {', '.join(match.service_accounts)}")
        instance = facts.instance
        if match.require_instance and instance is None:
            reasons.append("caller is not a verified running GCE instance")
        if instance is not None:
            for what, value, patterns in (("zone", instance.zone, match.zones), ("region", instance.region, match.regions),
                                          ("instance name", instance.name, match.instance_names)):
                if patterns and not _any_glob(value, patterns):
                    reasons.append(f"{what} {value} matches none of {', '.join(patterns)}")
        if match.labels:
            reasons += _tag_mismatches("label", instance.labels if instance else {}, match.labels)
        return reasons

    def _aws_mismatches(self, facts):
        match = self.aws
        reasons = []
        if facts.account not in match.accounts:
            reasons.append(f"account {facts.account} is not one of {', '.join(match.accounts)}")
        if not any(fnmatch.fnmatchcase(facts.canonical_arn, p) for p in match.principal_arns):
            reasons.append(f"principal {facts.canonical_arn} matches none of {', '.join(match.principal_arns)}")
        if match.require_instance and facts.instance is None:
            reasons.append("caller is not a verified running EC2 instance")
        if match.instance_tags:
            tags = facts.instance.tags if facts.instance else {}
            reasons += _tag_mismatches("instance tag", tags, match.instance_tags)
        if match.role_tags:
            if facts.role_name is None:
                reasons.append("caller is not a role, so it has no role tags")
            else:
                reasons += _tag_mismatches("role tag", facts.role_tags, match.role_tags)
        return reasons


def _any_glob(value, patterns):
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _tag_mismatches(kind, tags, wanted):
    reasons = []
    for key, pattern in wanted:
        if key not in tags:
            reasons.append(f"{kind} {key} is missing (needs {pattern!r})")
        elif not fnmatch.fnmatchcase(tags[key], pattern):
            reasons.append(f"{kind} {key} is {tags[key]!r}, needs {pattern!r}")
    return reasons


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
    # [rate_limits]: issuances per identity (instance, else principal) and per role.
    rate_limits: "RateLimits" = None

    def is_security_principal(self, canonical_arn):
        return bool(canonical_arn) and _any_glob(canonical_arn, self.security_principals)

    @property
    def roles(self):
        return sorted({r.role for r in self.rules})

    @property
    def instance_tag_keys(self):
        return sorted({k for r in self.rules if r.aws for k, _ in r.aws.instance_tags})

    @property
    def role_tag_keys(self):
        return sorted({k for r in self.rules if r.aws for k, _ in r.aws.role_tags})

    @property
    def label_keys(self):
        return sorted({k for r in self.rules if r.gcp for k, _ in r.gcp.labels})

    def decide(self, facts, role):
        """Grant `role` to the caller if a rule for that role matches, else say why not."""
        if facts.instance_claim_error:
            return Decision(False, role, reason=facts.instance_claim_error)
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
            if facts.instance_claim_error:
                reasons = [facts.instance_claim_error]
            else:
                reasons = rule.mismatches(facts)
            verdicts.append(Verdict(rule.name, rule.role, not reasons, reasons))
        return verdicts

    def used_facts(self, facts):
        """The facts worth recording: only the tag and label keys that some rule names count."""
        data = facts.to_dict()
        if facts.method == "gcp":
            if data.get("instance"):
                keys = set(self.label_keys)
                data["instance"]["labels"] = {k: v for k, v in data["instance"]["labels"].items() if k in keys}
            return data
        inst_keys = set(self.instance_tag_keys)
        role_keys = set(self.role_tag_keys)
        if data.get("instance"):
            data["instance"]["tags"] = {k: v for k, v in data["instance"]["tags"].items() if k in inst_keys}
        data["role_tags"] = {k: v for k, v in data["role_tags"].items() if k in role_keys}
        return data


# ---- loading and validation -------------------------------------------------


def load_rules(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read the rules file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise RulesError(f"{path}: the rules file is not UTF-8") from None
    return parse_rules(text, source=str(path))


def parse_rules(text, source="<rules>"):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{source}: not valid TOML: {e}") from None
    _only_keys(doc, {"version", "rule", "security", "rate_limits"}, source)
    version = doc.get("version")
    if type(version) is not int or version != SUPPORTED_VERSION:  # not True, not 1.0
        raise RulesError(f"{source}: 'version' must be {SUPPORTED_VERSION}")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules, names = [], set()
    for index, raw in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw, f"{source}: rule #{index}")
        if rule.name in names:
            raise RulesError(f"{source}: rule #{index}: name {rule.name!r} is used twice")
        names.add(rule.name)
        rules.append(rule)
    limits = _parse_rate_limits(doc.get("rate_limits", {}), f"{source}: rate_limits")
    unknown_roles = sorted(set(limits.per_role) - {r.role for r in rules})
    if unknown_roles:
        raise RulesError(f"{source}: rate_limits.per_role names role(s) no rule grants: {', '.join(unknown_roles)}")
    return RuleSet(tuple(rules), source, _parse_security(doc.get("security", {}), f"{source}: security"), limits)


@dataclass(frozen=True)
class Limit:
    count: int
    window: int  # seconds

    def __str__(self):
        return f"{self.count}/{self.window}s"


@dataclass(frozen=True)
class RateLimits:
    """How many issuances the broker allows in a window, shared by every Lambda instance."""

    per_identity: Limit = None  # None: the default below
    per_role: dict = field(default_factory=dict)  # {role: Limit}

    def __post_init__(self):
        if self.per_identity is None:
            object.__setattr__(self, "per_identity", DEFAULT_PER_IDENTITY)


# A machine boots once; a crash-looping container a few times an hour. More than this
# from one identity is a loop minting secret IDs, which is what the limit is for.
DEFAULT_PER_IDENTITY = Limit(20, 3600)
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


def _parse_limit(value, where):
    m = _RATE.match(value) if isinstance(value, str) else None
    window = parse_duration(m.group(2)) if m else None
    if not m or window is None or not 1 <= window <= 86400 or not 1 <= int(m.group(1)) <= 1_000_000:
        raise RulesError(f"{where}: {value!r} is not a rate like '20/1h' (1 to 1000000 per 1s..24h)")
    return Limit(int(m.group(1)), window)


def _parse_rate_limits(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table ([rate_limits])")
    _only_keys(raw, {"per_identity", "per_role"}, where)
    per_identity = _parse_limit(raw["per_identity"], f"{where}.per_identity") if "per_identity" in raw \
        else DEFAULT_PER_IDENTITY
    per_role = raw.get("per_role", {})
    if not isinstance(per_role, dict):
        raise RulesError(f"{where}.per_role: must be a table of role = 'N/window'")
    return RateLimits(per_identity, {role: _parse_limit(v, f"{where}.per_role.{role}") for role, v in per_role.items()})


def _parse_security(raw, where):
    """[security]: who may read the audit trail and revoke (the security team)."""
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table ([security])")
    _only_keys(raw, {"principal_arns"}, where)
    principals = _string_list(raw, "principal_arns", where, required=False)
    for p in principals:
        if not p.startswith("arn:") or p.count(":") < 5:
            raise RulesError(f"{where}.principal_arns: {p!r} is not an IAM ARN (glob)")
        if ":assumed-role/" in p or p.startswith("arn:aws:sts:"):
            raise RulesError(f"{where}.principal_arns: {p!r} must be an IAM role or user ARN "
                             "(arn:aws:iam::ACCOUNT:role/NAME), not an STS session ARN")
        if p.split(":", 5)[5] in ("*", "role/*", "user/*") or p.split(":")[4] in ("*", ""):
            raise RulesError(f"{where}.principal_arns: {p!r} is too broad: name the account and the role or user")
    return tuple(principals)


def _parse_rule(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise RulesError(f"{where}: 'name' must be a short identifier (letters, digits, - _ .)")
    where = f"{where} ({name})"
    _only_keys(raw, {"name", "role", "description", "aws", "gcp", "issue"}, where)
    role = raw.get("role")
    if not isinstance(role, str) or not _ROLE_NAME.match(role):
        raise RulesError(f"{where}: 'role' must be an AppRole name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RulesError(f"{where}: 'description' must be a string")
    if ("aws" in raw) == ("gcp" in raw):
        raise RulesError(f"{where}: needs exactly one of [rule.aws] or [rule.gcp] saying whom it grants")
    aws = _parse_aws(raw["aws"], f"{where}: aws") if "aws" in raw else None
    gcp = _parse_gcp(raw["gcp"], f"{where}: gcp") if "gcp" in raw else None
    issuance = _parse_issue(raw.get("issue", {}), f"{where}: issue")
    return Rule(name, role, issuance, aws=aws, gcp=gcp, description=description)


def _parse_aws(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    _only_keys(raw, {"accounts", "principal_arns", "require_instance", "instance_tags", "role_tags"}, where)
    accounts = _string_list(raw, "accounts", where, required=True)
    for account in accounts:
        if not _ACCOUNT.match(account):
            raise RulesError(f"{where}.accounts: {account!r} is not a 12-digit account ID")
    principals = _string_list(raw, "principal_arns", where, required=True)
    for p in principals:
        if not p.startswith("arn:"):
            raise RulesError(f"{where}.principal_arns: {p!r} is not an ARN (glob)")
    require_instance = raw.get("require_instance", False)
    if not isinstance(require_instance, bool):
        raise RulesError(f"{where}.require_instance: must be true or false")
    instance_tags = _tag_table(raw, "instance_tags", where)
    role_tags = _tag_table(raw, "role_tags", where)
    if instance_tags and not require_instance:
        raise RulesError(f"{where}.instance_tags: needs require_instance = true")
    return AwsMatch(tuple(accounts), tuple(principals), require_instance, instance_tags, role_tags)


def _parse_gcp(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    _only_keys(raw, {"projects", "service_accounts", "require_instance", "zones", "regions", "instance_names",
                     "labels"}, where)
    projects = _string_list(raw, "projects", where, required=True)
    service_accounts = _string_list(raw, "service_accounts", where, required=False)
    require_instance = raw.get("require_instance", False)
    if not isinstance(require_instance, bool):
        raise RulesError(f"{where}.require_instance: must be true or false")
    zones = _string_list(raw, "zones", where, required=False)
    regions = _string_list(raw, "regions", where, required=False)
    names = _string_list(raw, "instance_names", where, required=False)
    labels = _tag_table(raw, "labels", where)
    for key, value in (("zones", zones), ("regions", regions), ("instance_names", names), ("labels", labels)):
        if value and not require_instance:
            raise RulesError(f"{where}.{key}: needs require_instance = true")
    return GcpMatch(tuple(projects), tuple(service_accounts), require_instance, tuple(zones), tuple(regions),
                    tuple(names), labels)


def _parse_issue(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    _only_keys(raw, {"wrap_ttl", "secret_id_ttl", "bind_source_cidr"}, where)
    wrap_ttl = _duration(raw, "wrap_ttl", where, DEFAULT_WRAP_TTL, WRAP_TTL_BOUNDS)
    secret_id_ttl = _duration(raw, "secret_id_ttl", where, DEFAULT_SECRET_ID_TTL, SECRET_ID_TTL_BOUNDS)
    bind = raw.get("bind_source_cidr", False)
    if not isinstance(bind, bool):
        raise RulesError(f"{where}.bind_source_cidr: must be true or false")
    return Issuance(wrap_ttl=wrap_ttl, secret_id_ttl=secret_id_ttl, bind_source_cidr=bind)


def _only_keys(table, allowed, where):
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _string_list(raw, key, where, required):
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RulesError(f"{where}.{key}: must be a list of non-empty strings")
    if required and not value:
        raise RulesError(f"{where}.{key}: must name at least one value")
    return value


def _tag_table(raw, key, where):
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise RulesError(f"{where}.{key}: must be a table of tag key = value (glob)")
    for k, v in value.items():
        if not k or not isinstance(v, str) or not v:
            raise RulesError(f"{where}.{key}.{k}: must be a non-empty string")
    return tuple(sorted(value.items()))


def parse_duration(value):
    """Seconds from an int or a string like '90', '90s', '5m', '1h'; None if malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 16:
        m = _DURATION.match(value.strip())
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    return None


def _duration(raw, key, where, default, bounds):
    if key not in raw:
        return default
    seconds = parse_duration(raw[key])
    if seconds is None:
        raise RulesError(f"{where}.{key}: {raw[key]!r} is not a duration like '60s', '5m' or '1h'")
    low, high = bounds
    if not low <= seconds <= high:
        raise RulesError(f"{where}.{key}: {seconds}s is outside {low}s..{high}s")
    return seconds
