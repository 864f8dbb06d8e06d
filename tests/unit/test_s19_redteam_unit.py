"""Red team of the cold-start and fewer-IAM-calls changes (the X-Amz-Date parse, glob_match,
GetRole for the role's tags, the bytecode build): what strptime and fnmatch did, these
still do where the broker relies on it; and the records' secrets and frozenness."""

import fnmatch
import re
import subprocess
from dataclasses import FrozenInstanceError

import pytest

from chalicelib.methods.aws.trust import _ASSUME_ACTIONS, _grants_assume, only_service_may_assume
from chalicelib.policy.fields import glob_match

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"


# ---- records: secrets out of every repr ------------------------------------------------------

def _settings(**changes):
    from chalicelib.config import Settings

    values = dict(vault_addr="https://vault:8200", vault_public_addr="https://vault:8200",
                  vault_role_id="7d2f6f0e-role-id-of-the-broker-1234", vault_secret_id_secret="broker/secret-id",
                  vault_approle_mount="approle", vault_timeout=5.0, aws_endpoint_url=None, aws_region="us-east-1",
                  audit_table="audit", replay_table="replay", rules_file="rules.toml", audit_retention_days=400,
                  log_level="INFO", revoker_role_id="c0ffee00-role-id-of-the-revoker-99")
    values.update(changes)
    return Settings(**values)


def test_the_settings_repr_holds_no_role_id():
    """The broker's and the revoker's AppRole role IDs are half of a Vault login (the suite's
    secret scanner tracks role IDs as secrets): a Settings repr (a traceback's locals, an
    f-string in a log line) must not carry them. It did, as the dataclass's did."""
    settings = _settings()
    text = repr(settings)
    assert "7d2f6f0e-role-id-of-the-broker-1234" not in text
    assert "c0ffee00-role-id-of-the-revoker-99" not in text
    assert "vault_addr='https://vault:8200'" in text  # the rest is still shown
    # still read and compared
    assert settings.vault_role_id == "7d2f6f0e-role-id-of-the-broker-1234"
    assert settings != _settings(vault_role_id="another-role-id-of-the-broker-0000") and settings == _settings()


def test_every_secret_field_of_a_record_stays_out_of_its_repr():
    from chalicelib.methods.aws.proof import SignedProof
    from chalicelib.methods.aws.request import AwsLoginRequest
    from chalicelib.methods.gcp.proof import GcpLoginRequest
    from chalicelib.minter import Issued, Wrap

    secret = "hvs.CAESIJ-not-a-real-token-but-shaped-like-one"
    wrap = Wrap(secret, "accessor-1", 60, "2026-01-01T00:00:00Z", "auth/approle/role/web/secret-id")
    shown = [repr(wrap), repr(Issued("web", wrap, wrap, "sid-accessor")),
             repr(AwsLoginRequest("web", "POST", "https://sts.amazonaws.com/", b"Action=GetCallerIdentity",
                                  (("X-Amz-Security-Token", secret), ("Authorization", f"Signature={secret}")))),
             repr(SignedProof("https://sts.amazonaws.com/", "sts.amazonaws.com", (("x", secret),), secret, None)),
             repr(GcpLoginRequest("web", secret))]
    for text in shown:
        assert secret not in text, text


# ---- records: frozen where requests share them -----------------------------------------------

def test_a_cached_principal_arn_and_a_kept_position_refuse_every_kind_of_assignment():
    from chalicelib.audit_query import TOP, _Shard
    from chalicelib.methods.aws.arn import parse_principal_arn

    arn = parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0")
    for attempt in (lambda: setattr(arn, "name", "admin"), lambda: delattr(arn, "account"),
                    lambda: setattr(arn, "brand_new", 1)):
        with pytest.raises(FrozenInstanceError):
            attempt()
    assert parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0").name == \
        "demo-node"
    # a mutable record's default is the frozen TOP, shared by every shard: it can't be changed
    one, two = _Shard("a"), _Shard("b")
    assert one.frontier is two.frontier is TOP
    with pytest.raises(FrozenInstanceError):
        one.frontier.request_id = "x"


def test_a_misspelt_field_of_the_audit_record_is_refused_not_lost():
    """The pipeline fills the (mutable) audit record as it goes: a misspelt name would
    otherwise be a new attribute, and the field it meant missing from the trail."""
    from chalicelib.audit import AuditRecord

    record = AuditRecord("req-1", "aws")
    with pytest.raises(AttributeError):
        record.secret_id_acessor = "accessor-1"
    record.secret_id_accessor = "accessor-1"
    assert record.fields()["secret_id_accessor"] == "accessor-1"


