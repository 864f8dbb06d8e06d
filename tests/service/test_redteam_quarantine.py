"""Red team: quarantine without a re-read on every issuance (recent reads, the window,
the revocation's second sweep), attacked for real against the local stack.

Each test tries to get a credential that still works (a secret ID that still logs in, a
wrapping token that still unwraps) after a revocation answered `complete: true`, or
shows a legitimate issuance refused where it must be served. Secrets stay in memory,
never printed.
"""

import json
import os
import threading
import time
import uuid

import pytest
import requests

from chalicelib.stores.quarantine import QuarantineList, quarantine_key
from devstack import aws as stack_aws
from devstack.faultproxy import Fault, FaultProxy
from tests.service.conftest import use_environment
from tests.service.security_helpers import RevocationInFlight, SecurityClient, fresh_when
from tests.sigv4 import signed_login

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all

ACCOUNT = "123456789012"
BATCH_SA = "batch-runner@demo-project.iam.gserviceaccount.com"
BATCH_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/demo-batch"


@pytest.fixture(scope="module")
def security(broker):
    return SecurityClient(broker, broker.stack.assume("security-team", f"redq-{uuid.uuid4().hex[:6]}"))


def body_of(response):
    return json.loads(response.body)


def unwrap(stack, doc, which="secret_id_wrap"):
    """(HTTP status, secret ID or None) of unwrapping one of an answer's wrapping tokens."""
    r = requests.post(f"{stack.vault_addr}/v1/sys/wrapping/unwrap", timeout=10,
                      headers={"X-Vault-Token": doc[which]["token"]})
    return r.status_code, (r.json()["data"].get("secret_id") if r.status_code == 200 else None)


def secret_id_alive(stack, role, accessor):
    """Does OpenBao still hold this secret ID (asked with its root token)?"""
    looked = requests.post(f"{stack.vault_addr}/v1/auth/approle/role/{role}/secret-id-accessor/lookup",
                           json={"secret_id_accessor": accessor}, headers={"X-Vault-Token": "root"}, timeout=10)
    return looked.status_code == 200


def gcp_post(broker, jwt, role):
    return broker.client.http.post("/v1/credentials/gcp", body=json.dumps({"role": role, "jwt": jwt}),
                                   headers={"Content-Type": "application/json"})


def sa_token(stack, audience):
    """An instance-less ID token of batch-runner, distinct from every other (two of one
    second would be byte-identical: the second one a replay)."""
    return stack.gcp_sa_token(BATCH_SA, audience=audience, claims={"redq": uuid.uuid4().hex})


def wait_for_key(stack, key, present=True, timeout=15):
    quarantine = QuarantineList(stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE)
    deadline = time.monotonic() + timeout
    while (quarantine.get(key) is not None) != present and time.monotonic() < deadline:
        time.sleep(0.005)
    return (quarantine.get(key) is not None) == present


# ---- 1. a GCE instance's revocation and its service account's instance-less tokens in flight ----------


