import pytest

from chalicelib.methods.aws.arn import parse_principal_arn
from chalicelib.errors import InvalidProof


def test_assumed_role_session_named_after_an_instance():
    arn = parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0")
    assert (arn.kind, arn.account, arn.role_name, arn.session_name) == ("assumed-role", "123456789012", "demo-node", "i-0123456789abcdef0")
    assert arn.canonical_arn == "arn:aws:iam::123456789012:role/demo-node"
    assert arn.session_instance_id == "i-0123456789abcdef0"


@pytest.mark.parametrize("session", ["job-1", "i-123", "i-0123456789ABCDEF0", "i-0123456789abcdef0x"])
def test_other_session_names_claim_no_instance(session):
    assert parse_principal_arn(f"arn:aws:sts::123456789012:assumed-role/r/{session}").session_instance_id is None


def test_users_and_roles_with_paths():
    user = parse_principal_arn("arn:aws:iam::123456789012:user/team/alice")
    assert (user.kind, user.name, user.canonical_arn) == ("user", "alice", "arn:aws:iam::123456789012:user/alice")
    assert user.role_name is None
    role = parse_principal_arn("arn:aws-us-gov:iam::123456789012:role/svc/app")
    assert role.canonical_arn == "arn:aws-us-gov:iam::123456789012:role/app"


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::123456789012:root", "arn:aws:sts::123456789012:federated-user/bob",
    "arn:aws:s3:::bucket", "arn:aws:sts::12345:assumed-role/r/s", "arn:aws:sts::123456789012:assumed-role/r",
    "arn:aws:sts::123456789012:assumed-role/r/s/extra", "not an arn", "", None,
    "arn:aws:iam::123456789012:group/admins",
])
def test_other_principals_are_refused(arn):
    with pytest.raises(InvalidProof):
        parse_principal_arn(arn)
