"""Helpers of the fault tests: a broker under ``chalice local`` whose backends are
reached through fault proxies (devstack/faultproxy.py): OpenBao, moto (DynamoDB and the
other AWS APIs) and STS each through their own proxy. The shared stack's broker is left alone.

Every fault test measures how long the broker took to answer; the figures are
collected in FIGURES and written to ``$FAULT_FIGURES`` (JSON) when it is set
(``make faults`` prints them; docs/reliability.md quotes them).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import requests

from chalicelib.audit import AuditStore
from devstack.broker import ChaliceLocal
from devstack.faultproxy import FaultProxy
from tests.sigv4 import signed_login

FIGURES: dict[str, dict] = {}
API_GATEWAY_LIMIT = 29.0


@dataclass
class Answer:
    status: int
    doc: dict
    headers: dict
    seconds: float

    @property
    def request_id(self):
        return self.doc.get("request_id")


@dataclass
class FaultyBroker:
    stack: object
    broker: ChaliceLocal
    vault: FaultProxy
    aws: FaultProxy
    sts: FaultProxy
    audit: AuditStore

    @property
    def url(self):
        return self.broker.url

    def clear(self):
        for proxy in (self.vault, self.aws, self.sts):
            proxy.clear()

    def post(self, path, body, timeout=60):
        started = time.monotonic()
        r = requests.post(f"{self.url}{path}", json=body, timeout=timeout, proxies={"http": None})
        seconds = time.monotonic() - started
        try:
            doc = r.json()
        except ValueError:
            doc = {"raw": r.text[:200]}
        return Answer(r.status_code, doc, dict(r.headers), seconds)

    def login_batch(self, session="fault-job"):
        creds = self.stack.assume("demo-batch", f"{session}-{time.monotonic_ns() % 10**9}")
        return self.post("/v1/credentials/aws", signed_login(creds, "batch", self.server_id))

    def login_gcp(self, name="web-gce-1"):
        jwt = self.stack.gcp_instance_token(name, audience=self.broker.broker_env["BROKER_GCP_AUDIENCE"])
        return self.post("/v1/credentials/gcp", {"role": "web", "jwt": jwt})

    @property
    def server_id(self):
        return self.stack.broker_env()["BROKER_SERVER_ID"]

    def live_secret_ids(self, role="batch"):
        try:
            return set(self.stack.vault().list(f"auth/approle/role/{role}/secret-id")["data"]["keys"])
        except (TypeError, KeyError):
            return set()

    def secret_id_metadata(self, accessor, role="batch"):
        data = self.stack.vault().write_data(f"auth/approle/role/{role}/secret-id-accessor/lookup",
                                            data={"secret_id_accessor": accessor})["data"]
        return data.get("metadata") or {}


def record(name, answer, **extra):
    FIGURES[name] = {"status": answer.status, "seconds": round(answer.seconds, 2),
                     "retry_after": answer.headers.get("Retry-After"), **extra}


def assert_unavailable(answer, *, within):
    """503, the JSON error shape, a Retry-After, and well inside API Gateway's 29 s."""
    assert answer.status == 503, answer.doc
    assert set(answer.doc) == {"error", "request_id"} and answer.doc["error"]["code"] == "unavailable"
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.seconds < within < API_GATEWAY_LIMIT, f"answered in {answer.seconds:.1f}s"


def b64(text):
    return base64.b64encode(text.encode()).decode()
