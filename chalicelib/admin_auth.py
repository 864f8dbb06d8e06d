"""Who is calling a security-team route: the broker checks it itself.

API Gateway's IAM authorization guards these routes in the deployed stages, but
`chalice local` (and chalice.test) do not enforce it, and the broker wants the
caller's identity anyway. So the caller also sends a signed GetCallerIdentity
proof, exactly like a login's, in the `X-Broker-Proof` header: base64 of the JSON
object with the four `iam_*` fields. It is checked by the same verifier (server-ID
header rules included), spent once in the replay table, and the caller's
canonical IAM ARN must match a glob of `[security] principal_arns` in the rules
file. When API Gateway did authenticate the request (its request context names
the IAM caller), that caller must be the proof's principal too.
"""

import base64
import binascii
import json

from .audit_schema import canonical_principal
from .errors import InvalidProof, InvalidRequest, NotAuthorized
from .methods.aws.request import PROOF_FIELDS, parse_aws_login

PROOF_HEADER = "X-Broker-Proof"
MAX_PROOF_HEADER = 8192
_PLACEHOLDER_ROLE = "security-team"  # parse_aws_login wants a role; an admin proof asks for none


def parse_admin_proof(value):
    """The proof of the X-Broker-Proof header as an AwsLoginRequest."""
    if value is None or not value.strip():
        raise InvalidProof(f"this route needs a signed GetCallerIdentity proof in the {PROOF_HEADER} header")
    if len(value) > MAX_PROOF_HEADER:
        raise InvalidRequest(f"the {PROOF_HEADER} header is longer than {MAX_PROOF_HEADER} characters")
    try:
        doc = json.loads(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidRequest(f"the {PROOF_HEADER} header must be base64 of a JSON object") from None
    if not isinstance(doc, dict) or set(doc) != set(PROOF_FIELDS):
        raise InvalidRequest(f"the {PROOF_HEADER} header must hold exactly the fields {', '.join(PROOF_FIELDS)}")
    return parse_aws_login(json.dumps(dict(doc, role=_PLACEHOLDER_ROLE)).encode())


class AdminAuthenticator:
    def __init__(self, rules, verify, replay, proof_hash=None):
        self._rules = rules
        self._verify = verify  # AwsLoginRequest -> VerifiedCaller (the login route's verifier)
        self._replay = replay  # chalicelib.admission.Admission
        self._proof_hash = proof_hash  # AwsLoginRequest -> the replay key, offline (None: no early lookup)

    def authenticate(self, headers, *, request_id, record, iam_caller_arn=None):
        """The verified caller's identity if it may use the security routes, else 401/403.

        Fills `record.principal` and `record.account` as soon as they are proven.
        """
        login = parse_admin_proof(_header(headers, PROOF_HEADER))
        if self._proof_hash is not None:
            self._replay.seen(self._proof_hash(login))  # as a login: a replayed proof costs no STS call
        identity = self._verify(login)
        record.principal, record.account = identity.principal, identity.account
        self._replay.admit(identity.proof_hash, request_id=request_id, method="aws", valid_until=identity.valid_until)
        canonical = identity.canonical_principal
        if iam_caller_arn and canonical_principal(iam_caller_arn) != canonical:
            raise NotAuthorized("the request's IAM signature and the signed proof name different principals",
                                detail=f"API Gateway caller {iam_caller_arn}, proof of {identity.principal}")
        if not self._rules.is_security_principal(canonical):
            raise NotAuthorized("this route is for the security team",
                                detail=f"{canonical} matches no [security] principal_arns of the rules file")
        return identity


def _header(headers, name):
    if headers is None:
        return None
    try:
        return headers.get(name) if name in headers else headers.get(name.lower())
    except AttributeError:
        return None
