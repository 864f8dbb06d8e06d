"""What the AWS method derives from an identity, so that nothing downstream parses an ARN:
its quarantine keys, the principal the audit index stores, how a revocation target naming
it parses and is spelled, whether an audit record's machine was verified.

IAM user and role names are case-insensitive (`role/Demo-Batch` is `role/demo-batch`):
the quarantine list keys every AWS principal with its name in lower case and no path; a
session name keeps its case. The ARNs STS returns, and so the audit trail's index keys,
carry the name as it was created: a revocation by principal asks IAM (the account's
reader) for the role as it exists and uses that spelling to find the issued records.
"""

from ...errors import InvalidProof, InvalidRequest
from .arn import parse_principal_arn

# What a revocation target of this method looks like (the security routes' error message).
PRINCIPAL_FORMS = "an IAM role/user ARN, an STS session ARN"
# The facts an audit record holds when the facts step verified the caller's machine.
MACHINE_FACTS = ("instance", "task")


def principal_key(principal):
    """The one spelling of an AWS principal in the quarantine list: its user or role name in
    lower case, no path (a session name keeps its case); anything unparseable as it is."""
    if not principal:
        return principal
    try:
        arn = parse_principal_arn(principal)
    except InvalidProof:
        return principal
    if arn.kind == "assumed-role":
        return f"arn:{arn.partition}:sts::{arn.account}:assumed-role/{arn.name.lower()}/{arn.session_name}"
    return f"arn:{arn.partition}:iam::{arn.account}:{arn.kind}/{arn.name.lower()}"


def quarantine_keys(principal, claimed_id=None, canonical=None):
    """(own, shared): the quarantine entries ((kind, value), ...) that refuse this caller.

    Own (checked in the admission transaction): its claimed machine (instance, task) and,
    beside a machine, its session; else its exact principal. Shared (read beside the
    transaction: every session of a role checks them at once, and in a transaction they
    would make concurrent boots cancel each other): its role."""
    own, shared = [], []
    session = ("principal", principal_key(principal)) if principal else None
    role = None
    try:
        role = ("principal", principal_key(parse_principal_arn(canonical or principal).canonical_arn))
    except InvalidProof:
        pass
    if claimed_id:
        own.append(("instance", claimed_id))
        if session and session != role and ":assumed-role/" in (principal or ""):
            own.append(session)
        elif session:
            shared.append(session)
    elif session:
        own.append(session)
    if role and role not in own and role not in shared:
        shared.append(role)
    return tuple(own), tuple(shared)


def index_principal(principal):
    """The principal the audit trail's by-principal index keys on: the IAM role (or user) ARN
    of a session, so that a role's sessions share a key."""
    try:
        return parse_principal_arn(principal).canonical_arn
    except InvalidProof:
        return principal


def parse_principal(value):
    """A revocation target naming an AWS principal: an IAM role or user ARN (every session
    of it) or an STS session ARN (that session) as a PrincipalArn; None when `value` is not
    an ARN; InvalidRequest for a malformed one."""
    if not value.startswith("arn:"):
        return None
    try:
        return parse_principal_arn(value)
    except InvalidProof as e:
        raise InvalidRequest(f"principal {value!r} is not an IAM role/user ARN or an STS session ARN "
                             f"({e.message})") from None


def spelled(arn, name):
    """The ARN `arn` names, with the user/role name spelled `name`."""
    if arn.kind == "assumed-role":
        return f"arn:{arn.partition}:sts::{arn.account}:assumed-role/{name}/{arn.session_name}"
    return f"arn:{arn.partition}:iam::{arn.account}:{arn.kind}/{name}"


def resolve_principal(arn, method):
    """(canonical spelling, known): the target as IAM spells it, and whether IAM knows it
    (`method`: () -> the built AWS method, whose readers ask IAM; None: not asked)."""
    name = iam_name(arn, method()) if method is not None else None
    return spelled(arn, name or arn.name), name is not None


def iam_name(arn, method):
    """How IAM spells the role (None: no such role, a user, or an unreadable account)."""
    from ...aws_calls import answer_part, try_call

    if arn.kind == "user":  # the reader role may read roles only: users are known by their records
        return None
    clients = method.readers.for_account(arn.account, arn.partition)
    if clients is None:
        return None
    iam = clients.client("iam")
    for name in dict.fromkeys((arn.name, arn.name.lower())):
        answer, missing = try_call("iam", ("NoSuchEntity",), iam.get_role, RoleName=name)
        if not missing:
            return answer_part("iam", answer_part("iam", answer, "Role"), "RoleName", str)
    return None


def quarantine_covers(records):
    """What else a quarantine of these records' machine covers: nothing for AWS."""
    return []
