"""The whole AWS path in process: real app, real OpenBao, real moto with SigV4 verification.

Each defence of the threat model is tried for real and must be refused; the
happy paths must give credentials that work once and only once.
"""

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import hvac
import pytest

from tests.sigv4 import sign, signed_login, login_body

ERROR_KEYS = {"error", "request_id"}


def body_of(response):
    return json.loads(response.body)


def assert_error(response, status, code, match=None):
    assert response.status_code == status, response.body
    doc = body_of(response)
    assert set(doc) == ERROR_KEYS and set(doc["error"]) == {"code", "message"}
    assert doc["error"]["code"] == code
    if match:
        assert match in doc["error"]["message"]
    return doc


def unwrap(vault_addr, token):
    return hvac.Client(url=vault_addr, token=token).sys.unwrap()["data"]


def test_web_instance_gets_wrapped_credentials_that_work_once(broker, capsys):
    stack = broker.stack
    instance = broker.web_instance()
    response = broker.login_as("demo-node", instance, "web")
    assert response.status_code == 200, response.body
    assert response.headers["Cache-Control"] == "no-store"
    doc = body_of(response)
    assert set(doc) == {"request_id", "role", "vault_addr", "vault_namespace", "role_id_wrap", "secret_id_wrap",
                        "token_registration_key"}
    assert doc["role"] == "web" and doc["vault_addr"] == stack.vault_addr
    assert doc["vault_namespace"] == stack.vault_namespace  # null: the root namespace
    for name, path in (("role_id_wrap", "auth/approle/role/web/role-id"), ("secret_id_wrap", "auth/approle/role/web/secret-id")):
        wrap = doc[name]
        assert set(wrap) == {"token", "accessor", "ttl", "creation_time", "creation_path"}
        assert wrap["creation_path"] == path and wrap["ttl"] == 60
        # Vault itself says where the token was created: not re-wrapped with sys/wrapping/wrap.
        looked_up = stack.vault().write_data("sys/wrapping/lookup", data={"token": wrap["token"]})["data"]
        assert looked_up["creation_path"] == path

    role_id = unwrap(stack.vault_addr, doc["role_id_wrap"]["token"])["role_id"]
    secret = unwrap(stack.vault_addr, doc["secret_id_wrap"]["token"])
    secret_id = secret["secret_id"]
    assert secret["secret_id_accessor"]

    # The secret ID is single-use and short-lived, and carries the request's metadata.
    props = stack.vault().write_data("auth/approle/role/web/secret-id-accessor/lookup",
                                     data={"secret_id_accessor": secret["secret_id_accessor"]})["data"]
    assert props["secret_id_num_uses"] == 1
    assert props["metadata"]["request_id"] == doc["request_id"]
    assert props["metadata"]["instance"] == instance
    expires = datetime.fromisoformat(props["expiration_time"].replace("Z", "+00:00"))
    assert timedelta(seconds=200) < expires - datetime.now(timezone.utc) <= timedelta(seconds=300)

    app_client = hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace)
    app_client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    config = app_client.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)
    assert config["data"]["data"]["api_url"] == "https://web.internal"
    with pytest.raises(hvac.exceptions.VaultError):
        hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace).auth.approle.login(
            role_id=role_id, secret_id=secret_id)

    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "issued" and record["rule"] == "web-nodes" and record["role"] == "web"
    assert record["instance"] == instance
    assert record["principal"] == f"arn:aws:sts::123456789012:assumed-role/demo-node/{instance}"
    assert record["secret_id_accessor"] == secret["secret_id_accessor"]
    assert record["secret_id_wrap_accessor"] == doc["secret_id_wrap"]["accessor"]
    assert record["facts"]["instance"]["tags"] == {"vault-role": "web"}

    # Nothing secret in the audit record or in the logs.
    dumped = json.dumps(record) + capsys.readouterr().out
    for secret_value in (doc["role_id_wrap"]["token"], doc["secret_id_wrap"]["token"], role_id, secret_id):
        assert secret_value not in dumped


def test_batch_session_gets_credentials_by_role_tag(broker):
    response = broker.login_as("demo-batch", "nightly-job-42", "batch")
    assert response.status_code == 200, response.body
    doc = body_of(response)
    assert doc["secret_id_wrap"]["creation_path"] == "auth/approle/role/batch/secret-id"
    assert broker.audit.get(doc["request_id"])["rule"] == "batch-jobs"


def test_a_proof_is_accepted_once(broker):
    creds = broker.stack.assume("demo-batch", "replayed-job")
    body = signed_login(creds, "batch", broker.server_id)
    assert broker.post(body).status_code == 200
    doc = assert_error(broker.post(body), 401, "proof_replayed")
    assert broker.audit.get(doc["request_id"])["code"] == "proof_replayed"


