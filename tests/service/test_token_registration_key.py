"""POST /v1/tokens by the issuance's registration key, for real against the in-process broker
(moto's DynamoDB, OpenBao): no second cloud proof, and still nobody registers a token under an
issuance that is not theirs, and a registered accessor of somebody else's token is never revoked."""

import hashlib
import json
import secrets
import uuid

import pytest

from tests.service.test_revocation import assert_error, body_of, issue, security, token_status, vault_login  # noqa: F401


def register(broker, request_id, accessor, key, **extra):
    body = dict(request_id=request_id, accessor=accessor, registration_key=key, **extra)
    return broker.client.http.post("/v1/tokens", body=json.dumps(body), headers={"Content-Type": "application/json"})


def registered(broker, request_id):
    from chalicelib.stores.tokens import TokenRegistry

    db = broker.stack.client("dynamodb", broker.stack.admin_keys_for(None))
    return TokenRegistry(db, broker.stack.broker_env()["BROKER_QUARANTINE_TABLE"]).get_many([request_id])


def test_the_answer_carries_a_key_and_the_record_only_its_hash(broker):
    doc = issue(broker, broker.stack.assume("demo-batch", f"key-{uuid.uuid4().hex[:6]}"), "batch")
    key = doc["token_registration_key"]
    record = broker.audit.get(doc["request_id"])
    assert record["registration_key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(record)


def test_a_token_registered_by_key_is_revoked_first_and_forgeries_are_refused(broker, security):  # noqa: F811
    stack = broker.stack
    mine = issue(broker, stack.assume("demo-batch", f"key-{uuid.uuid4().hex[:6]}"), "batch")
    other = issue(broker, stack.assume("demo-batch", f"bystander-{uuid.uuid4().hex[:6]}"), "batch")
    my_auth, other_auth = vault_login(stack, "batch", mine), vault_login(stack, "batch", other)

    # the attacks: no key, a made-up key, and another issuance's (real) key, for my issuance
    made_up = secrets.token_urlsafe(32)
    for key in (made_up, other["token_registration_key"]):
        refused = assert_error(register(broker, mine["request_id"], "forged" + "x" * 18, key), 403, "not_authorized")
        record = broker.audit.get(refused["request_id"])
        assert record["outcome"] == "denied" and record["related_request_id"] == mine["request_id"]
        assert key not in json.dumps(record) and key not in json.dumps(refused)
    # a key with a proof beside it is neither route's body
    assert_error(register(broker, mine["request_id"], my_auth["accessor"], mine["token_registration_key"],
                          iam_http_request_method="POST"), 400, "invalid_request")
    assert registered(broker, mine["request_id"]) == {}  # nothing of the above was kept

    ok = register(broker, mine["request_id"], my_auth["accessor"], mine["token_registration_key"])
    assert ok.status_code == 200, ok.body
    record = broker.audit.get(body_of(ok)["request_id"])
    assert record["outcome"] == "registration" and record["code"] == "token_registered"
    assert record["related_request_id"] == mine["request_id"]
    # somebody else's accessor under my issuance, with my key: kept, but never revoked as mine
    assert register(broker, mine["request_id"], other_auth["accessor"], mine["token_registration_key"]).status_code == 200

    revoked = body_of(security.post("/v1/revocations", {"request_id": mine["request_id"], "reason": "reg by key",
                                                        "quarantine": "0"}))
    tokens = {d["request_id"]: d["tokens"] for d in revoked["destroyed"]}[mine["request_id"]]
    assert tokens == [{"accessor": my_auth["accessor"], "found_by": "registered", "result": "revoked"}]
    assert token_status(stack, my_auth["client_token"]) == 403
    assert token_status(stack, other_auth["client_token"]) == 200  # the bystander's token lives on


def test_a_denied_request_has_no_key_and_registrations_are_bounded(broker):
    stack = broker.stack
    doc = issue(broker, stack.assume("demo-batch", f"bound-{uuid.uuid4().hex[:6]}"), "batch")
    key = doc["token_registration_key"]
    for i in range(4):
        assert register(broker, doc["request_id"], f"acc{i:02d}" + "y" * 18, key).status_code == 200
    assert_error(register(broker, doc["request_id"], "acc99" + "y" * 18, key), 400, "invalid_request")
    # a record that is not an issuance (this refusal's own) takes no key at all
    refused = assert_error(register(broker, doc["request_id"], "acc99" + "y" * 18, key), 400, "invalid_request")
    assert_error(register(broker, refused["request_id"], "z" * 24, key), 403, "not_authorized")


@pytest.mark.parametrize("key", ["short", "a" * 44, "!" * 43, 43])
def test_a_malformed_key_is_refused_before_any_store(broker, key):
    assert_error(register(broker, str(uuid.uuid4()), "x" * 24, key), 400, "invalid_request")