@pytest.mark.parametrize("target_kind", ["instance", "request_id"])
def test_an_instanceless_token_in_flight_escapes_a_gce_instance_revocation(broker, security, monkeypatch,
                                                                           target_kind):
    """A GCE instance running as `batch-runner` is revoked: its quarantine also refuses the
    service account's instance-less tokens (whoever holds the instance mints them from its
    metadata server). An instance-less login admitted just before that quarantine (its
    `instanceless#` key is a shared key: read beside the transaction, kept a third of the
    settle time) is recorded within its window, so only the second sweep can reach it.
    Before the fix the sweep looked for the instance's records only (and, for a request ID,
    the instance or principal): the instance-less issuance, which names no instance,
    survived a `complete: true` revocation with a secret ID that still logs in."""
    import app as broker_app

    stack = broker.stack
    audience = os.environ["BROKER_GCP_AUDIENCE"]  # the in-process broker's (chalice local's differs)
    name = f"redq-gce-{uuid.uuid4().hex[:6]}"
    stack.gcp_create_instance(name, labels={}, service_account=BATCH_SA)
    # The stolen instance asks once (refused by the rules: web-gce wants demo-node): a record
    # that names the instance and its service account, as a revocation target needs.
    seen = gcp_post(broker, stack.gcp_instance_token(name, audience=audience), "web")
    assert seen.status_code == 403, seen.body
    seen_id = body_of(seen)["request_id"]
    instance_id = broker.audit.get(seen_id)["instance"]
    target = {"instance": instance_id} if target_kind == "instance" else {"request_id": seen_id}

    service = broker_app.get_service()
    real_issue = service._minter.issue
    revocation = {}

    def revoke():
        revocation.update(body_of(security.post("/v1/revocations", dict(target, reason="GCE compromise",
                                                                          quarantine="10m"))))

    def issue_while_revoked(*args, **kwargs):
        result = real_issue(*args, **kwargs)
        thread = threading.Thread(target=revoke)
        thread.start()
        revocation["thread"] = thread
        assert wait_for_key(stack, quarantine_key("instanceless", BATCH_SA)), "no instanceless quarantine placed"
        return result

    monkeypatch.setattr(service._minter, "issue", issue_while_revoked)
    # The attacker, on the instance, mints the service account's instance-less ID token.
    response = gcp_post(broker, sa_token(stack, audience), "batch")
    monkeypatch.undo()
    assert "thread" in revocation, f"the instance-less login was not minted: {response.status_code} {response.body}"
    revocation.pop("thread").join(timeout=60)
    try:
        assert revocation["complete"] is True, revocation["problems"]
        assert [q["target"] for q in revocation["quarantine"]] == [{"instance": instance_id},
                                                                   {"instanceless": BATCH_SA}]
        if response.status_code == 200:  # recorded within its window: the sweep must reach it
            doc = body_of(response)
            reached = {d["request_id"]: d for d in revocation["destroyed"]}
            status, _ = unwrap(stack, doc)
            record = broker.audit.get(doc["request_id"])
            assert status == 400, "the instance-less issuance's secret ID wrap still unwraps"
            assert not secret_id_alive(stack, "batch", record["secret_id_accessor"])
            assert reached[doc["request_id"]]["found_by"] == "sweep"
        else:  # taken back by its own request: nothing was handed out
            assert response.status_code in (403, 503), response.body
        # and from now on the instance-less token is refused
        refused = gcp_post(broker, sa_token(stack, audience), "batch")
        assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "quarantined"
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


# ---- 2. a slow backend: legitimate issuances taken back ------------------------------------------------


@pytest.fixture
def slow_vault(broker, fresh_service):
    """The in-process broker with OpenBao reached through a fault proxy."""
    proxy = FaultProxy(broker.stack.vault_addr).start()
    restore = use_environment({"BROKER_VAULT_ADDR": proxy.url, "BROKER_VAULT_PUBLIC_ADDR": broker.stack.vault_addr})
    try:
        yield proxy
    finally:
        proxy.clear()
        proxy.wait_idle(timeout=30)
        restore()
        proxy.stop()


def test_a_slow_but_healthy_vault_still_serves(broker, slow_vault):
    """OpenBao answering in 2.2 s (its timeout is 5 s) is slow, not down. Before the window
    every such issuance was served; with it, every one was recorded past its window (2 s)
    and taken back (503, `Retry-After: 1`), and so was every retry: an outage made of a
    slowdown. Now an issuance past its window re-reads its quarantine keys (consistent
    reads, after its record is written) and is served when they are clear."""
    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    warm = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    assert warm.status_code == 200, warm.body  # the minter's own login, through the proxy
    slow_vault.set(Fault("delay", seconds=2.2))
    answers = [broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())) for _ in range(2)]
    slow_vault.clear()
    assert [a.status_code for a in answers] == [200, 200], [body_of(a).get("error") for a in answers]
    for answer in answers:
        status, _ = unwrap(stack, body_of(answer))
        assert status == 200  # a credential the machine can use