def test_a_refused_proof_is_spent_too(broker):
    creds = broker.stack.assume("demo-batch", "greedy-job")
    first = signed_login(creds, "web", broker.server_id)
    assert_error(broker.post(first), 403, "not_authorized")
    second = dict(first, role="batch")  # the same signed request, another role
    assert_error(broker.post(second), 401, "proof_replayed")


def test_tampered_signature_is_rejected_by_sts(broker):
    creds = broker.stack.assume("demo-batch", "tampered")
    headers = sign(creds, server_id=broker.server_id)
    auth = headers["Authorization"]
    headers["Authorization"] = auth[:-4] + ("0000" if not auth.endswith("0000") else "1111")
    assert_error(broker.post(login_body("batch", headers)), 401, "invalid_proof", "SignatureDoesNotMatch")


def test_signature_with_a_wrong_secret_key_is_rejected(broker):
    creds = dict(broker.stack.assume("demo-batch", "wrong-key"), secret_access_key="guessed")
    assert_error(broker.post(signed_login(creds, "batch", broker.server_id)), 401, "invalid_proof", "STS rejected")


@pytest.mark.parametrize("kwargs, match", [
    ({"server_id": "some-other-service"}, "does not name this broker"),
    ({"sign_server_id": False}, "not in SignedHeaders"),
    ({"body": "Action=GetCallerIdentity&Version=2011-06-15&Action=AssumeRole"}, "exactly Action=GetCallerIdentity"),
    ({"extra_headers": {"X-Amz-Target": "AWSSecurityTokenServiceV20110615.AssumeRole"}}, "not allowed"),
    ({"when": datetime.now(timezone.utc) - timedelta(minutes=10)}, "X-Amz-Date"),
])
def test_forged_proofs_are_refused_and_audited(broker, kwargs, match):
    creds = broker.stack.assume("demo-batch", "forger")
    doc = assert_error(broker.post(signed_login(creds, "batch", kwargs.pop("server_id", broker.server_id), **kwargs)),
                       401, "invalid_proof", match)
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "denied" and record["code"] == "invalid_proof" and match in record["reason"]


def test_a_non_sts_url_is_never_contacted(broker):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    creds = broker.stack.assume("demo-batch", "ssrf")
    for url in (f"http://127.0.0.1:{port}/", f"https://127.0.0.1:{port}/"):
        assert_error(broker.post(signed_login(creds, "batch", broker.server_id, url=url)), 401, "invalid_proof",
                     "not an allowed STS endpoint")
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


def test_a_session_naming_an_instance_that_does_not_carry_its_role_is_refused(broker):
    other = broker.web_instance(profile="demo-other")  # tagged for web, but its profile holds demo-other
    doc = assert_error(broker.login_as("demo-node", other, "web"), 403, "not_authorized")
    assert "instance" not in doc["error"]["message"]  # the caller learns which role, not which condition
    record = broker.audit.get(doc["request_id"])
    assert "instance profile does not hold role demo-node" in record["reason"]


def test_a_session_naming_an_instance_that_does_not_exist_is_refused_even_for_roles_without_instances(broker):
    # demo-batch needs no instance, but a session that claims one must prove it.
    doc = assert_error(broker.login_as("demo-batch", "i-0123456789abcdef0", "batch"), 403, "not_authorized")
    assert "does not exist" in broker.audit.get(doc["request_id"])["reason"]


def test_a_stopped_instance_is_refused(broker):
    instance = broker.web_instance()
    broker.stack.stop_instance(instance)
    doc = assert_error(broker.login_as("demo-node", instance, "web"), 403, "not_authorized", "'web'")
    assert "stopped, not running" in broker.audit.get(doc["request_id"])["reason"]


def test_an_instance_tagged_for_another_role_is_refused(broker):
    instance = broker.web_instance({"vault-role": "batch"})
    doc = assert_error(broker.login_as("demo-node", instance, "web"), 403, "not_authorized")
    assert "instance tag vault-role is 'batch', needs 'web'" in broker.audit.get(doc["request_id"])["reason"]


def test_a_session_that_is_not_an_instance_cannot_get_an_instance_role(broker):
    doc = assert_error(broker.login_as("demo-node", "laptop-session", "web"), 403, "not_authorized")
    assert "not a verified running EC2 instance" in broker.audit.get(doc["request_id"])["reason"]


def test_an_unknown_role_is_refused(broker):
    doc = assert_error(broker.login_as("demo-batch", "job", "root"), 403, "not_authorized", "'root'")
    assert broker.audit.get(doc["request_id"])["reason"] == "no rule grants role 'root'"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"role": "web"}', b"{" * 100000,
                                 json.dumps({"role": "web", "x": "y" * 70000}).encode()])
