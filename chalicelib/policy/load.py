"""Load and validate the rules file (TOML). A bad file stops the broker's start with
every problem found, each naming the rule and the field."""

import hashlib

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.9/3.10: the client file (broker.pyz) carries tomli, the same parser
    import tomli as tomllib

from .durations import parse_duration
from .fields import RulesError, only_keys, string_list, table
from .limits import parse_rate_limits
from .model import (DEFAULT_SECRET_ID_TTL, DEFAULT_WRAP_TTL, SECRET_ID_TTL_BOUNDS, WRAP_TTL_BOUNDS, Issuance, Rule,
                    RuleSet)
from .names import ROLE_NAME, RULE_NAME

SUPPORTED_VERSION = 1
# `serial`: the rules' own order (chalicelib/rules_source.py refuses to go below the highest
# one it applied). Absent: 0. At most 2**53 - 1 (exact as a JSON number and a DynamoDB N).
MAX_SERIAL = 2 ** 53 - 1


def default_matchers():
    from chalicelib.methods import conditions

    return conditions()


def load_rules(path, matchers=None):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read the rules file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise RulesError(f"{path}: the rules file is not UTF-8") from None
    return parse_rules(text, source=str(path), matchers=matchers)


def parse_rules(text, source="<rules>", matchers=None):
    """The RuleSet, or RulesError naming every problem (one per line, `.problems` lists them)."""
    matchers = default_matchers() if matchers is None else matchers
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{source}: not valid TOML: {e}") from None
    problems = []

    def attempt(fn, *args):
        try:
            return fn(*args)
        except RulesError as e:
            problems.append(str(e))
            return None

    attempt(only_keys, doc, {"version", "serial", "rule", "security", "rate_limits"}, source)
    version = doc.get("version")
    if type(version) is not int or version != SUPPORTED_VERSION:  # not True, not 1.0
        problems.append(f"{source}: 'version' must be {SUPPORTED_VERSION}")
    serial = doc.get("serial", 0)
    if type(serial) is not int or not 0 <= serial <= MAX_SERIAL:
        problems.append(f"{source}: 'serial' must be a whole number from 0 to {MAX_SERIAL} "
                        "(raise it with every change: the broker refuses rules older than those it applied)")
        serial = 0
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules, names = [], set()
    for index, raw in enumerate(raw_rules, start=1):
        rule = attempt(_parse_rule, raw, f"{source}: rule #{index}", matchers)
        if rule is None:
            continue
        if rule.name in names:
            problems.append(f"{source}: rule #{index}: name {rule.name!r} is used twice")
        names.add(rule.name)
        rules.append(rule)
    limits = attempt(parse_rate_limits, doc.get("rate_limits", {}), f"{source}: rate_limits")
    if limits is not None:
        unknown_roles = sorted(set(limits.per_role) - {r.role for r in rules})
        if unknown_roles and len(rules) == len(raw_rules):
            problems.append(f"{source}: rate_limits.per_role names role(s) no rule grants: {', '.join(unknown_roles)}")
    security = attempt(_parse_security, doc.get("security", {}), f"{source}: security", matchers)
    if problems:
        error = RulesError("\n".join(problems))
        error.problems = problems
        raise error
    return RuleSet(tuple(rules), source, security, limits, matchers=dict(matchers), serial=serial,
                   sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _parse_security(raw, where, matchers):
    """[security]: who may read the audit trail and revoke (the security team): principals
    of the method that proves the security team's callers (its match module's
    `parse_security_principal` checks each entry)."""
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table ([security])")
    only_keys(raw, {"principal_arns"}, where)
    principals = string_list(raw, "principal_arns", where)
    checks = [m.parse_security_principal for m in matchers.values() if hasattr(m, "parse_security_principal")]
    for p in principals:
        for check in checks:
            check(p, f"{where}.principal_arns")
    return principals


def _parse_rule(raw, where, matchers):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not RULE_NAME.match(name):
        raise RulesError(f"{where}: 'name' must be a short identifier (letters, digits, - _ .)")
    where = f"{where} ({name})"
    only_keys(raw, {"name", "role", "description", "issue", *matchers}, where)
    role = raw.get("role")
    if not isinstance(role, str) or not ROLE_NAME.match(role):
        raise RulesError(f"{where}: 'role' must be an AppRole name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RulesError(f"{where}: 'description' must be a string")
    methods = [m for m in matchers if m in raw]
    if len(methods) != 1:
        tables = " or ".join(f"[rule.{m}]" for m in matchers)
        raise RulesError(f"{where}: needs exactly one of {tables} saying whom it grants")
    method = methods[0]
    matcher = matchers[method]
    conditions = matcher.parse(table(raw[method], f"{where}: {method}"), f"{where}: {method}")
    issuance = _parse_issue(raw.get("issue", {}), f"{where}: issue")
    return Rule(name, role, issuance, method, conditions, matcher=matcher, description=description)


def _parse_issue(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    only_keys(raw, {"wrap_ttl", "secret_id_ttl", "bind_source_cidr"}, where)
    wrap_ttl = _duration(raw, "wrap_ttl", where, DEFAULT_WRAP_TTL, WRAP_TTL_BOUNDS)
    secret_id_ttl = _duration(raw, "secret_id_ttl", where, DEFAULT_SECRET_ID_TTL, SECRET_ID_TTL_BOUNDS)
    bind = raw.get("bind_source_cidr", False)
    if not isinstance(bind, bool):
        raise RulesError(f"{where}.bind_source_cidr: must be true or false")
    return Issuance(wrap_ttl=wrap_ttl, secret_id_ttl=secret_id_ttl, bind_source_cidr=bind)


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


def warnings(rules):
    """What `broker policy check` warns about: conditions a method flags as risky."""
    out = []
    for rule in rules.rules:
        for text in getattr(rule.matcher, "warnings", lambda c: [])(rule.conditions):
            out.append(f"{rules.source}: rule {rule.name}: {text}")
    return out
