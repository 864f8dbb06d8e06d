"""The identity contract (docs/architecture.md, "Adding a method"): each proof method owns
everything derived from one of its identities, and nothing else in the broker names a
method or tells one principal's shape from another's."""

import re
from pathlib import Path

from chalicelib import methods
from chalicelib.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
# The search of the identity issue: a method's name, or a test of a principal's shape.
SHAPES = [r'"@"', r"'@'", r"arn:", r"assumed-role"]


def _names():
    return [rf"[\"']{re.escape(name)}[\"']" for name in REGISTRY]


def _hits(paths, patterns):
    pattern = re.compile("|".join(patterns))
    return [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in paths
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]


def test_outside_the_method_packages_no_broker_module_names_a_method_or_parses_a_principal():
    """Stores, the audit schema, the security routes, the settings and the OpenAPI
    description take keys and names from the method: only the registry names one."""
    outside = [p for p in sorted((ROOT / "chalicelib").rglob("*.py"))
               if (ROOT / "chalicelib" / "methods") not in p.parents]
    assert outside, "no module found"
    assert _hits(outside, _names() + SHAPES) == []
    registry = ROOT / "chalicelib" / "methods" / "__init__.py"
    assert _hits([registry], _names()), "the registry names every method"


def test_the_places_that_name_a_method_are_the_ones_the_architecture_lists():
    """Outside chalicelib/methods/ (the packages and the registry), the server side names a
    method in app.py alone: the literal routes kept for older clients (any method is served
    by /v1/credentials/{method}). The packages read the registry (deploy/monitoring.py)."""
    server = [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py")), *sorted((ROOT / "deploy").rglob("*.py"))]
    named = {p.relative_to(ROOT).as_posix() for p in server
             if (ROOT / "chalicelib" / "methods") not in p.parents and _hits([p], _names())}
    # deploy/values.py: a stage's values file has a [gcp] table (the GCP audience); another
    # method's settings ride in its [environment] table. deploy/package.py: the AWS
    # method's reader-role policy (policies/aws/), which the packages deploy.
    assert named == {"app.py", "deploy/values.py", "deploy/package.py"}, named


def test_every_method_offers_the_whole_contract():
    for name in REGISTRY:
        package, identity = methods.package(name), methods.identity(name)
        for attribute in ("NAME", "PROOF_FIELDS", "CLAIMS_SIGNED", "BACKENDS", "build", "check_rules",
                          "settings_from_env"):
            assert hasattr(package, attribute), (name, attribute)
        for attribute in ("PRINCIPAL_FORMS", "MACHINE_FACTS", "principal_key", "quarantine_keys",
                          "index_principal", "parse_principal", "resolve_principal", "quarantine_covers"):
            assert hasattr(identity, attribute), (name, attribute)
        body = methods.openapi_bodies()[name]
        assert body.schema({"type": "string"})["properties"]["role"] == {"type": "string"}
    assert methods.admin_method() in REGISTRY


def test_each_method_derives_its_callers_quarantine_keys():
    from chalicelib.methods.aws.proof import caller_from_arn
    from chalicelib.methods.gcp.proof import caller_from_claims

    session = caller_from_arn("arn:aws:sts::123456789012:assumed-role/Demo-Node/i-0123456789abcdef0",
                              proof_hash="h", valid_until=0)
    assert session.quarantine_own == (("instance", "i-0123456789abcdef0"),
                                      ("principal", "arn:aws:sts::123456789012:assumed-role/demo-node/"
                                                    "i-0123456789abcdef0"))
    assert session.quarantine_shared == (("principal", "arn:aws:iam::123456789012:role/demo-node"),)
    account = caller_from_claims({"email": "App@p.iam.gserviceaccount.com", "sub": "1", "exp": 2}, "h")
    assert account.quarantine_own == ()
    assert account.quarantine_shared == (("principal", "app@p.iam.gserviceaccount.com"),
                                         ("instanceless", "app@p.iam.gserviceaccount.com"))


def test_a_revocation_target_is_parsed_by_the_method_that_takes_it():
    import pytest

    from chalicelib.errors import InvalidRequest

    name, arn = methods.parse_principal("arn:aws:iam::123456789012:role/Demo")
    assert name == "aws" and arn.name == "Demo"
    assert methods.parse_principal("SA@p.iam.gserviceaccount.com") == ("gcp", "sa@p.iam.gserviceaccount.com")
    with pytest.raises(InvalidRequest, match="an IAM role/user ARN, an STS session ARN or a service account email"):
        methods.parse_principal("nobody")
    with pytest.raises(InvalidRequest, match="not an IAM role/user ARN"):
        methods.parse_principal("arn:aws:iam::1:role/x")
    assert methods.index_principal("arn:aws:sts::123456789012:assumed-role/r/s") == \
        "arn:aws:iam::123456789012:role/r"
    assert methods.machine_verified({"method": "gcp", "facts": {"instance": {"instance_id": "1"}}})
    assert not methods.machine_verified({"method": "aws"})  # a session name is only a claim
    assert methods.machine_verified({"method": "gcp"})  # Google signs a GCE token's instance claims
