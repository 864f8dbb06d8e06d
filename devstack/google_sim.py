"""A simulated Google for the local stack: certificates, OAuth2/STS token endpoint,
Compute ``instances.get`` and per-instance metadata servers.

No Google emulator exists for these APIs, so this one copies what the real
endpoints do: the same URL paths, JSON shapes, status codes and headers. It is a
standalone script (standard library, ``cryptography`` and PyJWT) started by the Stack as
its own process: ``python devstack/google_sim.py --port PORT``. Google's tokens are
minted with ``jwt.encode``; only the forgeries of ``/_admin/tokens/forge`` (an alg the
signature does not match, no signature, HMAC keyed with a certificate) are put together
here, since PyJWT refuses to make them. Secrets it must
know (the OAuth client and refresh token, the AWS keys it accepts for workload
identity federation) come from the environment, never from the command line.

Real endpoint                                           here
https://www.googleapis.com/oauth2/v1/certs              GET  /oauth2/v1/certs    {kid: PEM certificate}
https://www.googleapis.com/oauth2/v3/certs              GET  /oauth2/v3/certs    JWKS
https://oauth2.googleapis.com/token                     POST /token              refresh_token grant
https://sts.googleapis.com/v1/token                     POST /v1/token           token exchange (WIF, AWS)
https://compute.googleapis.com/compute/v1/projects/P/zones/Z/instances/N   GET  same path
http://metadata.google.internal/computeMetadata/v1/...  GET  /instances/P/Z/N/computeMetadata/v1/...

The admin API (``/_admin/...``, JSON) is documented in devstack/README.md. It is
unauthenticated and listens on loopback only: a test aid, not a boundary.

The signing keys are generated at start (RSA-2048) and live only in this
process's memory. Nothing secret (tokens, keys) is ever logged.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://accounts.google.com"
COMPUTE_BASE = "https://www.googleapis.com/compute/v1"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
STATUSES = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED",
            "REPAIRING", "TERMINATED")
SERVICES = ("certs", "compute", "token", "metadata")
TOKEN_LIFETIME = 3600
ACCESS_TOKEN_LIFETIME = 3599
MAX_BODY = 1 << 20
GOOGLE_OFFSET = timezone(timedelta(hours=-7))  # Google writes Compute timestamps in US Pacific (-07:00)
AWS_SUBJECT_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]+$")
_STS_HOST = re.compile(r"^sts(\.[a-z0-9-]+)?\.amazonaws\.com$")


# ---- small helpers -------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def google_timestamp(epoch: float) -> str:
    """RFC 3339 with milliseconds and a -07:00 offset, as the Compute API writes it."""
    dt = datetime.fromtimestamp(epoch, GOOGLE_OFFSET)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}-07:00"


def project_number_for(project: str) -> int:
    """A stable 12-digit project number for a project ID that was given none."""
    return 100000000000 + int(hashlib.sha256(project.encode()).hexdigest(), 16) % 900000000000


def sa_unique_id(email: str) -> str:
    """A service account's numeric unique ID (21 digits, as Google's), stable per email."""
    return "1" + str(int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**20).zfill(20)


def new_instance_id() -> str:
    """A uint64 as a decimal string; always above 2**60 (never fits a double exactly)."""
    return str(secrets.randbits(64) | (1 << 60))


class ApiError(Exception):
    def __init__(self, status: int, body, headers: dict | None = None, content_type: str = "application/json"):
        super().__init__(status)
        self.status, self.body, self.headers, self.content_type = status, body, headers or {}, content_type


def google_error(status: int, message: str, reason: str, *, status_text: str | None = None, **extra) -> ApiError:
    """The error envelope of googleapis.com JSON APIs."""
    err = {"message": message, "domain": "global", "reason": reason, **extra}
    body = {"error": {"code": status, "message": message, "errors": [err]}}
    if status_text:
        body["error"]["status"] = status_text
    return ApiError(status, body)


def unavailable() -> ApiError:
    return google_error(503, "The service is currently unavailable.", "backendError", status_text="UNAVAILABLE")


def html_error(status: int, text: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
            f"  <title>Error {status} (Not Found)!!1</title>\n"
            f"  <p><b>{status}.</b> <ins>That\u2019s an error.</ins>\n  <p>{text} "
            "<ins>That\u2019s all we know.</ins>\n")


# ---- keys ----------------------------------------------------------------------------------


class SigningKey:
    """An RSA-2048 key with a self-signed certificate, as Google publishes them."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(20)  # Google's kids are 40 hex digits
        now = datetime.now(timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.private_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=14))
                .sign(self.private_key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        public = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)  # n and e, base64url
        self.jwk = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "e": public["e"], "n": public["n"]}

    def encode(self, claims: dict) -> str:
        """A token as Google signs it: {"alg": "RS256", "kid": ..., "typ": "JWT"}."""
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def forge_jwt(header: dict, claims: dict, sign) -> str:
    """Any header over any claims (the attacks PyJWT won't encode). ``sign``: a callable
    (signing input bytes) -> signature bytes, or None for an empty signature."""
    signing_input = f"{b64url(compact_json(header))}.{b64url(compact_json(claims))}"
    return f"{signing_input}.{b64url(sign(signing_input.encode())) if sign else ''}"


