"""The session-wide secret scanner (a pytest plugin, loaded by tests/conftest.py).

While the suite runs it collects every secret the suite creates or handles, and
everything that may not carry one; when the session ends it searches the latter
for the former and fails the session on any hit, naming the kind of secret and
where it was found (never the secret itself).

Secrets come from:
- the stack's seed: the broker's own secret ID, the role IDs, the AWS secret keys
  of the admin and the broker, the KV passwords, the simulated Google's OAuth client;
- ``Stack.assume``: each session's secret key and session token;
- every request to the broker (in process through ``chalice.test`` or over HTTP):
  the SigV4 signature, the session token and the base64 header map of AWS proofs,
  GCP ID tokens and their signatures;
- every answer the test process reads over HTTP (hvac, requests, schemathesis, the
  in-process broker's own Vault calls through chalicelib/http_client.py): wrapping tokens,
  secret IDs, role IDs, Vault tokens (the broker's included), Google access tokens;
- ``register_secret(value, label)`` for anything else.

What is searched:
- every ``*.log`` file of every Stack's work directory (``chalice local``'s broker
  log, OpenBao, moto, the simulated Google) and of directories given to
  ``register_log_dir`` (e.g. the raft cluster's);
- every line the in-process broker logs (``chalicelib.jsonlog.JsonFormatter``);
- the captured stdout, stderr and log of every test;
- every answer of the broker, except the one that issued the secret (the 200 that
  carries a wrapping token may carry it; no other answer may).
Log text is also searched for things shaped like secrets that the test process
never saw (the ``chalice local`` broker's own Vault token, a proof a client signed
in another process): Vault/OpenBao tokens, JWTs, SigV4 Authorization headers.

``SECRET_SCAN=0`` turns the scan off (e.g. while debugging a single test).
"""

from __future__ import annotations

import base64
import bisect
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MIN_SECRET_LENGTH = 16  # shorter values (the dev root token "root", role names) are not tracked
MAX_TEXT_BYTES = 200 * 1024 * 1024
SECRET_KEYS = frozenset({"token", "client_token", "secret_id", "role_id", "access_token", "refresh_token",
                         "id_token", "client_secret", "SecretString", "secret_access_key", "session_token",
                         "SecretAccessKey", "SessionToken", "jwt"})
# Maps whose keys name a secret but whose values are statuses: a revocation's
# `wrapping_tokens` ({"role_id": "revoked", "secret_id": "failed: ..."}), never a secret.
STATUS_MAPS = frozenset({"wrapping_tokens"})
BROKER_PATHS = ("/v1/credentials/", "/v1/health", "/v1/openapi.json", "/v1/audit/", "/v1/revocations",
                "/v1/incidents")
SHAPES = {
    "a Vault token": re.compile(r"(?<![A-Za-z0-9])(?:hv[sbr]\.[A-Za-z0-9_-]{20,}|[sbr]\.[A-Za-z0-9]{24})(?![A-Za-z0-9])"),
    "a JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
    "a SigV4 signature": re.compile(r"Signature=[0-9a-f]{64}"),
}
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")


@dataclass
class Hit:
    label: str
    where: str
    line: int | None = None

    def __str__(self):
        return f"{self.label} in {self.where}" + (f" (line {self.line})" if self.line else "")