def test_a_slow_issuance_of_a_quarantined_caller_is_still_taken_back(broker, security, slow_vault):
    """The other side of the re-read: an issuance past its window whose caller was
    quarantined meanwhile is taken back (403 quarantined), its secret ID destroyed."""
    import app as broker_app

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    assert broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())).status_code == 200
    service = broker_app.get_service()
    real_issue = service._minter.issue
    minted, revocation = [], {}

    def revoke():
        revocation.update(body_of(security.post("/v1/revocations", {"instance": instance, "reason": "slow",
                                                                    "quarantine": "10m"})))

    def issue_then_revoke(*args, **kwargs):
        result = real_issue(*args, **kwargs)  # slow: 2.2 s through the proxy
        minted.append(result)
        slow_vault.clear()  # the revocation's own Vault work is not slowed
        thread = threading.Thread(target=revoke)
        thread.start()
        revocation["thread"] = thread
        assert wait_for_key(stack, quarantine_key("instance", instance))
        return result

    service._minter.issue = issue_then_revoke
    slow_vault.set(Fault("delay", seconds=2.2))
    try:
        response = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    finally:
        del service._minter.issue
        slow_vault.clear()
    revocation.pop("thread").join(timeout=60)
    try:
        assert response.status_code in (403, 503), response.body
        assert not secret_id_alive(stack, "web", minted[0].secret_id_accessor)
        follow = broker.audit.get(body_of(response)["request_id"])
        assert follow["action"] == "take_back"
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


# ---- 3. a second Lambda process whose recent reads are stale ------------------------------------------


def second_process(stack):
    """Another broker process (its own recent reads) sharing the stack: what a second Lambda
    execution environment is."""
    from chalicelib.backends import build_service
    from chalicelib.config import Settings

    return build_service(Settings.from_env(stack.broker_env()))


