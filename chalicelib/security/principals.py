"""A revocation's target in its one canonical spelling.

IAM user and role names are case-insensitive (`role/Demo-Batch` is `role/demo-batch`),
but the ARNs STS returns, and so the audit trail's index keys, carry the name as it
was created. A revocation by principal therefore asks IAM (the account's reader) for
the role as it exists and uses that spelling to find the issued records; the quarantine
list keys every AWS principal in lower case anyway (chalicelib/stores/quarantine.py).
"""

from ..aws_calls import answer_part, try_call
from ..errors import InvalidProof, InvalidRequest
from ..methods.aws.arn import parse_principal_arn

_EMAIL = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}$"


def parse_principal(value):
    """(kind, PrincipalArn or email): an IAM role or user ARN (every session of it), an STS
    session ARN (that session), or a service account email; InvalidRequest for anything else."""
    import re

    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("field principal must be a string")
    value = value.strip()
    if value.startswith("arn:"):
        try:
            return "arn", parse_principal_arn(value)
        except InvalidProof as e:
            raise InvalidRequest(f"principal {value!r} is not an IAM role/user ARN or an STS session ARN "
                                 f"({e.message})") from None
    if re.fullmatch(_EMAIL, value):
        return "email", value.lower()
    raise InvalidRequest("principal must be an IAM role/user ARN, an STS session ARN or a service account email")


def spelled(arn, name):
    """The ARN `arn` names, with the user/role name spelled `name`."""
    if arn.kind == "assumed-role":
        return f"arn:{arn.partition}:sts::{arn.account}:assumed-role/{name}/{arn.session_name}"
    return f"arn:{arn.partition}:iam::{arn.account}:{arn.kind}/{name}"


class AwsPrincipals:
    """Finds how IAM spells a role or user (None: no such principal, or an unreadable account)."""

    def __init__(self, aws_method):
        self._aws = aws_method  # chalicelib.methods.aws.AwsMethod (its per-account readers)

    def iam_name(self, arn):
        if arn.kind == "user":  # the reader role may read roles only: users are known by their records
            return None
        clients = self._aws().readers.for_account(arn.account, arn.partition)
        if clients is None:
            return None
        iam = clients.client("iam")
        for name in dict.fromkeys((arn.name, arn.name.lower())):
            answer, missing = try_call("iam", ("NoSuchEntity",), iam.get_role, RoleName=name)
            if not missing:
                return answer_part("iam", answer_part("iam", answer, "Role"), "RoleName", str)
        return None
