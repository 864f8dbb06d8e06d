"""The proof methods this broker knows: one line each.

A method is a package with:
- `build(settings, make_aws_client, pools, rules, stores=None)` -> the Method (proof + facts), built
  on first use; `pools` is the broker's HTTP client (chalicelib/http_client.py);
- `conditions` (its `match.py`): the `[rule.<name>]` table of the rules file,
  parsed and matched by the method itself; pure, importable by the client;
- `settings.py`: its own environment variables, validated at start
  (`settings_from_env(env, region)` in its `__init__.py`);
- `identity.py`: everything derived from one of its identities (its quarantine keys, the
  principal the audit index stores, how a revocation target naming it parses, which
  facts mean its machine was verified, what a quarantine of that machine also covers);
- in its `__init__.py`: `BACKENDS` (its backends' names for metrics and alarms),
  `OPENAPI` (its login body's schema), and the capabilities it offers: `PROVES_ADMINS`
  (the security team's routes take its proofs), `BUILT_AT_START` (its rules checks
  need it built when the rules are loaded).

Adding a method (a Kubernetes service-account token, an Azure managed identity)
is a new package and one line here; see docs/architecture.md. Nothing outside
`chalicelib/methods/` names a method: a test keeps it so.
"""

import importlib

# name -> package. The order is the order of `broker policy explain` and the docs.
REGISTRY = {
    "aws": "chalicelib.methods.aws",
    "gcp": "chalicelib.methods.gcp",
}


def package(name):
    """The method's package (imported on first use: AWS-only traffic never loads Google's libraries)."""
    return importlib.import_module(REGISTRY[name])


def names():
    return tuple(REGISTRY)


def identity(name):
    """The method's identity module (methods/<name>/identity.py: no cloud library)."""
    return importlib.import_module(f"{REGISTRY[name]}.identity")


def settings_from_env(env, region):
    """{name: the method's settings, or None when it is off}: every method reads its own."""
    return {name: package(name).settings_from_env(env, region) for name in REGISTRY}


def backends():
    """Every method's backend names (metrics, alarms), in registry order."""
    return tuple(dict.fromkeys(b for name in REGISTRY for b in package(name).BACKENDS))


def admin_method(enabled=None):
    """The name of the method whose proofs the security team's routes take."""
    for name in (enabled if enabled is not None else REGISTRY):
        if getattr(package(name), "PROVES_ADMINS", False):
            return name
    raise LookupError("no proof method proves the security team")


def principal_key(method, principal):
    """`principal` in the quarantine list's spelling, as its method keys it (an unknown
    method's as it is)."""
    return identity(method).principal_key(principal) if method in REGISTRY else principal


def index_principal_of(method, principal):
    """The principal the audit index keys a record of `method` on (an unknown method's as it is)."""
    return identity(method).index_principal(principal) if method in REGISTRY else principal


def index_principal(value):
    """The principal the audit index keys `value` (a search's principal) on: as the method
    whose revocation-target parser takes it says; anything no method takes as it is."""
    from ..errors import InvalidRequest

    try:
        found = _parse(value)
    except InvalidRequest:  # malformed for the method it looks like: as it is (it matches nothing)
        return value
    return identity(found[0]).index_principal(value) if found else value


def parse_principal(value):
    """(method name, parsed): the first method whose parser takes the revocation target
    `value`; InvalidRequest when none does (or one finds it malformed)."""
    from ..errors import InvalidRequest

    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("field principal must be a string")
    found = _parse(value.strip())
    if found is None:
        forms = [identity(name).PRINCIPAL_FORMS for name in REGISTRY]
        raise InvalidRequest("principal must be " + ", ".join(forms[:-1]) + (" or " if len(forms) > 1 else "")
                             + forms[-1])
    return found


def _parse(value):
    for name in REGISTRY:
        parsed = identity(name).parse_principal(value)
        if parsed is not None:
            return name, parsed
    return None


def machine_verified(record):
    """Whether an audit record's machine was verified (a quarantine of it then locks out
    the machine, not the requester): its facts hold the method's machine facts with no
    claim error; before the facts step, only when the method's proof signs its claims."""
    method = record.get("method")
    if method not in REGISTRY:
        return False
    facts = record.get("facts")
    if isinstance(facts, dict):
        return (not facts.get("claim_error") and not facts.get("claim_trust_error")
                and any(isinstance(facts.get(k), dict) for k in identity(method).MACHINE_FACTS))
    return bool(getattr(package(method), "CLAIMS_SIGNED", False))


def quarantine_covers(records):
    """[(kind, value, key value, note)]: what else a quarantine of these records' machine covers, as
    each record's method says (a GCE instance: its service accounts' instance-less tokens)."""
    covers = []
    for name in REGISTRY:
        mine = [r for r in records if r.get("method") == name]
        own = identity(name)
        covers += [(kind, value, own.principal_key(value), note)
                   for kind, value, note in (own.quarantine_covers(mine) if mine else [])]
    return covers


def openapi_bodies():
    """{name: its openapi module (SCHEMA, SUMMARY, DESCRIPTION, REFUSALS, schema(role))}."""
    return {name: importlib.import_module(f"{module}.openapi") for name, module in REGISTRY.items()}


def conditions():
    """{name: match module}: the rule conditions of every method, for the policy engine."""
    return {name: importlib.import_module(f"{module}.match") for name, module in REGISTRY.items()}


def facts_from_dict(data):
    """A method's facts from a dict (its `method` says which; aws by default), e.g. an
    audit record's `facts`: for `broker policy explain`."""
    if not isinstance(data, dict):
        raise ValueError("facts must be a JSON object")
    name = data.get("method", "aws")
    if name not in REGISTRY:
        raise ValueError(f"unknown proof method {name!r}; known: {', '.join(REGISTRY)}")
    return importlib.import_module(f"{REGISTRY[name]}.match").facts_from_dict(data)