@dataclass
class SecretScanner:
    secrets: dict = field(default_factory=dict)  # value -> label
    issued_by: dict = field(default_factory=dict)  # value -> id of the broker answer that carried it first
    log_dirs: set = field(default_factory=set)
    texts: list = field(default_factory=list)  # (where, text, answer id or None, search shapes?)
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _answers: int = 0

    # ---- collecting ----------------------------------------------------------

    def register(self, value, label, issued_by=None):
        if (not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH or len(set(value)) < 6
                or value in _public_text()):
            return  # short, low-entropy (a fuzzer's "000..."), or published
        with self.lock:
            self.secrets.setdefault(value, label)
            if issued_by is not None:
                self.issued_by.setdefault(value, issued_by)

    def register_json(self, doc, label, issued_by=None):
        """Every value under a secret-bearing key of a JSON document."""
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in STATUS_MAPS:
                        continue
                    if key in SECRET_KEYS and isinstance(value, str):
                        self.register(value, f"{key} ({label})", issued_by)
                        if key in ("jwt", "id_token"):
                            self.register_jwt(value, label)
                    else:
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)

    def register_jwt(self, token, label):
        if not token.startswith("eyJ"):
            return  # not a JWT (e.g. a fuzzer's string)
        self.register(token, f"an ID token ({label})")
        parts = token.split(".")
        if len(parts) == 3:
            self.register(parts[2], f"an ID token's signature ({label})")

    def register_proof(self, body, label):
        """The secrets inside a request to the broker (an AWS proof or a GCP token)."""
        try:
            doc = json.loads(body)
        except (ValueError, TypeError):
            return
        if not isinstance(doc, dict):
            return
        if isinstance(doc.get("jwt"), str):
            self.register_jwt(doc["jwt"], label)
        headers_b64 = doc.get("iam_request_headers")
        if isinstance(headers_b64, str):
            try:
                headers = json.loads(base64.b64decode(headers_b64, validate=True))
            except (ValueError, TypeError):
                return
            if not isinstance(headers, dict) or not any(str(k).lower() == "authorization" for k in headers):
                return
            self.register(headers_b64, f"a proof's header map, base64 ({label})")
            for name, value in headers.items():
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if not isinstance(v, str):
                        continue
                    if name.lower() == "authorization":
                        for sig in _SIGNATURE.findall(v):
                            self.register(sig, f"a SigV4 signature ({label})")
                        self.register(v, f"a SigV4 Authorization header ({label})")
                    elif name.lower() == "x-amz-security-token":
                        self.register(v, f"a session token ({label})")

    def add_text(self, where, text, answer=None, shapes=True):
        if not text:
            return
        with self.lock:
            if self.size > MAX_TEXT_BYTES:
                return
            self.size += len(text)
            self.texts.append((where, text, answer, shapes))

    def broker_answer(self, where, status, body):
        """Keep a broker answer; a 200's tokens were issued by it and may appear there only."""
        with self.lock:
            self._answers += 1
            answer = self._answers
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        if status == 200:
            try:
                self.register_json(json.loads(text), f"issued by the broker: {where}", issued_by=answer)
            except ValueError:
                pass
        self.add_text(f"the broker's answer to {where} (HTTP {status})", text, answer=answer, shapes=False)

    # ---- scanning --------------------------------------------------------------

    def log_files(self):
        files = set()
        for directory in list(self.log_dirs):
            directory = Path(directory)
            if directory.is_dir():
                files.update(p for p in directory.rglob("*.log") if p.is_file())
        return sorted(files)

    size_searched: int = 0

    def scan(self):
        items = list(self.texts)
        for path in self.log_files():
            try:
                items.append((str(path), path.read_text(errors="replace"), None, True))
            except OSError:
                continue
        self.size_searched = sum(len(item[1]) for item in items)
        hits = []
        # One big text with an index, so that each secret is one str.find pass.
        starts, chunks, pos = [], [], 0
        for where, text, answer, shapes in items:
            starts.append(pos)
            chunks.append(text)
            pos += len(text) + 1
        blob = "\0".join(chunks)
        for value, label in list(self.secrets.items()):
            allowed = self.issued_by.get(value)
            at = blob.find(value)
            seen = set()
            while at != -1:
                index = bisect.bisect_right(starts, at) - 1
                where, text, answer, _ = items[index]
                if answer is None or answer != allowed:
                    line = text.count("\n", 0, at - starts[index]) + 1 if answer is None else None
                    if (label, where) not in seen:
                        seen.add((label, where))
                        hits.append(Hit(label, where, line))
                at = blob.find(value, starts[index] + len(text))  # next text: one hit per text is enough
        for where, text, answer, shapes in items:
            if not shapes:
                continue
            for kind, pattern in SHAPES.items():
                m = pattern.search(text)
                if m:
                    hits.append(Hit(f"something shaped like {kind}", where, text.count("\n", 0, m.start()) + 1))
        return hits


SCANNER = SecretScanner()
_PUBLIC = []


def _public_text():
    """Published text (the OpenAPI description's examples): not a secret wherever it is sent."""
    if not _PUBLIC:
        from chalicelib.openapi import SPEC

        text = json.dumps(SPEC) + json.dumps(SPEC, separators=(",", ":"))
        for schema in SPEC["components"]["schemas"].values():  # the examples' base64 fields, decoded
            for value in (schema.get("example") or {}).values() if isinstance(schema.get("example"), dict) else ():
                try:
                    text += "\n" + base64.b64decode(value, validate=True).decode()
                except (ValueError, TypeError, AttributeError):
                    pass
        _PUBLIC.append(text)
    return _PUBLIC[0]


def register_secret(value, label="registered by a test"):
    """Track a secret the scanner could not see by itself."""
    SCANNER.register(value, label)


def register_log_dir(path):
    """Also scan the ``*.log`` files under this directory at the end of the session."""
    SCANNER.log_dirs.add(Path(path))


