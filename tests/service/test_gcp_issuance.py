"""The whole GCP path in process: real app, real OpenBao, the simulated Google of the local stack.

Every attack on the token and on the instance claim is tried for real.
"""

import json
import os
import time

import hvac
import pytest

from tests.service.test_aws_issuance import assert_error, body_of, unwrap

WEB_SA = "demo-node@demo-project.iam.gserviceaccount.com"


def post(broker, body, raw=None):
    data = raw if raw is not None else json.dumps(body)
    return broker.client.http.post("/v1/credentials/gcp", body=data, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def audience(broker):
    # The in-process broker's own audience (the environment it was built with): the stack's
    # current one follows the last `chalice local` an earlier module started.
    return os.environ["BROKER_GCP_AUDIENCE"]


def new_instance(broker, name, **kwargs):
    kwargs.setdefault("labels", {"vault-role": "web"})
    kwargs.setdefault("service_account", WEB_SA)
    broker.stack.gcp_create_instance(name, **kwargs)
    return name


def test_gce_instance_gets_web_credentials(broker, audience, capsys):
    stack = broker.stack
    name = new_instance(broker, "web-gce-ok")
    jwt = stack.gcp_instance_token(name, audience=audience)
    response = post(broker, {"role": "web", "jwt": jwt})
    assert response.status_code == 200, response.body
    doc = body_of(response)
    assert doc["secret_id_wrap"]["creation_path"] == "auth/approle/role/web/secret-id"
    role_id = unwrap(stack.vault_addr, doc["role_id_wrap"]["token"])["role_id"]
    secret_id = unwrap(stack.vault_addr, doc["secret_id_wrap"]["token"])["secret_id"]
    client = hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert client.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)["data"]["data"]
    record = broker.audit.get(doc["request_id"])
    assert (record["method"], record["outcome"], record["rule"]) == ("gcp", "issued", "web-gce")
    assert record["principal"] == WEB_SA and record["account"] == "demo-project"
    assert record["facts"]["instance"]["labels"] == {"vault-role": "web"}
    assert record["instance"] == record["facts"]["instance"]["instance_id"]
    out = json.dumps(record) + capsys.readouterr().out
    assert jwt not in out and jwt.split(".")[2] not in out


def test_service_account_token_gets_batch_credentials(broker, audience):
    jwt = broker.stack.gcp_sa_token("batch-runner@demo-project.iam.gserviceaccount.com", audience=audience)
    response = post(broker, {"role": "batch", "jwt": jwt})
    assert response.status_code == 200, response.body
    assert broker.audit.get(body_of(response)["request_id"])["rule"] == "batch-cloud-run"


def test_a_token_is_accepted_once(broker, audience):
    jwt = broker.stack.gcp_instance_token(new_instance(broker, "web-gce-replay"), audience=audience)
    assert post(broker, {"role": "web", "jwt": jwt}).status_code == 200
    assert_error(post(broker, {"role": "web", "jwt": jwt}), 401, "proof_replayed")


# Times in the cases below are taken at collection; forged() shifts them to its own "now".
COLLECTED_AT = int(time.time())


def forged(broker, audience, header=None, claims=None, sign=True):
    now = int(time.time())
    claims = {k: v + now - COLLECTED_AT if k in ("iat", "exp") and isinstance(v, int) else v
              for k, v in (claims or {}).items()}
    base = {"iss": "https://accounts.google.com", "aud": audience, "iat": now, "exp": now + 3600,
            "email": "batch-runner@demo-project.iam.gserviceaccount.com", "email_verified": True, "sub": "1"}
    base.update(claims or {})
    return broker.stack.gcp_forge_token(header or {}, {k: v for k, v in base.items() if v is not None}, sign=sign)


@pytest.mark.parametrize("header, claims, sign, match", [
    ({"alg": "none"}, {}, False, "alg must be RS256"),
    ({"alg": "HS256"}, {}, True, "alg must be RS256"),
    ({"kid": "no-such-key"}, {}, True, "kid is not one of Google's"),
    ({"jku": "http://127.0.0.1:1/keys"}, {}, True, "must not carry jku"),
    ({}, {"aud": "https://another.example"}, True, "audience"),
    ({}, {"iss": "https://evil.example"}, True, "not issued by Google"),
    ({}, {"iat": int(time.time()) - 4000, "exp": int(time.time()) - 400}, True, "expired"),
    ({}, {"iat": int(time.time()) + 900, "exp": int(time.time()) + 4500}, True, "in the future"),
    ({}, {"iat": int(time.time()) - 900, "exp": int(time.time()) + 2700}, True, "older than"),
    ({}, {"email_verified": False}, True, "no verified service account email"),
    # correctly signed, oddly typed: refused by name, never a 500 or an unaudited answer
    ({}, {"google": "x"}, True, "google claim is not an object"),
    ({}, {"email": 5}, True, "email claim is not a string"),
    ({}, {"sub": {}}, True, "sub claim is not a string"),
    ({}, {"email_verified": "true"}, True, "email_verified claim is not a boolean"),
    ({}, {"google": {"compute_engine": "x"}}, True, "compute_engine claim is not an object"),
    ({}, {"google": {"compute_engine": {"project_id": "demo-project", "zone": "us-central1-a",
                                        "instance_id": 5, "instance_name": "x",
                                        "instance_creation_timestamp": 1, "project_number": 1}}}, True,
     "instance_id claim is missing or not a string"),
])
def test_forged_tokens_are_refused_and_audited(broker, audience, header, claims, sign, match):
    doc = assert_error(post(broker, {"role": "batch", "jwt": forged(broker, audience, header, claims, sign)}),
                       401, "invalid_proof", match)
    record = broker.audit.get(doc["request_id"])
    assert record["method"] == "gcp" and record["code"] == "invalid_proof"


