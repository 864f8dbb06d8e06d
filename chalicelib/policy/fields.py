"""Validation helpers for the rules file's tables, shared by the engine and each
method's conditions (chalicelib/methods/*/match.py). Every error names the field."""

import fnmatch


class RulesError(ValueError):
    """The rules file is invalid; the message names the rule and the field."""


def only_keys(table, allowed, where):
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def table(raw, where):
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    return raw


def string_list(raw, key, where, required=False):
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RulesError(f"{where}.{key}: must be a list of non-empty strings")
    if required and not value:
        raise RulesError(f"{where}.{key}: must name at least one value")
    return tuple(value)


def boolean(raw, key, where, default=False):
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise RulesError(f"{where}.{key}: must be true or false")
    return value


def tag_table(raw, key, where):
    """A table of tag key = value glob, as a sorted tuple of pairs."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise RulesError(f"{where}.{key}: must be a table of tag key = value (glob)")
    for k, v in value.items():
        if not k or not isinstance(v, str) or not v:
            raise RulesError(f"{where}.{key}.{k}: must be a non-empty string")
    return tuple(sorted(value.items()))


_GLOB_CHARS = frozenset("*?[")


def glob_match(value, pattern):
    """fnmatchcase, without compiling a pattern that has no wildcard (an exact tag value,
    ARN or action): fnmatch compiles a regular expression for each pattern it meets
    (~0.2 ms, paid by the first request that meets it) to answer what == answers."""
    if _GLOB_CHARS.isdisjoint(pattern):
        return value == pattern
    return fnmatch.fnmatchcase(value, pattern)


def any_glob(value, patterns):
    return value is not None and any(glob_match(value, p) for p in patterns)


def tag_mismatches(kind, tags, wanted):
    """Why `tags` does not satisfy the wanted (key, glob) pairs; empty when it does."""
    reasons = []
    for key, pattern in wanted:
        if key not in tags:
            reasons.append(f"{kind} {key} is missing (needs {pattern!r})")
        elif not glob_match(tags[key], pattern):
            reasons.append(f"{kind} {key} is {tags[key]!r}, needs {pattern!r}")
    return reasons


def glob_mismatch(what, value, patterns):
    """A reason when `value` matches none of `patterns` (no patterns: no condition)."""
    if patterns and not any_glob(value, patterns):
        return [f"{what} {value} matches none of {', '.join(patterns)}"]
    return []