# ---- where the secrets and the texts come from ----------------------------------


def _is_broker_path(path):
    return path.startswith(BROKER_PATHS)


def _install():
    import requests
    from chalice import test as chalice_test

    original_send = requests.Session.send

    def send(session, request, **kwargs):
        url = request.url or ""
        path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0] if "://" in url else url
        broker = _is_broker_path(path)
        try:
            token = request.headers.get("X-Vault-Token")
            if token:
                SCANNER.register(token, "a Vault token sent by the test process")
            if broker and request.body:
                SCANNER.register_proof(request.body, f"{request.method} {path}")
            elif request.body and b"secret_id" in (request.body if isinstance(request.body, bytes) else request.body.encode()):
                SCANNER.register_json(json.loads(request.body), f"sent to {path}")
        except Exception:  # the scanner never breaks a request
            pass
        response = original_send(session, request, **kwargs)
        if kwargs.get("stream") and not broker:
            return response  # the caller reads the body itself (the broker's STS and certs calls)
        try:
            if broker:
                SCANNER.broker_answer(f"{request.method} {path}", response.status_code, response.content)
            elif response.headers.get("Content-Type", "").startswith("application/json"):
                SCANNER.register_json(response.json(), f"answered by {path}")
            elif "/identity" in path and response.status_code == 200:  # a metadata server's ID token
                SCANNER.register_jwt(response.text.strip(), f"answered by {path}")
        except Exception:
            pass
        return response

    requests.Session.send = send
    _install_pools()
    _install_botocore()

    original_request = chalice_test.TestHTTPClient.request

    def request(self, method, path, headers=None, body=b""):
        SCANNER.register_proof(body, f"{method} {path} (in process)")
        response = original_request(self, method, path, headers=headers, body=body)
        SCANNER.broker_answer(f"{method} {path} (in process)", response.status_code, response.body)
        return response

    chalice_test.TestHTTPClient.request = request

    from chalicelib import jsonlog

    original_format = jsonlog.JsonFormatter.format

    def format(self, record):
        line = original_format(self, record)
        SCANNER.add_text("the in-process broker's log", line)
        return line

    jsonlog.JsonFormatter.format = format

    _install_devstack()


def _install_pools():
    """The in-process broker's own calls (chalicelib/http_client.py: Vault, the STS forward):
    the tokens and SigV4 signatures it sends, the secret IDs in what it
    sends, and the secrets in the answers (Vault's JSON, Secrets Manager's, STS's XML)."""
    from chalicelib import http_client

    original_request = http_client.HttpClient.request

    def request(self, method, url, *, body=None, headers=None, **kwargs):
        path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
        try:
            token = (headers or {}).get("X-Vault-Token")
            if token:
                SCANNER.register(token, "a Vault token the in-process broker sent")
            authorization = (headers or {}).get("authorization") or ""
            if "Signature=" in authorization:  # a signed request
                SCANNER.register(authorization.rsplit("Signature=", 1)[1], "a SigV4 signature the in-process broker sent")
            if (headers or {}).get("x-amz-security-token"):
                SCANNER.register(headers["x-amz-security-token"], "a session token the in-process broker sent")
            if body and b"secret_id" in body:
                SCANNER.register_json(json.loads(body), f"sent to {path} by the in-process broker")
        except Exception:  # the scanner never breaks a request
            pass
        answer = original_request(self, method, url, body=body, headers=headers, **kwargs)
        try:
            content_type = answer.headers.get("Content-Type") or ""
            if content_type.startswith(("application/json", "application/x-amz-json")) and answer.data:
                SCANNER.register_json(json.loads(answer.data), f"answered by {path} (in-process broker)")
            elif b"<SecretAccessKey>" in answer.data:  # STS AssumeRole (a reader role's credentials)
                for name in (b"SecretAccessKey", b"SessionToken"):
                    for value in re.findall(b"<" + name + b">([^<]+)</" + name + b">", answer.data):
                        SCANNER.register(value.decode(), f"{name.decode()} answered to the in-process broker")
        except Exception:
            pass
        return answer

    http_client.HttpClient.request = request