def test_an_instance_that_no_longer_exists_is_refused(broker, audience):
    name = new_instance(broker, "web-gce-gone")
    jwt = broker.stack.gcp_instance_token(name, audience=audience)
    broker.stack.gcp_delete_instance(name)
    doc = assert_error(post(broker, {"role": "web", "jwt": jwt}), 403, "not_authorized")
    assert "does not exist" in broker.audit.get(doc["request_id"])["reason"]


def test_a_recreated_instance_is_refused(broker, audience):
    name = new_instance(broker, "web-gce-reborn")
    jwt = broker.stack.gcp_instance_token(name, audience=audience)
    broker.stack.gcp_recreate_instance(name)
    doc = assert_error(post(broker, {"role": "web", "jwt": jwt}), 403, "not_authorized")
    assert "recreated" in broker.audit.get(doc["request_id"])["reason"]


def test_a_stopped_instance_is_refused(broker, audience):
    name = new_instance(broker, "web-gce-stopped")
    jwt = broker.stack.gcp_instance_token(name, audience=audience)
    broker.stack.gcp_set_status(name, "TERMINATED")
    doc = assert_error(post(broker, {"role": "web", "jwt": jwt}), 403, "not_authorized")
    assert "TERMINATED, not running" in broker.audit.get(doc["request_id"])["reason"]


def test_labels_that_do_not_match_are_refused(broker, audience):
    name = new_instance(broker, "web-gce-mislabelled", labels={"vault-role": "batch"})
    doc = assert_error(post(broker, {"role": "web", "jwt": broker.stack.gcp_instance_token(name, audience=audience)}),
                       403, "not_authorized", "'web'")
    assert "label vault-role is 'batch', needs 'web'" in broker.audit.get(doc["request_id"])["reason"]


def test_a_service_account_no_rule_names_is_refused(broker, audience):
    jwt = broker.stack.gcp_sa_token("intruder@demo-project.iam.gserviceaccount.com", audience=audience)
    doc = assert_error(post(broker, {"role": "batch", "jwt": jwt}), 403, "not_authorized")
    assert "matches none of" in broker.audit.get(doc["request_id"])["reason"]


def test_a_project_the_broker_may_not_read_is_refused(broker, audience):
    name = new_instance(broker, "web-elsewhere", project="forbidden-project")
    jwt = broker.stack.gcp_instance_token(name, audience=audience, project="forbidden-project")
    doc = assert_error(post(broker, {"role": "web", "jwt": jwt}), 403, "not_authorized")
    assert "may not read instances of project forbidden-project" in broker.audit.get(doc["request_id"])["reason"]


@pytest.mark.parametrize("which", ["certs", "compute"])
def test_google_down_gives_503_and_nothing_issued(broker, audience, which, fresh_service):
    stack = broker.stack
    name = new_instance(broker, f"web-gce-outage-{which}")
    jwt = stack.gcp_instance_token(name, audience=audience)
    stack.gcp_outage(which, True)
    try:
        response = post(broker, {"role": "web", "jwt": jwt})
        doc = assert_error(response, 503, "unavailable")
        assert "Retry-After" in response.headers
        record = broker.audit.get(doc["request_id"])
        assert record["outcome"] == "error" and not record.get("secret_id_accessor")
    finally:
        stack.gcp_outage(which, False)
    jwt = stack.gcp_instance_token(name, audience=audience)
    assert post(broker, {"role": "web", "jwt": jwt}).status_code == 200


@pytest.mark.parametrize("raw", [b"{}", b'{"role": "web"}', b'{"role": "web", "jwt": 5}', b'{"role": "web", "jwt": "x", "y": 1}'])
def test_malformed_gcp_bodies_get_400(broker, raw):
    assert_error(post(broker, None, raw=raw), 400, "invalid_request")