# ---- SigV4 (workload identity federation with an AWS subject token) --------------------------


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&") if query else []:
        k, _, v = part.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def verify_aws_subject_token(token: str, audience: str, keys: dict, max_skew: int = 900) -> str:
    """Check a serialized, SigV4-signed GetCallerIdentity (google-auth's ``aws`` credential
    source) the way Google STS does, but with the secret keys we were given instead of a
    round trip to AWS. Returns the caller's ARN; raises ValueError with the reason."""
    try:
        req = json.loads(unquote(token))
        url, method = req["url"], req["method"]
        headers = {h["key"].lower(): h["value"] for h in req["headers"]}
    except (ValueError, KeyError, TypeError):
        raise ValueError("the subject token is not a serialized AWS request") from None
    body = req.get("body") or ""
    parts = urlsplit(url)
    if parts.scheme != "https" or not _STS_HOST.match(parts.hostname or ""):
        raise ValueError("the subject token's URL is not an AWS STS endpoint")
    query = parse_qs(parts.query)
    if query.get("Action") != ["GetCallerIdentity"] or method != "POST":
        raise ValueError("the subject token is not a POST GetCallerIdentity request")
    if headers.get("x-goog-cloud-target-resource") != audience:
        raise ValueError("x-goog-cloud-target-resource does not name this provider")
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/sts/aws4_request, "
                 r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$", headers.get("authorization", ""))
    if not m:
        raise ValueError("the subject token carries no SigV4 Authorization header")
    akid, day, region, signed, signature = m.groups()
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError("the subject token has no valid x-amz-date") from None
    if abs(time.time() - when.timestamp()) > max_skew or amz_date[:8] != day:
        raise ValueError("the subject token's x-amz-date is stale")
    names = signed.split(";")
    # google-auth adds x-goog-cloud-target-resource after signing: only host and the date are signed
    if "host" not in names or "x-amz-date" not in names:
        raise ValueError("host and x-amz-date must be signed")
    known = keys.get(akid)
    if known is None:
        raise ValueError("InvalidClientTokenId: the AWS access key is not known")
    canonical = "\n".join([method, parts.path or "/", _canonical_query(parts.query),
                           "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in names),
                           signed, hashlib.sha256(body.encode()).hexdigest()])
    scope = f"{day}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + known["secret"]).encode(), day), region), "sts"), "aws4_request")
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        raise ValueError("SignatureDoesNotMatch")
    return known["arn"]


# ---- state -----------------------------------------------------------------------------------