def _install_botocore():
    """The in-process broker's AWS calls (botocore's, chalicelib/aws_clients.py's sessions):
    the signatures and session tokens it sends, and the secrets in the answers (Secrets
    Manager's SecretString, a reader role's AssumeRole credentials)."""
    from chalicelib import aws_clients

    original = aws_clients.new_session

    def sent(request, **_):
        try:
            authorization = request.headers.get("Authorization") or b""
            authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
            if "Signature=" in authorization:
                SCANNER.register(authorization.rsplit("Signature=", 1)[1], "a SigV4 signature the in-process broker sent")
            token = request.headers.get("X-Amz-Security-Token")
            if token:
                SCANNER.register(token.decode() if isinstance(token, bytes) else token,
                                 "a session token the in-process broker sent")
        except Exception:  # the scanner never breaks a request
            pass

    def answered(parsed, model, **_):
        try:
            if isinstance(parsed, dict):
                SCANNER.register_json(parsed, f"answered to {model.name} (in-process broker)")
                credentials = parsed.get("Credentials") or {}
                for name in ("SecretAccessKey", "SessionToken"):
                    if isinstance(credentials.get(name), str):
                        SCANNER.register(credentials[name], f"{name} answered to the in-process broker")
        except Exception:
            pass

    def new_session():
        session = original()
        session.register("before-send", sent, unique_id="secret-scan-sent")
        session.register("after-call", answered, unique_id="secret-scan-answered")
        return session

    aws_clients.new_session = new_session


def _install_devstack():
    from devstack import aws as stack_aws
    from devstack import stack as stack_module

    Stack = stack_module.Stack
    original_init = Stack.__init__

    def init(self, workdir, *args, **kwargs):
        original_init(self, workdir, *args, **kwargs)
        SCANNER.log_dirs.add(Path(self.workdir))
        google = getattr(self, "google", None)
        for key, value in (getattr(google, "oauth_client", None) or {}).items():
            if key != "client_id":
                SCANNER.register(value, f"the simulated Google's OAuth {key}")

    Stack.__init__ = init

    original_seed_vault = stack_module.seed_vault

    def seed_vault(*args, **kwargs):
        seed = original_seed_vault(*args, **kwargs)
        SCANNER.register(seed.broker_secret_id, "the broker's own secret ID (seed)")
        SCANNER.register(seed.broker_role_id, "the broker's role ID (seed)")
        for role, role_id in seed.role_ids.items():
            SCANNER.register(role_id, f"the role ID of {role} (seed)")
        for path, data in seed.kv.items():
            for key, value in data.items():
                if "password" in key:
                    SCANNER.register(value, f"KV secret/{path} {key} (seed)")
        return seed

    stack_module.seed_vault = seed_vault

    original_seed_aws = stack_aws.seed_aws

    def seed_aws(*args, **kwargs):
        seed = original_seed_aws(*args, **kwargs)
        for who in ("admin", "broker"):
            keys = getattr(seed, who, None)
            if keys is not None:
                SCANNER.register(keys.secret_access_key, f"the {who}'s AWS secret access key (seed)")
        return seed

    stack_aws.seed_aws = seed_aws

    original_second = stack_aws.seed_second_account

    def seed_second_account(*args, **kwargs):
        keys = original_second(*args, **kwargs)
        SCANNER.register(keys.secret_access_key, "the second account admin's AWS secret access key (seed)")
        return keys

    stack_aws.seed_second_account = seed_second_account

    original_assume = Stack.assume

    def assume(self, role_name, session_name, *args, **kwargs):
        creds = original_assume(self, role_name, session_name, *args, **kwargs)
        SCANNER.register(creds.get("secret_access_key"), f"the secret key of a {role_name} session")
        SCANNER.register(creds.get("session_token"), f"the session token of a {role_name} session")
        return creds

    Stack.assume = assume


# ---- pytest hooks --------------------------------------------------------------


def _enabled(config):
    return os.environ.get("SECRET_SCAN", "1") != "0" and not config.getoption("collectonly")


def pytest_configure(config):
    if _enabled(config):
        _install()


def pytest_runtest_logreport(report):
    for name, text in (("stdout", report.capstdout), ("stderr", report.capstderr), ("log", report.caplog)):
        if text:
            SCANNER.add_text(f"captured {name} of {report.nodeid} ({report.when})", text)


def pytest_sessionfinish(session, exitstatus):
    if not _enabled(session.config) or not (SCANNER.texts or SCANNER.log_dirs):
        return
    import time

    started = time.monotonic()
    hits = SCANNER.scan()
    took = time.monotonic() - started
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if hits:
        lines = [f"secret scan: {len(hits)} leak(s) of the suite's secrets (the secrets themselves are not shown):"]
        lines += [f"  - {hit}" for hit in hits[:50]]
        if reporter:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter:
        reporter.write_line(f"secret scan: {len(SCANNER.secrets)} secrets, {len(SCANNER.texts)} texts and "
                            f"{len(SCANNER.log_files())} log files ({SCANNER.size_searched / 1e6:.1f} MB) searched "
                            f"in {took:.1f}s: no leak")
