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

A proof is bound to one request: its signed headers include `X-Broker-Request`,
naming the HTTP method, the path, a hash of the query and of the body, and a random
nonce (`v1;method=POST;path=/v1/revocations;query=<sha256>;body=<sha256>;nonce=<hex>`).
STS checks the signature over that header; the broker checks that the header
describes the request the proof came with. A proof signed for an audit read is
refused for a revocation, and two calls in one second never sign the same proof.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re
from urllib.parse import urlencode

from .errors import InvalidProof, InvalidRequest, NotAuthorized

PROOF_HEADER = "X-Broker-Proof"
BINDING_HEADER = "X-Broker-Request"
_BINDING = re.compile(r"^v1;method=([A-Z]{3,7});path=(/[\x21-\x7e]{1,1024});query=([0-9a-f]{64});"
                      r"body=([0-9a-f]{64});nonce=([0-9a-f]{32,64})$")
_AUTH_SIGNED = re.compile(r"SignedHeaders=([a-z0-9;-]+)")
MAX_PROOF_HEADER = 8192
_PLACEHOLDER_ROLE = "security-team"  # a login body names a role; an admin proof asks for none


def sha256_hex(data):
    return hashlib.sha256(data or b"").hexdigest()


def canonical_query(params):
    """The query string as both sides hash it: every (name, value) pair, sorted, urlencoded."""
    pairs = []
    for name, values in (params or {}).items():
        for value in ([values] if isinstance(values, str) else values):
            pairs.append((name, value))
    return urlencode(sorted(pairs))


def request_binding(method, path, params, body, nonce):
    """The X-Broker-Request value for one request (the client builds the same)."""
    return (f"v1;method={method.upper()};path={path};query={sha256_hex(canonical_query(params).encode())};"
            f"body={sha256_hex(body)};nonce={nonce}")


def check_binding(login, request):
    """InvalidProof unless the proof's signed X-Broker-Request describes `request`
    ({"method", "path", "params", "body"})."""
    value = login.header(BINDING_HEADER)
    signed = _AUTH_SIGNED.search(login.header("Authorization") or "")
    if value is None or not signed or BINDING_HEADER.lower() not in signed.group(1).split(";"):
        raise InvalidProof(f"the proof must sign an {BINDING_HEADER} header naming this request "
                           "(method, path, query and body hashes, nonce): update the broker CLI")
    m = _BINDING.match(value)
    if not m:
        raise InvalidProof(f"the proof's {BINDING_HEADER} header is malformed")
    method, path, query, body, _nonce = m.groups()
    wanted = {"method": request["method"].upper(), "path": request["path"],
              "query": sha256_hex(canonical_query(request.get("params")).encode()),
              "body": sha256_hex(request.get("body"))}
    given = {"method": method, "path": path, "query": query, "body": body}
    differs = [k for k in ("method", "path", "query", "body") if not hmac.compare_digest(given[k], wanted[k])]
    if differs:
        raise InvalidProof("the proof was signed for another request",
                           detail=f"{BINDING_HEADER} names another {', '.join(differs)} "
                                  f"(signed for {method} {path}, used for {wanted['method']} {wanted['path']})")


def parse_admin_proof(value, method, proof_fields):
    """The proof of the X-Broker-Proof header as the admin method's login request (its
    `parse`; `proof_fields`: its login body's fields beside `role`)."""
    if value is None or not value.strip():
        raise InvalidProof(f"this route needs a signed GetCallerIdentity proof in the {PROOF_HEADER} header")
    if len(value) > MAX_PROOF_HEADER:
        raise InvalidRequest(f"the {PROOF_HEADER} header is longer than {MAX_PROOF_HEADER} characters")
    try:
        doc = json.loads(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidRequest(f"the {PROOF_HEADER} header must be base64 of a JSON object") from None
    if not isinstance(doc, dict) or set(doc) != set(proof_fields):
        raise InvalidRequest(f"the {PROOF_HEADER} header must hold exactly the fields {', '.join(proof_fields)}")
    return method.parse(json.dumps(dict(doc, role=_PLACEHOLDER_ROLE)).encode())


class AdminAuthenticator:
    def __init__(self, rules, method_name, method, replay):
        """`method_name`: the proof method that proves the security team (the registry's
        PROVES_ADMINS); `method()`: it, built (the login route's own: parse, replay key,
        verification)."""
        from .methods import identity, package

        self._rules = rules
        self.method_name = method_name
        self._method = method
        self._replay = replay  # chalicelib.admission.Admission
        self._proof_fields = tuple(package(method_name).PROOF_FIELDS)
        self._identity = identity(method_name)  # how it spells an API Gateway caller's principal

    def authenticate(self, headers, *, request_id, record, iam_caller_arn=None, request=None):
        """The verified caller's identity if it may use the security routes, else 401/403.

        `request` ({"method", "path", "params", "body"}) is what the proof must be bound to.
        Fills `record.principal` and `record.account` as soon as they are proven.
        """
        from .pipeline.proving import prove, spend

        method = self._method()
        login = parse_admin_proof(_header(headers, PROOF_HEADER), method, self._proof_fields)
        if request is None:
            raise InvalidProof("the request the proof is for is unknown")
        # as a login (looked up beside the cloud's verification), bound to `request` before the cloud is asked
        identity, _ = prove(method, login, admission=self._replay, record=record,
                            offline_check=lambda login: check_binding(login, request))
        spend(self._replay, identity, record)
        canonical = identity.canonical_principal
        if iam_caller_arn and self._identity.index_principal(iam_caller_arn) != canonical:
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