def test_malformed_and_oversized_bodies_get_400(broker, raw):
    assert_error(broker.post(None, raw=raw), 400, "invalid_request")


def test_non_json_content_type_still_gets_the_json_error_shape(broker):
    assert_error(broker.post(None, raw=b"role=web", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 400, "invalid_request")


def test_health_is_ok(broker):
    response = broker.client.http.get("/v1/health")
    assert response.status_code == 200
    assert body_of(response) == {"status": "ok", "checks": {"vault": "ok", "audit_store": "ok"}}


def test_vault_sealed_gives_503_with_an_error_record_and_recovers(broker):
    stack = broker.stack
    stack.seal_vault()
    try:
        response = broker.login_as("demo-batch", "during-seal", "batch")
        doc = assert_error(response, 503, "unavailable")
        assert int(response.headers["Retry-After"]) > 0
        record = broker.audit.get(doc["request_id"])
        assert record["outcome"] == "error" and "sealed" in record["reason"]
        health = broker.client.http.get("/v1/health")
        assert health.status_code == 503 and body_of(health)["checks"]["vault"] == "sealed"
    finally:
        stack.unseal_vault()
    assert broker.login_as("demo-batch", "after-seal", "batch").status_code == 200


def test_vault_down_gives_503_and_recovers_when_it_is_back(broker):
    stack = broker.stack
    stack.stop_vault()
    try:
        started = time.monotonic()
        response = broker.login_as("demo-batch", "during-outage", "batch")
        assert time.monotonic() - started < 15
        doc = assert_error(response, 503, "unavailable")
        assert "Retry-After" in response.headers
        assert broker.audit.get(doc["request_id"])["outcome"] == "error"
    finally:
        stack.start_vault()
    # The broker's cached token died with the dev server: it must log in again by itself.
    assert broker.login_as("demo-batch", "after-outage", "batch").status_code == 200, "broker did not recover"


def _live_secret_ids(stack, role):
    try:
        return set(stack.vault().list(f"auth/approle/role/{role}/secret-id")["data"]["keys"])
    except (TypeError, KeyError):
        return set()


def test_audit_store_unavailable_means_nothing_is_issued(broker, fresh_service):
    from tests.service.conftest import use_environment

    restore = use_environment({"BROKER_AUDIT_TABLE": "secret-zero-audit-missing"})
    try:
        before = _live_secret_ids(broker.stack, "batch")
        response = broker.login_as("demo-batch", "no-audit", "batch")
        assert_error(response, 503, "unavailable", "audit store")
        assert "Retry-After" in response.headers
        # The secret ID minted before the audit write failed was destroyed.
        assert _live_secret_ids(broker.stack, "batch") - before == set()
    finally:
        restore()


def test_a_failed_secret_id_revokes_the_role_id_already_wrapped(broker):
    vault = broker.stack.vault()
    policy = vault.sys.read_policy("secret-zero-broker")["data"]["rules"]
    crippled = policy.replace('path "auth/approle/role/batch/secret-id" {', 'path "auth/approle/role/batch/secret-id-disabled" {')
    assert crippled != policy
    vault.sys.create_or_update_policy("secret-zero-broker", crippled)
    try:
        doc = assert_error(broker.login_as("demo-batch", "half-issued", "batch"), 503, "unavailable")
    finally:
        vault.sys.create_or_update_policy("secret-zero-broker", policy)
    reason = broker.audit.get(doc["request_id"])["reason"]
    assert "permission denied" in reason and "was revoked" in reason
    accessor = reason.split("(accessor ")[1].split(")")[0]
    with pytest.raises(hvac.exceptions.VaultError):
        vault.auth.token.lookup_accessor(accessor)


def test_a_failed_role_id_read_destroys_the_secret_id_minted_beside_it(broker):
    vault = broker.stack.vault()
    policy = vault.sys.read_policy("secret-zero-broker")["data"]["rules"]
    crippled = policy.replace('path "auth/approle/role/batch/role-id" {', 'path "auth/approle/role/batch/role-id-disabled" {')
    assert crippled != policy
    before = _live_secret_ids(broker.stack, "batch")
    vault.sys.create_or_update_policy("secret-zero-broker", crippled)
    try:
        doc = assert_error(broker.login_as("demo-batch", "half-issued-2", "batch"), 503, "unavailable")
    finally:
        vault.sys.create_or_update_policy("secret-zero-broker", policy)
    assert "was destroyed" in broker.audit.get(doc["request_id"])["reason"]
    assert _live_secret_ids(broker.stack, "batch") - before == set()