def test_default_factories_give_each_record_its_own_dict():
    from chalicelib.methods.aws.model import AwsFacts

    one = AwsFacts("123456789012", "arn:aws:sts::123456789012:assumed-role/r/s", "arn:aws:iam::123456789012:role/r",
                   "assumed-role")
    two = AwsFacts("123456789012", "arn:aws:sts::123456789012:assumed-role/r/s", "arn:aws:iam::123456789012:role/r",
                   "assumed-role")
    one.role_tags["vault-role"] = "batch"
    assert two.role_tags == {} and one != two


# ---- glob_match in the trust check -----------------------------------------------------------

ACTION_PATTERNS = ["sts:AssumeRole", "STS:ASSUMEROLE", "sts:AssumeRole*", "sts:*", "*", "sts:Assume?ole", "s?s:*",
                   "sts:assumerole[", "sts:assumerol[e]", "sts:assumerol[!x]", "sts:assume\\role", "sts:AssumeRole ",
                   "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWith*", "sts:TagSession", "sts:*Session",
                   "iam:PassRole", "sts:AssumeRoleWithSAML", "sts:AssumeRolé", "sts:assumero\u212ae",
                   "ſts:AssumeRole", "sts:AssumeRole\n", "[s]ts:AssumeRole", "sts:?*", "**", "?"]


@pytest.mark.parametrize("pattern", ACTION_PATTERNS)
def test_the_trust_checks_action_match_is_fnmatchcases(pattern):
    """glob_match skips fnmatch for patterns without *?[: for every action a trust policy may
    name, it still answers exactly what fnmatch.fnmatchcase answered (the check lowercases)."""
    for wanted in _ASSUME_ACTIONS:
        assert glob_match(wanted, pattern.lower()) == fnmatch.fnmatchcase(wanted, pattern.lower())
    expected = any(fnmatch.fnmatchcase(wanted, pattern.lower()) for wanted in _ASSUME_ACTIONS)
    assert _grants_assume(pattern) == expected
    assert _grants_assume([pattern]) == expected


@pytest.mark.parametrize("action", ["sts:AssumeRole*", "sts:*", "*", "STS:AssumeRole", "sts:Assume?ole"])
def test_a_wildcard_or_mixed_case_assume_action_for_a_second_principal_is_seen(action):
    document = {"Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": action}]}
    assert "AWS arn:aws:iam::111122223333:root" in only_service_may_assume(document, "ec2.amazonaws.com")


# ---- GetRole's answer -------------------------------------------------------------------------

def test_a_runtime_interpreter_that_hangs_is_no_interpreter_not_a_crashed_build(tmp_path, monkeypatch):
    """interpreter_for runs each candidate with a timeout; a candidate that outlives it (a
    wedged shim, an interpreter on a dead network mount) raised TimeoutExpired out of
    `make package` instead of being skipped like one that fails."""
    from deploy import bytecode

    shim = tmp_path / "python3.97"
    shim.write_text("#!/bin/sh\nsleep 30\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    real_run = subprocess.run

    def quick(*args, **kwargs):
        kwargs["timeout"] = 0.5
        return real_run(*args, **kwargs)

    monkeypatch.setattr(bytecode.subprocess, "run", quick)
    assert bytecode.interpreter_for("python3.97") is None


def test_the_zip_carries_no_bytecode_of_a_module_it_has_no_source_for(tmp_path):
    """A stray .pyc under __pycache__ (a deleted module's) is dropped, and no .pyc outside one
    is added: every shipped .pyc has its source beside it (checked-hash: a stale one is
    recompiled, never run)."""
    import sys
    import zipfile

    from deploy import bytecode

    path = tmp_path / "deployment.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("chalicelib/__init__.py", "")
        z.writestr("chalicelib/mod.py", "VALUE = 1\n")
        z.writestr(f"chalicelib/__pycache__/evil.{sys.implementation.cache_tag}.pyc", b"\x00" * 32)
        z.writestr(f"__pycache__/app.{sys.implementation.cache_tag}.pyc", b"\x00" * 32)  # no app.py in this zip
    bytecode.add_bytecode(path, sys.executable)
    with zipfile.ZipFile(path) as z:
        pycs = [n for n in z.namelist() if n.endswith(".pyc")]
    for name in pycs:
        source = re.sub(r"__pycache__/([^/.]+)\.[^/]+\.pyc$", r"\1.py", name)
        assert source in z.namelist(), name
    assert sorted(pycs) == sorted(f"chalicelib/__pycache__/{m}.{sys.implementation.cache_tag}.pyc"
                                  for m in ("__init__", "mod"))