class Sim:
    """Everything the simulated Google knows. All access under ``self.lock``."""

    def __init__(self, *, certs_max_age: int, readable_projects: list[str], keep_old_keys: bool,
                 oauth_client: dict | None, aws_keys: dict, wif_audience: str | None) -> None:
        self.lock = threading.RLock()
        self.keys = [SigningKey()]           # published keys, the last one signs
        self._unpublished: SigningKey | None = None
        self.certs_max_age = certs_max_age
        self.readable_projects = set(readable_projects)
        self.keep_old_keys = keep_old_keys
        self.oauth_client = oauth_client    # client_id, client_secret, refresh_token
        self.aws_keys = aws_keys            # access key ID -> {secret, arn}
        self.wif_audience = wif_audience
        self.projects: dict[str, int] = {}  # project ID -> number
        self.instances: dict[tuple[str, str, str], dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.outages: set[str] = set()
        self.counts = {k: 0 for k in ("certs_v1", "certs_v3", "token", "compute", "metadata_identity",
                                      "metadata_other")}

    @property
    def current_key(self) -> SigningKey:
        return self.keys[-1]

    def unpublished_key(self) -> SigningKey:
        if self._unpublished is None:
            self._unpublished = SigningKey()
        return self._unpublished

    def key_by_name(self, name: str | None) -> SigningKey:
        if name in (None, "", "current"):
            return self.current_key
        if name == "unpublished":
            return self.unpublished_key()
        for k in self.keys:
            if k.kid == name:
                return k
        raise ApiError(400, {"error": f"no key {name!r}"})

    def project_number(self, project: str) -> int:
        return self.projects.setdefault(project, project_number_for(project))

    # -- instances --

    def create_instance(self, spec: dict, *, created: float | None = None) -> dict:
        project, zone, name = spec.get("project"), spec.get("zone"), spec.get("name")
        if not (isinstance(project, str) and _PROJECT.match(project)):
            raise ApiError(400, {"error": f"invalid project ID {project!r}"})
        if not (isinstance(zone, str) and _ZONE.match(zone)):
            raise ApiError(400, {"error": f"invalid zone {zone!r}"})
        if not (isinstance(name, str) and _NAME.match(name)):
            raise ApiError(400, {"error": f"invalid instance name {name!r}"})
        status = spec.get("status", "RUNNING")
        if status not in STATUSES:
            raise ApiError(400, {"error": f"status must be one of {', '.join(STATUSES)}"})
        labels = spec.get("labels") or {}
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and _LABEL_KEY.match(k) and _LABEL_VALUE.match(v)
                for k, v in labels.items()):
            raise ApiError(400, {"error": "labels: lowercase keys and values as Google allows them"})
        if "project_number" in spec:
            number = spec["project_number"]
            if not isinstance(number, int) or number <= 0:
                raise ApiError(400, {"error": "project_number must be a positive integer"})
            if self.projects.get(project, number) != number:
                raise ApiError(409, {"error": f"project {project} already has number {self.projects[project]}"})
            self.projects[project] = number
        number = self.project_number(project)
        sa = spec.get("service_account", f"{number}-compute@developer.gserviceaccount.com")
        if sa is not None and not (isinstance(sa, str) and (sa == "" or _EMAIL.match(sa))):
            raise ApiError(400, {"error": f"invalid service account email {sa!r}"})
        key = (project, zone, name)
        if key in self.instances:
            raise ApiError(409, {"error": f"instance projects/{project}/zones/{zone}/instances/{name} exists"})
        now = time.time() if created is None else created
        rec = {"project": project, "zone": zone, "name": name, "id": new_instance_id(), "created": now,
               "status": status, "labels": dict(labels), "service_account": sa or None,
               "scopes": list(spec.get("scopes") or [CLOUD_PLATFORM]),
               "machine_type": spec.get("machine_type", "e2-small"),
               "label_fingerprint": b64url(secrets.token_bytes(8))}
        self.instances[key] = rec
        return rec

    def instance(self, project: str, zone: str, name: str) -> dict:
        rec = self.instances.get((project, zone, name))
        if rec is None:
            raise ApiError(404, {"error": f"no instance {project}/{zone}/{name}"})
        return rec

    def recreate_instance(self, project: str, zone: str, name: str, changes: dict) -> dict:
        """Delete and create again with the same name: a new ID, a later creation time
        (at least one second later, so that second-precision claims tell them apart)."""
        old = self.instances.pop((project, zone, name), None)
        if old is None:
            raise ApiError(404, {"error": f"no instance {project}/{zone}/{name}"})
        spec = {"project": project, "zone": zone, "name": name, "status": old["status"],
                "labels": old["labels"], "service_account": old["service_account"], "scopes": old["scopes"],
                "machine_type": old["machine_type"], **changes}
        created = max(time.time(), float(int(old["created"]) + 1) + (old["created"] % 1))
        try:
            return self.create_instance(spec, created=created)
        except ApiError:
            self.instances[(project, zone, name)] = old
            raise

    def compute_json(self, rec: dict) -> dict:
        p, z, n = rec["project"], rec["zone"], rec["name"]
        zone_url = f"{COMPUTE_BASE}/projects/{p}/zones/{z}"
        body = {
            "kind": "compute#instance",
            "id": rec["id"],
            "creationTimestamp": google_timestamp(rec["created"]),
            "name": n,
            "tags": {"fingerprint": "42WmSpB8rSM="},
            "machineType": f"{zone_url}/machineTypes/{rec['machine_type']}",
            "status": rec["status"],
            "zone": zone_url,
            "canIpForward": False,
            "networkInterfaces": [{
                "kind": "compute#networkInterface", "name": "nic0",
                "network": f"{COMPUTE_BASE}/projects/{p}/global/networks/default",
                "subnetwork": f"{COMPUTE_BASE}/projects/{p}/regions/{z.rsplit('-', 1)[0]}/subnetworks/default",
                "networkIP": "10.128.0.2", "stackType": "IPV4_ONLY"}],
            "metadata": {"kind": "compute#metadata", "fingerprint": "cYj6eYYxV0c="},
            "selfLink": f"{zone_url}/instances/{n}",
            "scheduling": {"onHostMaintenance": "MIGRATE", "automaticRestart": True, "preemptible": False},
            "cpuPlatform": "Intel Broadwell",
            "labelFingerprint": rec["label_fingerprint"],
            "startRestricted": False,
            "deletionProtection": False,
            "fingerprint": "ZHnbm0bZz3o=",
            "lastStartTimestamp": google_timestamp(rec["created"] + 7.25),
            "satisfiesPzi": True,
        }
        if rec["service_account"]:
            body["serviceAccounts"] = [{"email": rec["service_account"], "scopes": rec["scopes"]}]
        if rec["labels"]:  # Google leaves out empty fields
            body["labels"] = dict(rec["labels"])
        return body

    # -- tokens --

    def instance_claims(self, rec: dict, audience: str, fmt: str, now: int) -> dict:
        sa = rec["service_account"]
        claims = {"aud": audience, "azp": sa_unique_id(sa), "exp": now + TOKEN_LIFETIME, "iat": now,
                  "iss": ISSUER, "sub": sa_unique_id(sa)}
        if fmt == "full":
            claims.update(email=sa, email_verified=True, google={"compute_engine": {
                "instance_creation_timestamp": int(rec["created"]),
                "instance_id": rec["id"],
                "instance_name": rec["name"],
                "project_id": rec["project"],
                "project_number": self.project_number(rec["project"]),
                "zone": rec["zone"],
            }})
        return dict(sorted(claims.items()))

    def sign(self, claims: dict, key: SigningKey | None = None) -> str:
        key = key or self.current_key
        if "iss" in claims and not isinstance(claims["iss"], str):  # jwt.encode refuses; Google never
            raise ApiError(400, {"error": "claims.iss: a string (tokens/forge makes any other)"})
        return key.encode(claims)

    def issue_access_token(self, principal: str, scope: str) -> dict:
        token = "ya29." + secrets.token_urlsafe(96)
        self.access_tokens[token] = {"principal": principal, "expires": time.time() + ACCESS_TOKEN_LIFETIME,
                                     "scope": scope}
        return {"access_token": token, "expires_in": ACCESS_TOKEN_LIFETIME, "token_type": "Bearer"}


