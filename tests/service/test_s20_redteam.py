"""Red team (s20) of issue 14's fifth pass: the replay lookup beside STS, the quarantine
epoch read with it, the process-local memo of spent proofs. Attacked for real against
the local stack (moto with SigV4 verification, OpenBao), the broker in-process; DynamoDB
reached through a fault proxy where a test needs DynamoDB to answer as it does under
contention or throttling (the answers are DynamoDB's own error documents).

Each test tries an attack and shows it refused, or a legitimate login served.
Secrets stay in memory, never printed.

Breaks found (fixed, each with its test here): a seed of the epoch that fails (a
revocation's transaction on the item, throttling) failed the login with 503; placements
of revocations run at once cancel each other on the one epoch item (TransactionConflict)
and gave up after 4 tries (~0.1 s); a placement refused by a longer entry that was lifted
before it was read answered an entry nobody held. Recorded as a strict xfail, then fixed
by the lead (pre-existing): lifting a longer revocation freed a target a shorter,
never-lifted one still quarantined (every revocation is now a holder of its entry).

Held: the lookup unread or throttled (503, named, audited, whatever the proof); one proof
raced in two environments (issued once, budget counted once); a warm environment against
lift and re-place, a shorter quarantine, expiry, the epoch deleted or written back, the
seed racing the first placement either way, a revocation landing between a login's epoch
read and its use (the second sweep reaches it), a request-ID revocation of a service
account; a forged GCP token carrying an AWS proof's replay key.
"""

import json
import threading
import time
import uuid

import pytest

from app import app as chalice_app  # noqa: F401  (the app the broker fixture serves)
from chalice.test import Client

from chalicelib.stores.quarantine import EPOCH_KEY, QuarantineList, quarantine_key
from devstack import aws as stack_aws
from devstack.faultproxy import Fault, FaultProxy
from tests.service.conftest import use_environment
from tests.sigv4 import signed_login

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all

ACCOUNT = stack_aws.ACCOUNT_ID
ROLE_KEY = quarantine_key("principal", f"arn:aws:iam::{ACCOUNT}:role/demo-node")

TRANSACTION_CONFLICT = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                                   "message": "Transaction is ongoing for the item"})
THROTTLED = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded."})


def _op(req):
    return req.headers.get("x-amz-target", "").rsplit(".", 1)[-1]


def epoch_put(req):
    """The seed of the quarantine epoch (a PutItem of the epoch item)."""
    return _op(req) == "PutItem" and EPOCH_KEY.encode() in req.body


def body_of(response):
    return json.loads(response.body)


def quarantine_list(stack):
    return QuarantineList(stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE)


def epoch(stack):
    item = stack.client("dynamodb").get_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}},
                                             ConsistentRead=True).get("Item")
    return item["epoch"]["S"] if item else None


class Proxied:
    """The in-process broker with its AWS endpoint (DynamoDB, EC2, IAM) behind a fault proxy."""

    def __init__(self, stack, client, proxy):
        self.stack, self.client, self.proxy = stack, client, proxy
        self.server_id = stack.broker_env()["BROKER_SERVER_ID"]

    def post(self, body, path="/v1/credentials/aws"):
        return self.client.http.post(path, body=body if isinstance(body, str) else json.dumps(body),
                                     headers={"Content-Type": "application/json"})

    def web_login(self, instance=None):
        instance = instance or self.stack.launch_instance({"vault-role": "web"}, profile="demo-node")
        return signed_login(self.stack.assume("demo-node", instance), "web", self.server_id)

    def rebuild(self):
        """A fresh service (a new Lambda environment): nothing kept from before."""
        import app as broker_app

        broker_app._service = None


@pytest.fixture
def proxied(broker):
    import app as broker_app

    stack = broker.stack
    proxy = FaultProxy(stack.aws_endpoint_url).start()
    restore = use_environment({**stack.broker_env(), "BROKER_AWS_ENDPOINT_URL": proxy.url,
                               "BROKER_REVOCATION_SETTLE_SECONDS": "1"})
    try:
        with Client(broker_app.app, stage_name="local") as client:
            yield Proxied(stack, client, proxy)
    finally:
        proxy.clear()
        restore()
        proxy.stop()