def test_a_second_process_with_stale_recent_reads_leaves_nothing_usable(broker, security):
    """Process B keeps issuing `batch` to fresh sessions of demo-batch (so its read of the
    role's key is never more than a third of the settle time old) while process A revokes
    the role, lifts the revocation and revokes it again. B serves some issuances after the
    quarantine landed, from its kept clear answer; each must be dead once A's revocation
    answers `complete: true`."""
    stack = broker.stack
    b = second_process(stack)
    key = quarantine_key("principal", BATCH_ROLE_ARN)
    issued, statuses, stop = [], [], threading.Event()

    def machine():
        n = 0
        while not stop.is_set() and n < 200:
            n += 1
            creds = stack.assume("demo-batch", f"redq-b-{uuid.uuid4().hex[:8]}")
            body = json.dumps(signed_login(creds, "batch", broker.server_id, when=fresh_when())).encode()
            try:
                doc = b.issue("aws", body, source_ip="127.0.0.1", api_request_id=None)
            except Exception as error:  # BrokerError: the refusal's code
                statuses.append(getattr(error, "code", type(error).__name__))
                continue
            statuses.append("issued")
            issued.append((time.time(), doc))

    threads = [threading.Thread(target=machine, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    revocations = []
    try:
        while len(issued) < 4:
            time.sleep(0.05)
        for round_ in range(2):
            placed = {}
            watcher = threading.Thread(target=lambda: placed.update(ok=wait_for_key(stack, key), at=time.time()))
            watcher.start()
            doc = body_of(security.post("/v1/revocations", {"principal": BATCH_ROLE_ARN, "reason": f"round {round_}",
                                                            "quarantine": "10m"}))
            watcher.join()
            revocations.append(doc)
            assert doc["complete"] is True, doc["problems"]
            reached = {d["request_id"] for d in doc["destroyed"]}
            before_answer = [d for t, d in issued if t <= time.time()]
            late = [d for t, d in issued if t >= placed["at"]]
            print(f"round {round_}: {len(before_answer)} issued by B so far, {len(late)} after the quarantine landed")
            for d in before_answer:
                assert d["request_id"] in reached or unwrap(stack, d)[0] == 400
                record = broker.audit.get(d["request_id"])
                assert not secret_id_alive(stack, "batch", record["secret_id_accessor"]), d["request_id"]
            lifted = security.delete(f"/v1/revocations/{doc['revocation_id']}")
            assert lifted.status_code == 200
            time.sleep(0.5)  # B reads the lifted key as clear and keeps it
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for doc in revocations:
            security.delete(f"/v1/revocations/{doc['revocation_id']}")
    assert set(statuses) <= {"issued", "quarantined"}, set(statuses)


# ---- 4. a Lambda environment frozen between invocations --------------------------------------------------


def test_a_read_kept_across_a_freeze_does_not_pass_for_fresh(broker, security):
    """Lambda freezes an environment between invocations; whether its CLOCK_MONOTONIC
    counts the frozen time is not documented (a paused microVM's can stand still). Process
    B reads the role's key (clear, kept), is frozen while process A revokes the role
    (`complete: true`), and is thawed: its monotonic clock says its read is a tenth of a
    second old. Before the fix B served the next session of the role from that read, after
    the revocation's sweep, and the secret ID stayed alive. The freeze is modelled by B's
    monotonic clock not counting it (nothing here can pause a microVM); the rest is real."""
    stack = broker.stack
    b = second_process(stack)
    frozen = {"for": 0.0}

    def b_monotonic():
        return time.monotonic() - frozen["for"]

    b._monotonic = b._admission._shared._monotonic = b_monotonic

    def b_login():
        creds = stack.assume("demo-batch", f"redq-f-{uuid.uuid4().hex[:8]}")
        body = json.dumps(signed_login(creds, "batch", broker.server_id, when=fresh_when())).encode()
        return b.issue("aws", body, source_ip="127.0.0.1", api_request_id=None)

    b_login()  # B keeps the role's key as clear
    read_at = time.monotonic()
    revoked = body_of(security.post("/v1/revocations", {"principal": BATCH_ROLE_ARN, "reason": "freeze",
                                                        "quarantine": "10m"}))
    try:
        assert revoked["complete"] is True, revoked["problems"]
        frozen["for"] = time.monotonic() - read_at - 0.1  # thawed: its clock counted none of it
        try:
            doc = b_login()
        except Exception as error:  # BrokerError
            assert getattr(error, "code", None) == "quarantined", error
            return
        record = broker.audit.get(doc["request_id"])
        alive = secret_id_alive(stack, "batch", record["secret_id_accessor"])
        assert not alive, "a session of the revoked role got a live secret ID after the revocation completed"
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")


# ---- 5. a request-ID revocation racing an issuance of the machine it quarantines ------------------------


def test_a_request_id_revocation_reaches_the_machines_issuance_in_flight(broker, security, monkeypatch):
    """Revoking one request ID quarantines its (verified) machine; an issuance of that
    machine admitted just before the quarantine and recorded after the first pass is
    reached by the sweep (the machine's issuances of the last minutes): nothing it was
    given unwraps or logs in once the revocation answers `complete: true`."""
    import app as broker_app

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    first = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    assert first.status_code == 200, first.body
    in_flight = RevocationInFlight(
        monkeypatch, broker_app.get_service(), security,
        {"request_id": body_of(first)["request_id"], "reason": "one stolen", "quarantine": "10m"},
        placed=lambda: wait_for_key(stack, quarantine_key("instance", instance), timeout=0.01), after_first_pass=True)
    response = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    revocation = in_flight.wait()
    try:
        assert revocation["complete"] is True, revocation["problems"]
        assert response.status_code == 200, response.body
        doc = body_of(response)
        reached = {d["request_id"]: d["found_by"] for d in revocation["destroyed"]}
        assert reached == {body_of(first)["request_id"]: "first pass", doc["request_id"]: "sweep"}
        assert unwrap(stack, doc)[0] == 400
        assert not secret_id_alive(stack, "web", broker.audit.get(doc["request_id"])["secret_id_accessor"])
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


# ---- 6. concurrent logins of one machine: its own keys (machine, session) in one transaction each --------


def test_concurrent_logins_of_one_instance_are_all_admitted_and_counted_once_each(broker):
    """Eight logins of one EC2 instance at once: each transaction checks the same items (the
    instance's and the session's quarantine keys, the identity's counter). Every one is
    served and counted once (20 per hour: 8 used, 12 left). The stack's moto runs
    transactions one at a time (devstack/moto_isolated.py): DynamoDB's TransactionConflict
    between them is not reproduced here (see chalicelib/admission.py's retries)."""
    from concurrent.futures import ThreadPoolExecutor

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    bodies = [signed_login(creds, "web", broker.server_id, when=fresh_when()) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(broker.post, bodies))
    assert [a.status_code for a in answers] == [200] * 8, [body_of(a).get("error") for a in answers]
    table, start = stack_aws.QUARANTINE_TABLE, int(time.time()) // 3600 * 3600
    counters = stack.client("dynamodb").scan(
        TableName=table, FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": "ratelimit#issue-identity#"}})["Items"]
    mine = [c for c in counters if instance in c["pk"]["S"] and c["pk"]["S"].endswith(f"#{start}")]
    assert [int(c["hits"]["N"]) for c in mine] == [8], [c["pk"]["S"] for c in mine]


# ---- 7. a service account revoked while one of its GCE instances is in flight ----------------------------


def test_a_service_account_revocation_reaches_a_gce_issuance_in_flight(broker, security, monkeypatch):
    """A GCE instance's service account is a shared key (read beside the transaction, kept
    a third of the settle time). Revoking the service account while one of its instances'
    issuances is in flight: the sweep (the service account's issuances) reaches it."""
    import app as broker_app

    stack = broker.stack
    audience = os.environ["BROKER_GCP_AUDIENCE"]
    sa = "demo-node@demo-project.iam.gserviceaccount.com"
    name = f"redq-sa-{uuid.uuid4().hex[:6]}"
    stack.gcp_create_instance(name, labels={"vault-role": "web"}, service_account=sa)
    assert gcp_post(broker, stack.gcp_instance_token(name, audience=audience), "web").status_code == 200
    in_flight = RevocationInFlight(
        monkeypatch, broker_app.get_service(), security, {"principal": sa, "reason": "SA key leaked", "quarantine": "10m"},
        placed=lambda: wait_for_key(stack, quarantine_key("principal", sa), timeout=0.01))
    response = gcp_post(broker, stack.gcp_instance_token(name, audience=audience), "web")
    started = in_flight.started
    revocation = in_flight.wait()
    assert started, f"not minted: {response.status_code} {response.body}"
    try:
        assert revocation["complete"] is True, revocation["problems"]
        assert response.status_code == 200, response.body
        doc = body_of(response)
        reached = {d["request_id"]: d["found_by"] for d in revocation["destroyed"]}
        assert reached.get(doc["request_id"]) in ("first pass", "sweep")  # racing the first pass: either
        assert unwrap(stack, doc)[0] == 400
        assert not secret_id_alive(stack, "web", broker.audit.get(doc["request_id"])["secret_id_accessor"])
        refused = gcp_post(broker, stack.gcp_instance_token(name, audience=audience), "web")
        assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "quarantined"
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


# ---- 8. a role quarantine must not use up its sessions' budgets (issue 10) ----------------------------------


def test_a_caller_refused_by_its_roles_quarantine_keeps_its_budget(broker, security):
    """The role's key is read beside the admission transaction, so the transaction has
    counted the caller before the role's quarantine refuses it: the slot is given back.
    25 refused logins (the budget is 20 per hour), then the lift: the machine is served."""
    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    role_arn = "arn:aws:iam::123456789012:role/demo-node"
    revoked = body_of(security.post("/v1/revocations", {"principal": role_arn, "reason": "budget", "quarantine": "1h"}))
    try:
        for _ in range(25):
            refused = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
            assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "quarantined"
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")
    start = int(time.time()) // 3600 * 3600
    counters = stack.client("dynamodb").scan(
        TableName=stack_aws.QUARANTINE_TABLE, FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": "ratelimit#issue-identity#"}})["Items"]
    mine = [int(c["hits"]["N"]) for c in counters if instance in c["pk"]["S"] and c["pk"]["S"].endswith(f"#{start}")]
    assert sum(mine) == 0, mine
    served = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    assert served.status_code == 200, body_of(served).get("error")