# ---- HTTP ------------------------------------------------------------------------------------


_METADATA = re.compile(r"^/instances/([^/]+)/([^/]+)/([^/]+)/computeMetadata/v1(/.*)?$")
_COMPUTE = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$")
_ADMIN_INSTANCE = re.compile(r"^/_admin/instances/([^/]+)/([^/]+)/([^/]+)(/[a-z]+)?$")


class Handler(BaseHTTPRequestHandler):
    server_version = "ESF"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    sim: Sim  # set on the class by main()

    # -- plumbing --

    def log_message(self, fmt, *args):  # the request line only, never headers or bodies
        pass

    def _log(self, status: int) -> None:
        path = urlsplit(self.path).path
        print(f"{self.log_date_time_string()} {self.command} {path} -> {status}", flush=True)

    def _send(self, status: int, body, *, content_type: str = "application/json; charset=UTF-8",
              headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body, indent=2).encode() + b"\n"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._log(status)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, {"error": "request too large"})
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError(400, {"error": "the body is not JSON"}) from None
        if not isinstance(data, dict):
            raise ApiError(400, {"error": "the body must be a JSON object"})
        return data

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        try:
            with self.sim.lock:
                self._route(parts.path, parse_qs(parts.query))
        except ApiError as e:
            ctype = e.content_type if e.content_type != "application/json" else "application/json; charset=UTF-8"
            self._send(e.status, e.body, content_type=ctype, headers=e.headers)
        except Exception as e:  # noqa: BLE001 - a bug in the simulator: say so, keep serving
            self._send(500, {"error": f"simulator bug: {type(e).__name__}: {e}"})

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = lambda self: self._dispatch()  # noqa: E731

    def _route(self, path: str, query: dict) -> None:
        method = self.command
        if path.startswith("/_admin/"):
            return self._admin(method, path)
        if path in ("/oauth2/v1/certs", "/oauth2/v3/certs") and method == "GET":
            return self._certs(path)
        if path == "/token" and method == "POST":
            return self._oauth_token()
        if path == "/v1/token" and method == "POST":
            return self._sts_token()
        m = _COMPUTE.match(path)
        if m and method == "GET":
            return self._compute_get(*m.groups())
        m = _METADATA.match(path)
        if m:
            return self._metadata(method, m.group(1), m.group(2), m.group(3), m.group(4) or "", query)
        if path.startswith("/compute/"):
            raise google_error(404, f"The resource '{path}' was not found", "notFound")
        raise ApiError(404, html_error(404, f"The requested URL <code>{path}</code> was not found on this server."),
                       content_type="text/html; charset=UTF-8")

    # -- certs --

    def _certs(self, path: str) -> None:
        sim = self.sim
        sim.counts["certs_v1" if "/v1/" in path else "certs_v3"] += 1
        if "certs" in sim.outages:
            raise unavailable()
        if "/v1/" in path:
            body = {k.kid: k.cert_pem for k in reversed(sim.keys)}
        else:
            body = {"keys": [k.jwk for k in reversed(sim.keys)]}
        age = sim.certs_max_age
        self._send(200, body, headers={
            "Cache-Control": f"public, max-age={age}, must-revalidate, no-transform",
            "Expires": formatdate(time.time() + age, usegmt=True),
            "Vary": "Origin, X-Origin, Referer",
        })

    # -- OAuth2 and STS token endpoints --

    def _form(self) -> dict[str, str]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self._body()
        if ctype == "application/json":
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise ApiError(400, {"error": "invalid_request", "error_description": "Invalid JSON payload."})
            return {k: str(v) for k, v in data.items()}
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def _oauth_token(self) -> None:
        sim = self.sim
        sim.counts["token"] += 1
        if "token" in sim.outages:
            raise ApiError(503, {"error": "temporarily_unavailable", "error_description": "Service unavailable."})
        form = self._form()
        grant = form.get("grant_type")
        if grant == TOKEN_EXCHANGE:  # google-auth sends STS exchanges to whatever token_url says
            return self._exchange(form)
        if grant != "refresh_token":
            raise ApiError(400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"})
        client = sim.oauth_client
        if not client or not hmac.compare_digest(form.get("client_id", ""), client["client_id"]):
            raise ApiError(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."})
        if not hmac.compare_digest(form.get("client_secret", ""), client["client_secret"]):
            raise ApiError(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        if not hmac.compare_digest(form.get("refresh_token", ""), client["refresh_token"]):
            raise ApiError(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        scope = form.get("scope") or CLOUD_PLATFORM
        answer = sim.issue_access_token(f"user:{client['client_id']}", scope)
        answer["scope"] = scope
        self._send(200, answer, headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
                                         "Pragma": "no-cache"})

    def _sts_token(self) -> None:
        sim = self.sim
        sim.counts["token"] += 1
        if "token" in sim.outages:
            raise google_error(503, "The service is currently unavailable.", "backendError",
                               status_text="UNAVAILABLE")
        self._exchange(self._form())

    def _exchange(self, form: dict[str, str]) -> None:
        """Google STS token exchange of an AWS subject token (workload identity federation)."""
        sim = self.sim

        def refuse(description: str, error: str = "invalid_grant", status: int = 400):
            raise ApiError(status, {"error": error, "error_description": description})

        if form.get("grant_type") != TOKEN_EXCHANGE:
            refuse(f"Invalid grant_type: {form.get('grant_type')}", "unsupported_grant_type")
        if form.get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token":
            refuse("Invalid requested_token_type.", "invalid_request")
        if not sim.wif_audience or form.get("audience") != sim.wif_audience:
            refuse("The audience in the request does not match any workload identity pool provider.",
                   "invalid_target")
        if form.get("subject_token_type") != AWS_SUBJECT_TOKEN_TYPE:
            refuse("Invalid subject_token_type: this provider is an AWS provider.", "invalid_request")
        try:
            arn = verify_aws_subject_token(form.get("subject_token", ""), sim.wif_audience, sim.aws_keys)
        except ValueError as e:
            refuse(f"The subject token is invalid: {e}")
        pool = sim.wif_audience.split("/providers/")[0].replace("//iam.googleapis.com/", "")
        scope = form.get("scope") or CLOUD_PLATFORM
        answer = sim.issue_access_token(f"principal://iam.googleapis.com/{pool}/subject/{arn}", scope)
        answer["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        self._send(200, answer)

    # -- Compute --

    def _compute_get(self, project: str, zone: str, name: str) -> None:
        sim = self.sim
        sim.counts["compute"] += 1
        if "compute" in sim.outages:
            raise unavailable()
        auth = self.headers.get("Authorization") or ""
        bearer = "WWW-Authenticate"
        if not auth:
            err = google_error(401, "Request is missing required authentication credential. Expected OAuth 2 "
                               "access token, login cookie or other valid authentication credential. See "
                               "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                               "required", status_text="UNAUTHENTICATED", location="Authorization",
                               locationType="header")
            err.body["error"]["errors"][0]["message"] = "Login Required."
            err.headers = {bearer: 'Bearer realm="https://accounts.google.com/"'}
            raise err
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        info = sim.access_tokens.get(token)
        if info is None or info["expires"] < time.time():
            err = google_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                               "token, login cookie or other valid authentication credential. See "
                               "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                               "authError", status_text="UNAUTHENTICATED", location="Authorization",
                               locationType="header")
            err.body["error"]["errors"][0]["message"] = "Invalid Credentials"
            err.headers = {bearer: 'Bearer realm="https://accounts.google.com/", error="invalid_token"'}
            raise err
        resource = f"projects/{project}/zones/{zone}/instances/{name}"
        if project not in sim.readable_projects:
            raise google_error(403, f"Required 'compute.instances.get' permission for '{resource}'", "forbidden")
        if not _ZONE.match(zone):
            raise google_error(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.", "invalid")
        rec = sim.instances.get((project, zone, name))
        if rec is None:
            raise google_error(404, f"The resource '{resource}' was not found", "notFound")
        self._send(200, sim.compute_json(rec), headers={"ETag": rec["label_fingerprint"]})

    # -- metadata server --

    def _metadata(self, method: str, project: str, zone: str, name: str, rest: str, query: dict) -> None:
        sim = self.sim
        is_identity = rest.endswith("/identity")
        sim.counts["metadata_identity" if is_identity else "metadata_other"] += 1
        mh = {"Metadata-Flavor": "Google", "Server": "Metadata Server for VM",
              "X-XSS-Protection": "0", "X-Frame-Options": "SAMEORIGIN"}

        def fail(status: int, text: str):
            raise ApiError(status, html_error(status, text), headers=mh, content_type="text/html; charset=UTF-8")

        if "metadata" in sim.outages:
            fail(503, "The metadata server is unavailable.")
        if method != "GET":
            fail(405, "Method not allowed.")
        if self.headers.get("X-Forwarded-For") is not None:
            fail(403, "Your client does not have permission to get URL "
                      f"<code>/computeMetadata/v1{rest}</code> from this server. Request had X-Forwarded-For header.")
        if self.headers.get("Metadata-Flavor") != "Google":
            fail(403, "Your client does not have permission to get URL "
                      f"<code>/computeMetadata/v1{rest}</code> from this server. "
                      "Missing Metadata-Flavor:Google header.")
        rec = sim.instances.get((project, zone, name))
        if rec is None:  # the VM is gone: nothing answers on its link-local address
            fail(404, "No such simulated instance.")
        sa = rec["service_account"]
        number = sim.project_number(project)
        text = {
            "/": "instance/\noauth2/\nproject/\n",
            "/instance/id": rec["id"],
            "/instance/name": rec["name"],
            "/instance/hostname": f"{rec['name']}.{zone}.c.{project}.internal",
            "/instance/zone": f"projects/{number}/zones/{zone}",
            "/project/project-id": project,
            "/project/numeric-project-id": str(number),
        }.get(rest or "/")
        if text is None and sa:
            text = {"/instance/service-accounts/": f"default/\n{sa}/\n",
                    "/instance/service-accounts/default/email": sa,
                    f"/instance/service-accounts/{sa}/email": sa}.get(rest)
        if text is not None:
            return self._send(200, text, content_type="application/text", headers=mh)
        m = re.match(r"^/instance/service-accounts/([^/]+)/identity$", rest)
        if not m or not sa or m.group(1) not in ("default", sa):
            fail(404, f"The requested URL <code>/computeMetadata/v1{rest}</code> was not found on this server.")
        audience = (query.get("audience") or [""])[0]
        if not audience:
            fail(400, "non-empty audience parameter required")
        fmt = (query.get("format") or ["standard"])[0]
        if fmt not in ("standard", "full"):
            fail(400, "format must be one of standard, full")
        claims = sim.instance_claims(rec, audience, fmt, int(time.time()))
        self._send(200, sim.sign(claims), content_type="application/text", headers=mh)

    # -- admin --

    def _admin(self, method: str, path: str) -> None:
        sim = self.sim
        body = self._json_body() if method in ("POST", "PUT", "PATCH") else {}
        if path == "/_admin/health" and method == "GET":
            return self._send(200, {"status": "ok"})
        if path == "/_admin/state" and method == "GET":
            return self._send(200, {
                "instances": [sim.compute_json(r) for r in sim.instances.values()],
                "projects": sim.projects, "readable_projects": sorted(sim.readable_projects),
                "kids": [k.kid for k in sim.keys], "current_kid": sim.current_key.kid,
                "certs_max_age": sim.certs_max_age, "keep_old_keys": sim.keep_old_keys,
                "outages": sorted(sim.outages), "counts": sim.counts, "wif_audience": sim.wif_audience})
        if path == "/_admin/config" and method == "POST":
            if "certs_max_age" in body:
                if not isinstance(body["certs_max_age"], int) or body["certs_max_age"] < 0:
                    raise ApiError(400, {"error": "certs_max_age: a non-negative integer"})
                sim.certs_max_age = body["certs_max_age"]
            if "readable_projects" in body:
                sim.readable_projects = set(body["readable_projects"])
            if "keep_old_keys" in body:
                sim.keep_old_keys = bool(body["keep_old_keys"])
            if "projects" in body:
                sim.projects.update({str(k): int(v) for k, v in body["projects"].items()})
            if "aws_keys" in body:  # access key ID -> {"secret": ..., "arn": ...}, for the WIF exchange
                sim.aws_keys = dict(body["aws_keys"])
            if "wif_audience" in body:
                sim.wif_audience = body["wif_audience"] or None
            return self._send(200, {"certs_max_age": sim.certs_max_age, "keep_old_keys": sim.keep_old_keys,
                                    "readable_projects": sorted(sim.readable_projects)})
        if path == "/_admin/counts":
            if method == "DELETE":
                for k in sim.counts:
                    sim.counts[k] = 0
            return self._send(200, dict(sim.counts))
        if path == "/_admin/certs-fetch-count" and method == "GET":
            c = sim.counts
            return self._send(200, {"count": c["certs_v1"] + c["certs_v3"], "v1": c["certs_v1"], "v3": c["certs_v3"]})
        if path == "/_admin/outage" and method == "POST":
            service = body.get("service")
            if service not in SERVICES:
                raise ApiError(400, {"error": f"service must be one of {', '.join(SERVICES)}"})
            (sim.outages.add if body.get("down", True) else sim.outages.discard)(service)
            return self._send(200, {"outages": sorted(sim.outages)})
        if path == "/_admin/keys/rotate" and method == "POST":
            keep = body.get("keep_old", sim.keep_old_keys)
            new = SigningKey()
            sim.keys = (sim.keys if keep else []) + [new]
            return self._send(200, {"kid": new.kid, "kids": [k.kid for k in sim.keys]})
        if path == "/_admin/keys/drop-old" and method == "POST":
            sim.keys = [sim.current_key]
            return self._send(200, {"kid": sim.current_key.kid, "kids": [sim.current_key.kid]})
        if path == "/_admin/keys" and method == "GET":
            return self._send(200, {"current_kid": sim.current_key.kid, "kids": [k.kid for k in sim.keys],
                                    "certs": {k.kid: k.cert_pem for k in sim.keys}})
        if path == "/_admin/instances":
            if method == "GET":
                return self._send(200, {"instances": [sim.compute_json(r) for r in sim.instances.values()]})
            if method == "POST":
                return self._send(201, sim.compute_json(sim.create_instance(body)))
        m = _ADMIN_INSTANCE.match(path)
        if m:
            project, zone, name, action = m.groups()
            if action is None and method == "GET":
                return self._send(200, sim.compute_json(sim.instance(project, zone, name)))
            if action is None and method == "DELETE":
                sim.instance(project, zone, name)
                del sim.instances[(project, zone, name)]
                return self._send(200, {"deleted": f"projects/{project}/zones/{zone}/instances/{name}"})
            if action == "/status" and method == "POST":
                rec = sim.instance(project, zone, name)
                if body.get("status") not in STATUSES:
                    raise ApiError(400, {"error": f"status must be one of {', '.join(STATUSES)}"})
                rec["status"] = body["status"]
                return self._send(200, sim.compute_json(rec))
            if action == "/labels" and method == "POST":
                rec = sim.instance(project, zone, name)
                labels = body.get("labels")
                if not isinstance(labels, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) and _LABEL_KEY.match(k) and _LABEL_VALUE.match(v)
                        for k, v in labels.items()):
                    raise ApiError(400, {"error": "labels: lowercase keys and values as Google allows them"})
                rec["labels"] = dict(labels)
                rec["label_fingerprint"] = b64url(secrets.token_bytes(8))
                return self._send(200, sim.compute_json(rec))
            if action == "/recreate" and method == "POST":
                return self._send(201, sim.compute_json(sim.recreate_instance(project, zone, name, body)))
        if path == "/_admin/tokens/instance" and method == "POST":
            rec = sim.instance(body.get("project", ""), body.get("zone", ""), body.get("name", ""))
            if not rec["service_account"]:
                raise ApiError(400, {"error": "the instance has no service account"})
            now = int(body.get("iat", time.time()))
            claims = sim.instance_claims(rec, _audience(body), body.get("format", "full"), now)
            if "exp" in body:
                claims["exp"] = int(body["exp"])
            claims.update(body.get("claims") or {})
            return self._send(200, {"token": sim.sign(claims, sim.key_by_name(body.get("key")))})
        if path == "/_admin/tokens/service-account" and method == "POST":
            email = body.get("email")
            if not isinstance(email, str) or not _EMAIL.match(email):
                raise ApiError(400, {"error": "email: a service account email"})
            now = int(body.get("iat", time.time()))
            claims = {"aud": _audience(body), "azp": sa_unique_id(email), "email": email, "email_verified": True,
                      "exp": int(body.get("exp", now + TOKEN_LIFETIME)), "iat": now, "iss": ISSUER,
                      "sub": sa_unique_id(email)}
            claims.update(body.get("claims") or {})
            return self._send(200, {"token": sim.sign(claims, sim.key_by_name(body.get("key")))})
        if path == "/_admin/tokens/forge" and method == "POST":
            return self._send(200, {"token": self._forge(body)})
        raise ApiError(404, {"error": f"no admin route {method} {path}"})

    def _forge(self, body: dict) -> str:
        sim = self.sim
        claims = body.get("claims")
        if not isinstance(claims, dict):
            raise ApiError(400, {"error": "claims: a JSON object"})
        key = sim.key_by_name(body.get("key"))
        given = body.get("header") or {}
        if not isinstance(given, dict):
            raise ApiError(400, {"error": "header: a JSON object"})
        # the given fields over the usual header; a null value removes the field
        header = {k: v for k, v in {"alg": "RS256", "kid": key.kid, "typ": "JWT", **given}.items() if v is not None}
        sign = body.get("sign", True)
        if sign in (True, "rs256"):  # RS256 over whatever the header says (PyJWT's RS256, our key)
            return forge_jwt(header, claims, lambda data: jwt.get_algorithm_by_name("RS256").sign(data, key.private_key))
        if sign in (False, "none"):
            return forge_jwt(header, claims, None)
        if sign == "hs256-public-key":  # the classic alg confusion: HMAC keyed with the published cert
            secret = key.cert_pem.encode()
            return forge_jwt(header, claims, lambda data: hmac.new(secret, data, hashlib.sha256).digest())
        raise ApiError(400, {"error": "sign: true/'rs256', false/'none' or 'hs256-public-key'"})


def _audience(body: dict) -> str:
    aud = body.get("audience")
    if not isinstance(aud, str) or not aud:
        raise ApiError(400, {"error": "audience: a non-empty string"})
    return aud


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A simulated Google for the local stack.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs-max-age", type=int, default=3600,
                        help="max-age (seconds) of the certs' Cache-Control (default 3600)")
    parser.add_argument("--readable-projects", default="demo-project",
                        help="comma-separated projects whose instances the callers may read (others: 403)")
    parser.add_argument("--drop-old-keys", action="store_true",
                        help="a key rotation unpublishes the previous key at once")
    parser.add_argument("--project", action="append", default=[], metavar="ID=NUMBER",
                        help="a project and its number (repeatable)")
    args = parser.parse_args(argv)

    oauth_client = None
    if os.environ.get("GOOGLE_SIM_OAUTH_CLIENT"):
        oauth_client = json.loads(os.environ["GOOGLE_SIM_OAUTH_CLIENT"])
    aws_keys = json.loads(os.environ.get("GOOGLE_SIM_AWS_KEYS") or "{}")
    sim = Sim(certs_max_age=args.certs_max_age,
              readable_projects=[p for p in args.readable_projects.split(",") if p],
              keep_old_keys=not args.drop_old_keys, oauth_client=oauth_client, aws_keys=aws_keys,
              wif_audience=os.environ.get("GOOGLE_SIM_WIF_AUDIENCE") or None)
    for item in args.project:
        pid, _, number = item.partition("=")
        sim.projects[pid] = int(number)
    Handler.sim = sim
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"google sim listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