# ---- the seed of the epoch ------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [TRANSACTION_CONFLICT, THROTTLED], ids=["conflict", "throttled"])
def test_a_seed_that_fails_does_not_fail_the_login_that_tried_it(proxied, answer):
    """The first login of a process that finds no epoch writes one (an optimisation).
    DynamoDB answers that put with TransactionConflict when a revocation's transaction
    (which creates the epoch) is on the item at that moment, or throttles it: the
    login must still be served, its role's key read as if there were no epoch."""
    stack = proxied.stack
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    proxied.rebuild()
    proxied.proxy.set(Fault("status", match=epoch_put, status=400, body=answer,
                            headers={"Content-Type": "application/x-amz-json-1.0"}))
    response = proxied.post(proxied.web_login())
    assert response.status_code == 200, body_of(response).get("error")
    assert epoch(stack) is None  # the seed did fail
    proxied.proxy.clear()
    # a quarantine placed now is seen by the next login of this (warm) process
    revocation_id = f"s20-{uuid.uuid4().hex[:8]}"
    quarantine_list(stack).place(ROLE_KEY, revocation_id=revocation_id, until=int(time.time()) + 600,
                                 reason="s20", by="s20")
    try:
        refused = proxied.post(proxied.web_login())
        assert refused.status_code == 403 and body_of(refused)["error"]["code"] == "quarantined"
    finally:
        assert quarantine_list(stack).lift(ROLE_KEY, revocation_id)


def forged(login):
    """The login with its SigV4 signature altered (STS refuses it: 401 invalid_proof)."""
    import base64

    headers = json.loads(base64.b64decode(login["iam_request_headers"]))
    auth = headers["Authorization"][0]
    headers["Authorization"] = [auth[:-1] + ("0" if auth[-1] != "0" else "1")]
    return dict(login, iam_request_headers=base64.b64encode(json.dumps(headers).encode()).decode())


def batch_get(req):
    return _op(req) == "BatchGetItem"


# ---- the lookup failing: 503, named, audited; never a 500 -----------------------------------------


