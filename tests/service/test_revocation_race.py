"""A revocation racing issuances, and the Vault tokens a revocation reaches, for real.

Four threads keep asking the broker (`chalice local`, over HTTP) for `batch` as four
sessions of `demo-batch`, unwrapping and logging in to OpenBao with what they get, while
the security team revokes the role `demo-batch`. Afterwards OpenBao itself is asked:
not one secret ID issued to a `demo-batch` session may survive, and not one token
obtained with one may still work. Tokens and secret IDs stay in memory, never printed.
"""

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.service.security_helpers import SecurityClient
from tests.sigv4 import signed_login

ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/demo-batch"


@pytest.fixture(scope="module")
def security(broker):
    return SecurityClient(broker, broker.stack.assume("security-team", f"race-{uuid.uuid4().hex[:6]}"))


def vault_get(stack, path, **params):
    return requests.request("LIST" if params.pop("list", False) else "GET", f"{stack.vault_addr}/v1/{path}",
                            headers={"X-Vault-Token": "root"}, timeout=10)


def surviving_secret_ids(stack, role, principal_prefix):
    """Secret IDs of `role` that OpenBao still holds whose metadata names a principal
    starting with `principal_prefix` (asked of OpenBao itself, with its root token)."""
    listed = requests.request("LIST", f"{stack.vault_addr}/v1/auth/approle/role/{role}/secret-id",
                              headers={"X-Vault-Token": "root"}, timeout=10)
    if listed.status_code == 404:
        return []
    survivors = []
    for accessor in listed.json()["data"]["keys"]:
        looked = requests.post(f"{stack.vault_addr}/v1/auth/approle/role/{role}/secret-id-accessor/lookup",
                               json={"secret_id_accessor": accessor}, headers={"X-Vault-Token": "root"}, timeout=10)
        if looked.status_code != 200:
            continue  # used up or destroyed between the list and the lookup
        metadata = looked.json()["data"].get("metadata") or {}
        if metadata.get("principal", "").startswith(principal_prefix):
            survivors.append((accessor, metadata.get("request_id")))
    return survivors


class Machine(threading.Thread):
    """One session of demo-batch asking for `batch` again and again, logging in with each."""

    def __init__(self, stack, url, server_id, n, stop):
        super().__init__(daemon=True)
        self.creds = stack.assume("demo-batch", f"race-{uuid.uuid4().hex[:6]}-{n}")
        self.stack, self.url, self.server_id, self.stop = stack, url, server_id, stop
        self.issued = []  # (time answered, request_id)
        self.tokens = []  # Vault tokens obtained (secrets: compared, never printed)
        self.statuses = []
        self._back = 0
        self._base = datetime.now(timezone.utc)

    def when(self):
        # A distinct signing second per request: one session's signatures of one second are equal.
        self._back += 1
        return self._base - timedelta(seconds=self._back)

    def run(self):
        http = requests.Session()
        while not self.stop.is_set() and self._back < 250:
            r = http.post(f"{self.url}/v1/credentials/aws", timeout=30,
                          json=signed_login(self.creds, "batch", self.server_id, when=self.when()))
            self.statuses.append((r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else None))
            if r.status_code != 200:
                time.sleep(0.05)
                continue
            doc = r.json()
            self.issued.append((time.time(), doc["request_id"]))
            unwrapped = http.post(f"{self.stack.vault_addr}/v1/sys/wrapping/unwrap", timeout=10,
                                  headers={"X-Vault-Token": doc["secret_id_wrap"]["token"]})
            if unwrapped.status_code != 200:
                continue  # revoked meanwhile
            login = http.post(f"{self.stack.vault_addr}/v1/auth/approle/login", timeout=10, json={
                "role_id": self.stack.vault_seed.role_ids["batch"], "secret_id": unwrapped.json()["data"]["secret_id"]})
            if login.status_code == 200:
                self.tokens.append(login.json()["auth"]["client_token"])


def test_issuances_racing_a_revocation_leave_nothing_usable(broker, local_broker, security):
    stack = broker.stack
    stop = threading.Event()
    machines = [Machine(stack, local_broker.url, broker.server_id, n, stop) for n in range(4)]
    for m in machines:
        m.start()
    deadline = time.time() + 60
    while sum(len(m.issued) for m in machines) < 8 and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    response = security.post("/v1/revocations", {"principal": ROLE_ARN, "reason": "race test", "quarantine": "10m"})
    answered = time.time()
    time.sleep(1.0)  # the machines keep asking after the answer too
    stop.set()
    for m in machines:
        m.join(timeout=60)
    try:
        assert response.status_code == 200, response.body
        doc = __import__("json").loads(response.body)
        assert doc["complete"] is True, doc["problems"]
        assert doc["quarantine"][0]["target"] == {"principal": ROLE_ARN}

        issued = [(t, rid) for m in machines for t, rid in m.issued]
        during = [rid for t, rid in issued if started <= t <= answered]
        after = [rid for t, rid in issued if t > answered]
        tokens = [t for m in machines for t in m.tokens]
        print(f"race: {len(issued)} issued ({len(during)} answered during the revocation, {len(after)} after), "
              f"{len(tokens)} tokens, {len(doc['destroyed'])} issuances reached "
              f"({sum(d['found_by'] == 'sweep' for d in doc['destroyed'])} by the sweep)")
        assert len(issued) >= 8 and tokens

        # In OpenBao: no secret ID of any demo-batch session survives...
        assert surviving_secret_ids(stack, "batch", f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-batch/") == []
        # ...no token obtained with one still works...
        for token in tokens:
            assert requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self", timeout=10,
                                headers={"X-Vault-Token": token}).status_code == 403
        # ...and every issuance that got an answer is either reached by the revocation or was
        # taken back by its own request (answered with a 403 then, not a 200).
        reached = {d["request_id"] for d in doc["destroyed"]}
        assert {rid for _, rid in issued} <= reached
        # Refused: quarantined, nothing else (the stack's moto isolates its DynamoDB transactions,
        # as DynamoDB does: devstack/moto_isolated.py).
        refused = {s for m in machines for s in m.statuses if s[0] != 200}
        assert refused == {(403, "quarantined")}, refused
    finally:
        if response.status_code == 200:
            revocation_id = __import__("json").loads(response.body)["revocation_id"]
            assert security.delete(f"/v1/revocations/{revocation_id}").status_code == 200