def test_a_lookup_left_unread_every_time_is_a_named_503_audited_and_nothing_else_asked(proxied):
    """BatchGetItem answers keys it could not read (throttling) as UnprocessedKeys, with
    HTTP 200. Every time: 503 naming the replay store, recorded, no fact read, no
    admission transaction, nothing minted."""
    unprocessed = json.dumps({"Responses": {}, "UnprocessedKeys": {
        stack_aws.QUARANTINE_TABLE: {"Keys": [{"pk": {"S": EPOCH_KEY}}], "ConsistentRead": True}}})
    seen = []

    def after_lookup(req):  # what the broker asks DynamoDB/EC2 besides the lookup
        if not batch_get(req):
            seen.append(_op(req) or req.path)
        return False

    proxied.proxy.set(Fault("status", match=batch_get, status=200, body=unprocessed,
                            headers={"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "unprocessed-1"}),
                      Fault("status", match=after_lookup))
    response = proxied.post(proxied.web_login())
    doc = body_of(response)
    assert response.status_code == 503, doc
    assert doc["error"]["code"] == "unavailable" and "replay store" in doc["error"]["message"], doc
    assert response.headers.get("Retry-After"), response.headers
    assert "TransactWriteItems" not in seen and "DescribeInstances" not in seen, seen
    record = proxied.stack.broker_env() and _audit(proxied.stack).get(doc["request_id"])
    assert record["outcome"] == "error" and record["code"] == "unavailable", record
    assert "batch_get_item left keys unread" in record["reason"], record


@pytest.mark.parametrize("proof", ["valid", "forged"])
def test_a_throttled_lookup_beside_any_proof_is_a_503_never_a_500(proxied, proof):
    proxied.proxy.set(Fault("status", match=batch_get, status=400, body=THROTTLED,
                            headers={"Content-Type": "application/x-amz-json-1.0"}))
    login = proxied.web_login()
    response = proxied.post(forged(login) if proof == "forged" else login)
    doc = body_of(response)
    assert response.status_code == 503 and doc["error"]["code"] == "unavailable", doc
    record = _audit(proxied.stack).get(doc["request_id"])
    assert record["code"] == "unavailable", record
    proxied.proxy.clear()
    # the same proof once the store answers: the forged one is refused by STS, the valid one
    # (never spent: its lookup failed before anything was admitted) is served
    again = proxied.post(forged(login) if proof == "forged" else login)
    expected = (401, "invalid_proof") if proof == "forged" else (200, None)
    assert (again.status_code, body_of(again).get("error", {}).get("code")) == expected, body_of(again).get("error")


def _audit(stack):
    from chalicelib.audit import AuditStore

    return AuditStore(stack.client("dynamodb"), stack_aws.AUDIT_TABLE, 400)


# ---- a replay raced against its original ----------------------------------------------------------


def test_one_proof_sent_at_once_to_two_environments_is_issued_once(stack):
    """The same proof to two fresh Lambda environments at the same moment, STS slowed
    down so that both replay lookups answer "not spent" before either is admitted: the
    admission transaction lets one through; the other is a replay (401), counted against
    no budget, minted nothing. Twice."""
    from devstack.latency import LatencyStack
    from tests.service.test_cold_init import LAMBDA_RUNTIME, Child, _env

    with LatencyStack(stack) as proxies:
        children = [Child(_env({**stack.broker_env(), **proxies.env(), **LAMBDA_RUNTIME})) for _ in range(2)]
        try:
            proxies.set_delays({"sts": 1000}, mode="add")  # both lookups answer within it
            server_id = stack.broker_env()["BROKER_SERVER_ID"]
            for _ in range(2):
                instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
                body = json.dumps(signed_login(stack.assume("demo-node", instance), "web", server_id))
                proxies.reset()
                for child in children:  # both requests out before either answer is read
                    child.proc.stdin.write(json.dumps({"method": "POST", "path": "/v1/credentials/aws",
                                                       "body": body}) + "\n")
                    child.proc.stdin.flush()
                answers = [child._read() for child in children]
                docs = [json.loads(a["body"]) for a in answers]
                outcomes = sorted((a["status"], d.get("error", {}).get("code")) for a, d in zip(answers, docs))
                assert outcomes == [(200, None), (401, "proof_replayed")], outcomes
                counts = proxies.counts()
                # both lookups went out (neither saw the other's record), one was minted
                assert counts["dynamodb BatchGetItem"] == 2, counts
                # and both reached the admission transaction: the race was run, not lost early
                assert counts["dynamodb TransactWriteItems"] == 2, counts
                assert counts["vault GET auth/approle/role/web/role-id"] == 1, counts
                assert counts["vault POST auth/approle/role/web/secret-id"] == 1, counts
                hits = [int(item["hits"]["N"]) for item in stack.client("dynamodb").scan(
                    TableName=stack_aws.QUARANTINE_TABLE, ConsistentRead=True,
                    FilterExpression="begins_with(pk, :p) AND contains(pk, :i)",
                    ExpressionAttributeValues={":p": {"S": "ratelimit#issue-identity#"},
                                               ":i": {"S": instance}})["Items"]]
                assert hits == [1], hits  # the caller's budget counted once: by the winner
                loser = next(d for d in docs if "error" in d)
                record = _audit(stack).get(loser["request_id"])
                assert record["code"] == "proof_replayed" and not record.get("secret_id_accessor"), record
        finally:
            for child in children:
                child.close()


# ---- concurrent revocations: every placement now writes the one epoch item -------------------------


def epoch_transaction(req):
    return _op(req) == "TransactWriteItems" and EPOCH_KEY.encode() in req.body


def conflicts(times):
    """A match for the first `times` placements' transactions: DynamoDB cancels a
    transaction on an item another transaction holds (a concurrent revocation's
    placement changing the same epoch) with TransactionConflict, nothing written."""
    left = {"n": times}
    lock = threading.Lock()

    def match(req):
        if not epoch_transaction(req):
            return False
        with lock:
            left["n"] -= 1
            return left["n"] >= 0

    return match


CANCELLED_BY_CONFLICT = json.dumps({
    "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
    "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]",
    "CancellationReasons": [{"Code": "None"},
                            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]})


@pytest.fixture
def security(proxied):
    from tests.service.security_helpers import SecurityClient

    return SecurityClient(proxied, proxied.stack.assume("security-team", f"s20-{uuid.uuid4().hex[:6]}"))


def revoke_role(security, role_name):
    arn = f"arn:aws:iam::{ACCOUNT}:role/{role_name}"
    return security.post("/v1/revocations", {"principal": arn, "reason": "s20 parallel revocations",
                                             "quarantine": "10m", "force": True})


def test_a_revocation_whose_placement_meets_a_run_of_conflicts_still_places_its_quarantine(proxied, security):
    """A security team revoking many targets at once (a script, an incident): before the
    epoch, their placements wrote different items and never met; now each one's
    transaction also changes the one epoch item, and DynamoDB cancels all but one of
    those in flight together. A run of conflicts is contention, not an outage: the
    revocation must still place its quarantine (and change the epoch)."""
    role_name = f"s20-gone-{uuid.uuid4().hex[:6]}"
    before = epoch(proxied.stack)
    proxied.proxy.set(Fault("status", match=conflicts(5), status=400, body=CANCELLED_BY_CONFLICT,
                            headers={"Content-Type": "application/x-amz-json-1.0"}))
    response = revoke_role(security, role_name)
    doc = body_of(response)
    assert response.status_code == 200, doc.get("error")
    try:
        key = quarantine_key("principal", f"arn:aws:iam::{ACCOUNT}:role/{role_name}")
        assert quarantine_list(proxied.stack).get(key) is not None
        assert epoch(proxied.stack) not in (None, before)
    finally:
        security.delete(f"/v1/revocations/{doc['revocation_id']}")


def test_a_placement_that_never_gets_through_is_a_named_503_with_nothing_placed(proxied, security):
    role_name = f"s20-gone-{uuid.uuid4().hex[:6]}"
    before = epoch(proxied.stack)
    proxied.proxy.set(Fault("status", match=epoch_transaction, status=400, body=CANCELLED_BY_CONFLICT,
                            headers={"Content-Type": "application/x-amz-json-1.0"}))
    response = revoke_role(security, role_name)
    doc = body_of(response)
    assert response.status_code == 503, doc
    assert doc["error"]["code"] == "unavailable" and "quarantine store" in doc["error"]["message"], doc
    key = quarantine_key("principal", f"arn:aws:iam::{ACCOUNT}:role/{role_name}")
    assert quarantine_list(proxied.stack).get(key) is None  # all or nothing: no entry without its epoch
    assert epoch(proxied.stack) == before
    record = _audit(proxied.stack).get(doc["request_id"])
    assert record["code"] == "unavailable" and "TransactionConflict" in record["reason"], record


# ---- a warm environment (the in-process broker keeps its reads between requests) ------------------

BATCH_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/demo-batch"
BATCH_KEY = quarantine_key("principal", BATCH_ROLE_ARN)
BATCH_SA = "batch-runner@demo-project.iam.gserviceaccount.com"


def batch_login(broker):
    from tests.service.security_helpers import fresh_when

    creds = broker.stack.assume("demo-batch", f"s20-{uuid.uuid4().hex[:8]}")
    return broker.post(signed_login(creds, "batch", broker.server_id, when=fresh_when()))


def code_of(response):
    return response.status_code, body_of(response).get("error", {}).get("code")


def place(stack, key, until_in=600, revocation_id=None):
    revocation_id = revocation_id or f"s20-{uuid.uuid4().hex[:8]}"
    quarantine_list(stack).place(key, revocation_id=revocation_id, until=int(time.time()) + until_in,
                                 reason="s20", by="s20")
    return revocation_id


@pytest.fixture
def warm(broker):
    """The in-process broker, warm: the batch role's key read once and kept."""
    assert code_of(batch_login(broker)) == (200, None)
    yield broker
    free(broker.stack, BATCH_KEY)  # never leave the shared role quarantined for the next test


def free(stack, key):
    """Lift every revocation holding `key` (lifting the one in force hands the key to the
    next holder: a shorter revocation placed under it)."""
    listing = quarantine_list(stack)
    for _ in range(10):
        item = listing.get(key)
        if item is None:
            return
        listing.lift(key, item.revocation_id)
    raise AssertionError(f"{key} still quarantined after 10 lifts")


def test_a_lift_then_a_new_quarantine_of_the_role_is_seen_at_once_each_time(warm):
    stack = warm.stack
    first = place(stack, BATCH_KEY)
    assert code_of(batch_login(warm)) == (403, "quarantined")
    assert quarantine_list(stack).lift(BATCH_KEY, first)  # lifting changes no epoch ...
    assert code_of(batch_login(warm)) == (200, None)  # ... a quarantined key is never kept
    assert code_of(batch_login(warm)) == (200, None)  # kept now, under the epoch of `first`
    place(stack, BATCH_KEY)
    assert code_of(batch_login(warm)) == (403, "quarantined")


def test_a_shorter_quarantine_placed_over_a_longer_one_changes_nothing_and_the_longer_holds(warm):
    stack = warm.stack
    place(stack, BATCH_KEY, until_in=600)
    before = epoch(stack)
    entry = quarantine_list(stack).place(BATCH_KEY, revocation_id="s20-shorter", until=int(time.time()) + 30,
                                         reason="s20", by="s20")
    assert entry.revocation_id != "s20-shorter" and epoch(stack) == before  # refused: nothing written
    assert code_of(batch_login(warm)) == (403, "quarantined")


def test_a_quarantine_that_expires_frees_the_role_and_a_new_one_is_seen_again(warm):
    stack = warm.stack
    place(stack, BATCH_KEY, until_in=2)  # until: the next whole second but one
    until = quarantine_list(stack).get(BATCH_KEY).until
    assert code_of(batch_login(warm)) == (403, "quarantined")
    time.sleep(max(0.0, until - time.time()) + 0.05)  # expired (DynamoDB's TTL may keep the item for days)
    assert code_of(batch_login(warm)) == (200, None)
    assert code_of(batch_login(warm)) == (200, None)
    place(stack, BATCH_KEY, until_in=600)  # over the expired entry: placed, a new epoch
    assert code_of(batch_login(warm)) == (403, "quarantined")


def test_the_epoch_item_deleted_under_a_warm_environment_then_a_quarantine(warm):
    """Someone deletes the epoch item: the warm environment's kept read, vouched for by an
    epoch nobody reads any more, falls back to its age (a second); the next placement
    writes a new epoch, which no kept read carries."""
    stack = warm.stack
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    assert code_of(batch_login(warm)) == (200, None)
    place(stack, BATCH_KEY)
    assert epoch(stack) is not None
    assert code_of(batch_login(warm)) == (403, "quarantined")


def test_an_old_epoch_written_back_does_not_hide_a_quarantine_placed_since(warm):
    """The epoch item overwritten with the value it had when the warm environment read
    the role's key (a restore from backup, a hand edit), after a quarantine of the role
    was placed: the quarantine's entry is there; does the old epoch make the kept read
    pass? It does, for at most EPOCH_TRUST_SECONDS: this shows the bound is the only
    guard, and that the broker itself never writes an old epoch."""
    stack = warm.stack
    old = epoch(stack)
    assert code_of(batch_login(warm)) == (200, None)  # kept under `old`
    place(stack, BATCH_KEY)
    assert epoch(stack) != old
    stack.client("dynamodb").put_item(TableName=stack_aws.QUARANTINE_TABLE,
                                      Item={"pk": {"S": EPOCH_KEY}, "epoch": {"S": old}})
    served = batch_login(warm)
    # The documented limit: a hand-written old epoch is trusted within its minute (outside
    # the threat model: whoever writes the table can delete the entry as well).
    assert code_of(served) == (200, None)
    place(stack, BATCH_KEY, until_in=900)  # any placement by the broker writes a fresh epoch
    assert epoch(stack) != old
    assert code_of(batch_login(warm)) == (403, "quarantined")


def test_a_seed_racing_the_first_placement_misses_nothing(broker, fresh_service, monkeypatch):
    """A table with no epoch: a process's first login finds none and seeds one; the first
    quarantine ever placed (creating the epoch) lands between its lookup and its seed.
    The seed's conditional put is refused; the login reads the role's key: refused."""
    stack = broker.stack
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    real_seed = QuarantineList.seed_epoch
    placed = []

    def seed_after_a_placement(self):
        placed.append(place(stack, BATCH_KEY))
        return real_seed(self)

    monkeypatch.setattr(QuarantineList, "seed_epoch", seed_after_a_placement)
    try:
        assert code_of(batch_login(broker)) == (403, "quarantined")
        assert placed, "the seed was not tried"
        monkeypatch.undo()
        assert code_of(batch_login(broker)) == (403, "quarantined")
    finally:
        free(stack, BATCH_KEY)


def test_a_seed_landing_before_the_first_placement_is_changed_by_it(broker, fresh_service, monkeypatch):
    """The other order: the seed writes its epoch, then the first quarantine lands before
    the login's key read is kept; the next login reads the placement's epoch."""
    stack = broker.stack
    stack.client("dynamodb").delete_item(TableName=stack_aws.QUARANTINE_TABLE, Key={"pk": {"S": EPOCH_KEY}})
    assert code_of(batch_login(broker)) == (200, None)  # seeded, the role's key kept under the seed
    seeded = epoch(stack)
    assert seeded is not None
    revocation_id = place(stack, BATCH_KEY)
    try:
        assert epoch(stack) != seeded
        assert code_of(batch_login(broker)) == (403, "quarantined")
    finally:
        quarantine_list(stack).lift(BATCH_KEY, revocation_id)


# ---- a revocation landing between a warm login's epoch read and its use --------------------------


def test_a_role_revocation_landing_just_after_a_warm_logins_epoch_read_leaves_nothing_alive(warm, monkeypatch):
    """The gap the epoch leaves: a warm login reads the old epoch (its lookup), then the
    role is revoked (the quarantine and a new epoch), then the login relies on its kept
    read of the role's key and is admitted. Its evidence is its lookup, older than the
    quarantine: recorded within its window, the revocation's second sweep must reach
    it. After `complete: true`, nothing it was handed may work."""
    from chalicelib.admission import Admission
    from tests.service.security_helpers import SecurityClient
    from tests.service.test_redteam_quarantine import secret_id_alive, unwrap

    stack = warm.stack
    security = SecurityClient(warm, stack.assume("security-team", f"s20-{uuid.uuid4().hex[:6]}"))
    real_look_up = Admission.look_up
    revocation = {}

    def look_up_then_revoke(self, proof_hash):
        found = real_look_up(self, proof_hash)  # the old epoch, read
        if not revocation:
            revocation["thread"] = threading.Thread(target=lambda: revocation.update(body_of(security.post(
                "/v1/revocations", {"principal": BATCH_ROLE_ARN, "reason": "s20 gap", "quarantine": "10m"}))))
            revocation["thread"].start()
            deadline = time.monotonic() + 15
            while quarantine_list(stack).get(BATCH_KEY) is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert quarantine_list(stack).get(BATCH_KEY) is not None, "the revocation placed nothing"
        return found

    monkeypatch.setattr(Admission, "look_up", look_up_then_revoke)
    response = batch_login(warm)
    monkeypatch.undo()
    revocation.pop("thread").join(timeout=60)
    try:
        assert revocation.get("complete") is True, revocation
        # served: the kept read, vouched for by the old epoch (the gap is real, not lost early)
        assert response.status_code == 200, code_of(response)
        doc = body_of(response)
        record = warm.audit.get(doc["request_id"])
        assert unwrap(stack, doc)[0] == 400, "the wrapped secret ID of the gap's login still unwraps"
        assert not secret_id_alive(stack, "batch", record["secret_id_accessor"])
        assert doc["request_id"] in {d["request_id"] for d in revocation["destroyed"]}
        assert code_of(batch_login(warm)) == (403, "quarantined")
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


def test_a_request_id_revocation_of_a_service_account_token_is_seen_by_the_next_warm_login(broker):
    """Another path that places a quarantine: a revocation naming one request ID. For a
    GCP service-account token that names no instance, it quarantines the service
    account, a key every caller of it shares (kept by warm environments)."""
    import os

    from tests.service.security_helpers import SecurityClient

    stack = broker.stack
    audience = os.environ["BROKER_GCP_AUDIENCE"]

    def sa_login():
        jwt = stack.gcp_sa_token(BATCH_SA, audience=audience, claims={"s20": uuid.uuid4().hex})
        return broker.client.http.post("/v1/credentials/gcp", body=json.dumps({"role": "batch", "jwt": jwt}),
                                       headers={"Content-Type": "application/json"})

    first = sa_login()
    assert code_of(first) == (200, None)
    assert code_of(sa_login()) == (200, None)  # the account's keys kept
    security = SecurityClient(broker, stack.assume("security-team", f"s20-{uuid.uuid4().hex[:6]}"))
    revoked = body_of(security.post("/v1/revocations", {"request_id": body_of(first)["request_id"],
                                                        "reason": "s20 leaked token", "quarantine": "10m"}))
    try:
        assert revoked.get("complete") is True, revoked
        assert revoked["quarantine"][0]["target"] == {"principal": BATCH_SA}, revoked["quarantine"]
        assert code_of(sa_login()) == (403, "quarantined")
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")
    assert code_of(sa_login()) == (200, None)


# ---- the memo of spent proofs, across methods -----------------------------------------------------


def test_a_forged_gcp_token_carrying_an_aws_proofs_replay_key_poisons_nothing(broker):
    """The replay key is SHA-256 of the signature, for both methods (of the AWS
    signature's hex text, of the JWT's signature bytes): a forged JWT whose signature is
    an AWS proof's hex signature has that proof's key. Sent first, it is refused by its
    verification and neither the memo nor the replay store learns the key, so the AWS
    proof is still served. Sent after, it is refused as a replay (of the AWS proof's key:
    the message says "this proof was already used")."""
    import base64
    import re

    def b64url(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    login = signed_login(broker.stack.assume("demo-node", broker.web_instance()), "web", broker.server_id)
    headers = json.loads(base64.b64decode(login["iam_request_headers"]))
    signature = re.search(r"Signature=([0-9a-f]{64})", headers["Authorization"][0]).group(1)
    jwt = ".".join([b64url(json.dumps({"alg": "RS256", "kid": "s20-forged", "typ": "JWT"}).encode()),
                    b64url(json.dumps({"iss": "https://accounts.google.com"}).encode()),
                    b64url(signature.encode())])

    def gcp():
        return broker.client.http.post("/v1/credentials/gcp", body=json.dumps({"role": "web", "jwt": jwt}),
                                       headers={"Content-Type": "application/json"})

    assert code_of(gcp()) == (401, "invalid_proof")
    assert code_of(broker.post(login)) == (200, None)
    assert code_of(gcp()) == (401, "proof_replayed")


# ---- a shorter quarantine placed while the longer one is lifted -----------------------------------


def test_a_shorter_quarantine_placed_while_the_longer_one_is_lifted_is_in_force_afterwards(stack, monkeypatch):
    """Revocation A quarantines a role for a day; revocation B (ten minutes) finds A's
    longer entry in place (its transaction refused), and reads the entry in force to
    answer with it. Revocation A is lifted between the two: B must not answer a
    quarantine that nobody holds; B's own entry must be in force."""
    listing = quarantine_list(stack)
    key = quarantine_key("principal", f"arn:aws:iam::{ACCOUNT}:role/s20-lifted-{uuid.uuid4().hex[:6]}")
    listing.place(key, revocation_id="s20-long", until=int(time.time()) + 86400, reason="s20", by="s20")
    real_get = QuarantineList.get

    def lifted_first(self, k):
        if k == key and not getattr(lifted_first, "done", False):
            lifted_first.done = True
            # revocation A lifted, right then: B already holds the key, so it stays quarantined
            assert listing.lift(key, "s20-long") is False
        return real_get(self, k)

    monkeypatch.setattr(QuarantineList, "get", lifted_first)
    entry = listing.place(key, revocation_id="s20-short", until=int(time.time()) + 600, reason="s20", by="s20")
    monkeypatch.undo()
    in_force = listing.get(key)
    try:
        assert in_force is not None, f"the revocation answered {entry} but no entry is in force"
        assert in_force.revocation_id == entry.revocation_id == "s20-short"
    finally:
        if in_force is not None:
            listing.lift(key, in_force.revocation_id)


def test_lifting_a_longer_revocation_keeps_the_shorter_one_still_in_force(proxied, security):
    """Revocation A (1 h) and B (10 min) of one role; lifting A leaves the role quarantined
    by B (and the lift says so), until B is lifted too."""
    arn = f"arn:aws:iam::{ACCOUNT}:role/s20-twice-{uuid.uuid4().hex[:6]}"
    key = quarantine_key("principal", arn)
    revoke = lambda length: body_of(security.post("/v1/revocations", {  # noqa: E731
        "principal": arn, "reason": f"s20 {length}", "quarantine": length, "force": True}))
    longer, shorter = revoke("1h"), revoke("10m")
    assert shorter["quarantine"][0]["revocation_id"] == longer["revocation_id"]  # B answered with A's entry
    lifted = body_of(security.delete(f"/v1/revocations/{longer['revocation_id']}"))
    try:
        assert lifted["lifted"] == [], lifted
        assert [k["revocation_id"] for k in lifted["still_quarantined"]] == [shorter["revocation_id"]], lifted
        entry = quarantine_list(proxied.stack).get(key)
        assert entry is not None, "B (10m, never lifted) no longer holds"
        assert entry.revocation_id == shorter["revocation_id"] and entry.until <= time.time() + 600 + 5
        freed = body_of(security.delete(f"/v1/revocations/{shorter['revocation_id']}"))
        assert freed["lifted"] and freed["still_quarantined"] == [], freed
        assert quarantine_list(proxied.stack).get(key) is None
    finally:
        security.delete(f"/v1/revocations/{shorter['revocation_id']}")
        entry = quarantine_list(proxied.stack).get(key)
        if entry is not None:
            quarantine_list(proxied.stack).lift(key, entry.revocation_id)


# ---- a second account ------------------------------------------------------------------------------


def test_a_role_quarantined_in_one_account_is_seen_there_at_once_and_not_in_the_other(broker):
    """The role `demo-batch` exists in both accounts; both of their keys are kept warm.
    Quarantining the second account's role refuses its sessions at the next login, and
    only them."""
    from devstack.stack import SECOND_ACCOUNT_ID
    from tests.service.security_helpers import fresh_when

    def login(account):
        creds = broker.stack.assume("demo-batch", f"s20-{uuid.uuid4().hex[:8]}", account)
        return code_of(broker.post(signed_login(creds, "batch", broker.server_id, when=fresh_when())))

    # both roles' keys read and kept (the second account's role is not tagged for batch:
    # refused by the rules, after its quarantine keys were found clear)
    assert login(None) == (200, None) and login(SECOND_ACCOUNT_ID) == (403, "not_authorized")
    other = quarantine_key("principal", f"arn:aws:iam::{SECOND_ACCOUNT_ID}:role/demo-batch")
    revocation_id = place(broker.stack, other)
    try:
        assert login(SECOND_ACCOUNT_ID) == (403, "quarantined")
        assert login(None) == (200, None)
    finally:
        quarantine_list(broker.stack).lift(other, revocation_id)
    assert login(SECOND_ACCOUNT_ID) == (403, "not_authorized")


# ---- a second route: one proof, a login and an incident report ------------------------------------


def test_a_proof_spent_on_one_route_is_a_replay_on_the_other_both_ways(broker):
    """The memo and the replay store are shared by logins and the security routes that
    take a login proof (incident reports): a proof spent on one is refused on the other,
    in this process with no call, and a report's proof can't be replayed as a login."""
    instance = broker.web_instance()
    creds = broker.stack.assume("demo-node", instance)
    from tests.service.security_helpers import fresh_when

    spent_login = signed_login(creds, "web", broker.server_id, when=fresh_when())  # a second no other proof uses
    issued = broker.post(spent_login)
    assert code_of(issued) == (200, None)
    request_id = body_of(issued)["request_id"]

    def report(proof):
        return broker.client.http.post("/v1/incidents", headers={"Content-Type": "application/json"},
                                       body=json.dumps(dict(proof, request_id=request_id, reason="s20")))

    login_proof = {k: v for k, v in spent_login.items() if k != "role"}
    assert code_of(report(login_proof)) == (401, "proof_replayed")
    fresh = {k: v for k, v in signed_login(creds, "web", broker.server_id, when=fresh_when()).items() if k != "role"}
    assert code_of(report(fresh)) == (200, None)
    assert code_of(broker.post(dict(fresh, role="web"))) == (401, "proof_replayed")
