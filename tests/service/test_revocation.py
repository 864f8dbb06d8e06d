"""Revocation, quarantine, interception reports and the Vault audit-log correlation, for
real: secret IDs issued by the in-process broker from the real OpenBao, destroyed by the
broker, then tried against OpenBao."""

import json
import uuid

import hvac
import pytest
import requests

from tests.service.security_helpers import RevocationInFlight, SecurityClient, fresh_when, proof_fields
from tests.sigv4 import signed_login

ACCOUNT = "123456789012"


def body_of(response):
    return json.loads(response.body)


@pytest.fixture(scope="module")
def security(broker):
    return SecurityClient(broker, broker.stack.assume("security-team", f"bob-{uuid.uuid4().hex[:6]}"))


def issue(broker, creds, role):
    """Credentials for `role`, as the in-process broker answers them (200 asserted)."""
    response = broker.post(signed_login(creds, role, broker.server_id, when=fresh_when()))
    assert response.status_code == 200, response.body
    return body_of(response)


def unwrap_secret_id(stack, doc):
    data = hvac.Client(url=stack.vault_addr, token=doc["secret_id_wrap"]["token"]).sys.unwrap()["data"]
    return data["secret_id"]


def unwrap_status(stack, doc, which="secret_id_wrap"):
    return requests.post(f"{stack.vault_addr}/v1/sys/wrapping/unwrap", timeout=10,
                         headers={"X-Vault-Token": doc[which]["token"]}).status_code


def approle_login(stack, role, secret_id):
    """The HTTP status of an AppRole login with the seeded role ID and this secret ID."""
    response = requests.post(f"{stack.vault_addr}/v1/auth/approle/login", headers=stack.vault_headers(),
                             json={"role_id": stack.vault_seed.role_ids[role], "secret_id": secret_id}, timeout=10)
    return response.status_code


def assert_error(response, status, code):
    assert response.status_code == status, response.body
    doc = body_of(response)
    assert doc["error"]["code"] == code
    return doc


# ---- revocation ------------------------------------------------------------------------------


def test_revoking_an_instance_destroys_its_secret_ids_and_quarantines_it_until_lifted(broker, security):
    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    used, wrapped = issue(broker, creds, "web"), issue(broker, creds, "web")
    secret_id = unwrap_secret_id(stack, used)  # unwrapped already (an Agent would hold it in a file)

    response = security.post("/v1/revocations", {"instance": instance, "reason": "IDS alert 4711",
                                                 "quarantine": "1h"})
    assert response.status_code == 200, response.body
    doc = body_of(response)
    assert doc["complete"] is True and doc["target"] == {"instance": instance}
    results = {d["request_id"]: d["result"] for d in doc["destroyed"]}
    assert results == {used["request_id"]: "destroyed", wrapped["request_id"]: "destroyed"}
    assert doc["quarantine"][0]["target"] == {"instance": instance}
    assert doc["quarantine"][0]["revocation_id"] == doc["revocation_id"]

    # The unwrapped secret ID logs in no more, and the one still wrapped can't even be unwrapped.
    assert approle_login(stack, "web", secret_id) == 400
    assert unwrap_status(stack, wrapped) == 400
    entries = {d["request_id"]: d for d in doc["destroyed"]}
    assert entries[wrapped["request_id"]]["wrapping_tokens"] == {"role_id": "revoked", "secret_id": "revoked"}
    assert entries[used["request_id"]]["wrapping_tokens"] == {"role_id": "revoked", "secret_id": "used or expired"}

    # The instance is refused before anything is minted, and that is on the record.
    refused = assert_error(broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())),
                           403, "quarantined")
    assert "quarantined by the security team until" in refused["error"]["message"]
    record = broker.audit.get(refused["request_id"])
    assert record["outcome"] == "denied" and record["code"] == "quarantined" and record["instance"] == instance
    assert doc["revocation_id"] in record["reason"] and "secret_id_accessor" not in record

    revocation = broker.audit.get(doc["request_id"])
    assert revocation["outcome"] == "admin" and revocation["action"] == "revoke"
    assert revocation["revocation_id"] == doc["revocation_id"] and revocation["reason"] == "IDS alert 4711"
    assert {d["request_id"] for d in revocation["destroyed"]} == set(results)

    lifted = security.delete(f"/v1/revocations/{doc['revocation_id']}", {"reason": "reimaged"})
    assert lifted.status_code == 200, lifted.body
    assert body_of(lifted)["lifted"] == [{"instance": instance}]
    assert broker.audit.get(body_of(lifted)["request_id"])["action"] == "lift"
    issue(broker, creds, "web")  # accepted again
    again = security.delete(f"/v1/revocations/{doc['revocation_id']}")  # idempotent
    assert again.status_code == 200 and body_of(again)["lifted"] == []


def test_revoking_a_principal_session_and_by_request_id(broker, security):
    stack = broker.stack
    session = f"nightly-{uuid.uuid4().hex[:6]}"
    creds = stack.assume("demo-batch", session)
    first, second = issue(broker, creds, "batch"), issue(broker, creds, "batch")
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-batch/{session}"

    by_id = body_of(security.post("/v1/revocations", {"request_id": first["request_id"], "reason": "leaked log",
                                                      "quarantine": "0"}))
    assert [(d["request_id"], d["result"]) for d in by_id["destroyed"]] == [(first["request_id"], "destroyed")]
    assert by_id["quarantine"] == []
    assert unwrap_status(stack, first) == 400  # its wrapping token is revoked

    by_principal = body_of(security.post("/v1/revocations", {"principal": arn, "reason": "compromised job",
                                                             "quarantine": "30m"}))
    results = {d["request_id"]: d["result"] for d in by_principal["destroyed"]}
    assert results == {first["request_id"]: "gone", second["request_id"]: "destroyed"}
    assert unwrap_status(stack, second) == 400
    try:
        assert_error(broker.post(signed_login(creds, "batch", broker.server_id, when=fresh_when())), 403, "quarantined")
        # another session of the same role is not this principal
        issue(broker, stack.assume("demo-batch", f"other-{uuid.uuid4().hex[:6]}"), "batch")
    finally:
        security.delete(f"/v1/revocations/{by_principal['revocation_id']}")
    issue(broker, creds, "batch")


def test_quarantining_a_role_arn_refuses_every_session_of_the_role(broker, security):
    stack = broker.stack
    doc = body_of(security.post("/v1/revocations", {"principal": f"arn:aws:iam::{ACCOUNT}:role/demo-batch",
                                                    "reason": "role credentials leaked", "quarantine": "10m"}))
    try:
        assert doc["quarantine"][0]["target"] == {"principal": f"arn:aws:iam::{ACCOUNT}:role/demo-batch"}
        creds = stack.assume("demo-batch", f"any-{uuid.uuid4().hex[:6]}")
        assert_error(broker.post(signed_login(creds, "batch", broker.server_id, when=fresh_when())), 403, "quarantined")
    finally:
        assert security.delete(f"/v1/revocations/{doc['revocation_id']}").status_code == 200
    issue(broker, stack.assume("demo-batch", f"after-{uuid.uuid4().hex[:6]}"), "batch")


@pytest.mark.parametrize("body, status", [
    ({"reason": "no target"}, 400),
    ({"instance": "i-0123456789abcdef0", "principal": "arn:aws:iam::123456789012:role/x", "reason": "two"}, 400),
    ({"instance": "i-0123456789abcdef0"}, 400),
    ({"instance": "i-0123456789abcdef0", "reason": "x", "quarantine": "forever"}, 400),
    ({"instance": "i-0123456789abcdef0", "reason": "x", "quarantine": "400d"}, 400),
    ({"instance": "i-0123456789abcdef0", "reason": "x", "colour": "red"}, 400),
    ({"instance": "not an instance", "reason": "x"}, 400),
    ({"request_id": "5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d", "reason": "unknown"}, 404),
])
def test_bad_revocations(security, body, status):
    response = security.post("/v1/revocations", body)
    assert response.status_code == status, response.body


def test_lifting_an_unknown_revocation_is_404(security):
    assert security.delete(f"/v1/revocations/{uuid.uuid4()}").status_code == 404
    assert security.delete("/v1/revocations/nope").status_code == 400


# ---- interception reports ----------------------------------------------------------------------


def report(broker, creds, request_id, **extra):
    body = dict(proof_fields(creds, broker.server_id), request_id=request_id, **extra)
    return broker.client.http.post("/v1/incidents", body=json.dumps(body), headers={"Content-Type": "application/json"})


def test_an_interception_report_destroys_the_secret_id_the_thief_took(broker):
    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    doc = issue(broker, creds, "web")
    stolen = unwrap_secret_id(stack, doc)  # somebody got to the wrapping token first

    response = report(broker, creds, doc["request_id"], reason="wrapping token already used",
                      accessor=doc["secret_id_wrap"]["accessor"])
    assert response.status_code == 200, response.body
    answer = body_of(response)
    assert answer["secret_id"] == "destroyed" and answer["related_request_id"] == doc["request_id"]
    assert approle_login(stack, "web", stolen) == 400  # the thief's secret ID is dead

    record = broker.audit.get(answer["request_id"])
    assert record["outcome"] == "incident" and record["related_request_id"] == doc["request_id"]
    assert record["instance"] == instance and record["role"] == "web"
    assert doc["secret_id_wrap"]["accessor"] in record["reason"]
    assert stolen not in json.dumps(record)


def test_nobody_else_can_report_an_issuance(broker):
    stack = broker.stack
    victim = stack.assume("demo-batch", f"victim-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, victim, "batch")
    other = stack.assume("demo-batch", f"mallory-{uuid.uuid4().hex[:6]}")
    refused = assert_error(report(broker, other, doc["request_id"]), 403, "not_authorized")
    assert "issued to" in broker.audit.get(refused["request_id"])["reason"]
    assert approle_login(stack, "batch", unwrap_secret_id(stack, doc)) == 200  # untouched
    unknown = assert_error(report(broker, other, str(uuid.uuid4())), 403, "not_authorized")
    assert broker.audit.get(unknown["request_id"])["outcome"] == "denied"


def test_incident_reports_are_rate_limited_per_caller(broker):
    from chalicelib.security import INCIDENT_LIMIT

    creds = broker.stack.assume("demo-batch", f"noisy-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    results = [report(broker, creds, doc["request_id"]) for _ in range(INCIDENT_LIMIT)]
    assert [r.status_code for r in results] == [200] * INCIDENT_LIMIT
    assert [body_of(r)["secret_id"] for r in results] == ["destroyed"] + ["gone"] * (INCIDENT_LIMIT - 1)
    limited = report(broker, creds, doc["request_id"])
    assert_error(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    # another caller is not limited by this one
    other = broker.stack.assume("demo-batch", f"quiet-{uuid.uuid4().hex[:6]}")
    assert report(broker, other, issue(broker, other, "batch")["request_id"]).status_code == 200


@pytest.mark.parametrize("body", [b"", b"[]", b'{"request_id": "x"}', b'{"reason": "no id"}',
                                  json.dumps({"request_id": str(uuid.uuid4()), "jwt": "a.b.c", "x": 1}).encode()])
def test_malformed_reports_are_400(broker, body):
    response = broker.client.http.post("/v1/incidents", body=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


# ---- Vault's audit log ---------------------------------------------------------------------------


def test_audit_show_gives_the_hmacs_that_find_an_issuance_in_vaults_audit_log(broker, security):
    stack = broker.stack
    creds = stack.assume("demo-batch", f"traced-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    # Nothing is hashed on the issuance's path: the stored record has the accessors only.
    assert "vault_audit_hmacs" not in broker.audit.get(doc["request_id"])
    shown = security.get(f"/v1/audit/events/{doc['request_id']}")
    assert shown.status_code == 200, shown.body
    record = body_of(shown)["event"]
    hmacs = record["vault_audit_hmacs"]
    assert set(hmacs) == {"role_id_wrap_accessor", "secret_id_wrap_accessor", "secret_id_accessor"}
    for name, value in hmacs.items():
        assert value.startswith("hmac-sha256:")
        assert value == stack.vault().write_data("sys/audit-hash/file", data={"input": record[name]})["data"]["hash"]

    def log_lines():
        return [json.loads(line) for line in stack.openbao.audit_log_path.read_text().splitlines()]

    # The wrapping tokens' HMACs are not stored anywhere: the creation's response line, found
    # by the accessor's HMAC, carries them (as docs/audit.md shows with jq).
    created = [e for e in log_lines() if e["type"] == "response"
               and (e["response"].get("wrap_info") or {}).get("accessor") == hmacs["secret_id_wrap_accessor"]]
    assert [e["request"]["path"] for e in created] == ["auth/approle/role/batch/secret-id"]
    token_hmac = created[0]["response"]["wrap_info"]["token"]
    assert token_hmac == stack.vault().write_data(
        "sys/audit-hash/file", data={"input": doc["secret_id_wrap"]["token"]})["data"]["hash"]
    hmacs = dict(hmacs, secret_id_wrap_token=token_hmac)

    # The client unwraps and logs in, as it would at boot.
    client = hvac.Client(url=stack.vault_addr, token=doc["secret_id_wrap"]["token"])
    secret = client.sys.unwrap()["data"]
    assert approle_login(stack, "batch", secret["secret_id"]) == 200

    lines = [json.loads(line) for line in stack.openbao.audit_log_path.read_text().splitlines()]

    def where(value):
        return [(entry["type"], entry["request"].get("path")) for entry in lines if value in json.dumps(entry)]

    # the creation of the wrapped secret ID, and its unwrapping (which returns the secret ID accessor)
    assert ("response", "auth/approle/role/batch/secret-id") in where(hmacs["secret_id_wrap_accessor"])
    assert ("response", "sys/wrapping/unwrap") in where(hmacs["secret_id_accessor"])
    # the unwrap by its token and its accessor; a second unwrap fails and is found by the token's HMAC
    again = requests.post(f"{stack.vault_addr}/v1/sys/wrapping/unwrap", timeout=10,
                          headers={"X-Vault-Token": doc["secret_id_wrap"]["token"]})
    assert again.status_code == 400
    lines = [json.loads(line) for line in stack.openbao.audit_log_path.read_text().splitlines()]
    unwraps = [e for e in lines if e["request"].get("path") == "sys/wrapping/unwrap"
               and e["request"].get("client_token") == hmacs["secret_id_wrap_token"]]
    assert [(e["type"], bool(e.get("error"))) for e in unwraps] == [
        ("request", False), ("response", False), ("request", True)]  # a refused unwrap logs its request only
    assert unwraps[0]["request"]["client_token_accessor"] == hmacs["secret_id_wrap_accessor"]
    # the login made with the secret ID names the broker's request ID in its metadata, in clear
    logins = [e for e in lines if e["type"] == "response" and e["request"].get("path") == "auth/approle/login"
              and (e.get("auth") or {}).get("metadata", {}).get("request_id") == doc["request_id"]]
    assert len(logins) == 1


# ---- GCP ----------------------------------------------------------------------------------------------


def test_gce_instances_report_incidents_and_are_quarantined_by_instance(broker, security):
    """On GCP the principal (a service account) is shared by many instances: the instance in
    the token must match too, and a quarantine of the instance leaves its siblings alone."""
    stack = broker.stack
    audience = stack.broker_env()["BROKER_GCP_AUDIENCE"]
    uid = uuid.uuid4().hex[:6]
    names = [f"web-sec-{uid}-{n}" for n in (1, 2)]
    for name in names:
        stack.gcp_create_instance(name, labels={"vault-role": "web"},
                                  service_account="demo-node@demo-project.iam.gserviceaccount.com")

    def gcp_post(path, body):
        return broker.client.http.post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})

    def login(name):
        return gcp_post("/v1/credentials/gcp", {"role": "web", "jwt": stack.gcp_instance_token(name, audience=audience)})

    issued = login(names[0])
    assert issued.status_code == 200, issued.body
    doc = body_of(issued)
    stolen = unwrap_secret_id(stack, doc)
    # the sibling instance (same service account) cannot report it
    sibling = gcp_post("/v1/incidents", {"request_id": doc["request_id"],
                                         "jwt": stack.gcp_instance_token(names[1], audience=audience)})
    assert_error(sibling, 403, "not_authorized")
    reported = gcp_post("/v1/incidents", {"request_id": doc["request_id"], "reason": "already unwrapped",
                                          "jwt": stack.gcp_instance_token(names[0], audience=audience)})
    assert reported.status_code == 200, reported.body
    assert body_of(reported)["secret_id"] == "destroyed"
    assert approle_login(stack, "web", stolen) == 400
    instance_id = broker.audit.get(doc["request_id"])["instance"]
    record = broker.audit.get(body_of(reported)["request_id"])
    assert (record["method"], record["outcome"], record["instance"]) == ("gcp", "incident", instance_id)

    revoked = body_of(security.post("/v1/revocations", {"instance": instance_id, "reason": "GCE alert",
                                                        "quarantine": "10m"}))
    try:
        assert_error(login(names[0]), 403, "quarantined")
        assert login(names[1]).status_code == 200  # the sibling is not quarantined
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")
    assert login(names[0]).status_code == 200



# ---- tokens, and issuances in flight -------------------------------------------------------------


def vault_login(stack, role, doc):
    """Unwrap and log in as the machine would: its Vault token (a secret: kept, never printed)."""
    response = requests.post(f"{stack.vault_addr}/v1/auth/approle/login", timeout=10, headers=stack.vault_headers(),
                             json={"role_id": stack.vault_seed.role_ids[role], "secret_id": unwrap_secret_id(stack, doc)})
    assert response.status_code == 200, response.text
    return response.json()["auth"]


def token_status(stack, token):
    return requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self", timeout=10,
                        headers=stack.vault_headers(token)).status_code


def test_a_revocation_revokes_the_tokens_logged_in_with_its_secret_ids(broker, security):
    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    doc = issue(broker, creds, "web")
    auth = vault_login(stack, "web", doc)
    assert auth["metadata"]["request_id"] == doc["request_id"]  # AppRole copied the secret ID's metadata
    kv = requests.get(f"{stack.vault_addr}/v1/secret/data/web/config",
                      headers=stack.vault_headers(auth["client_token"]), timeout=10)
    assert kv.status_code == 200

    revoked = body_of(security.post("/v1/revocations", {"instance": instance, "reason": "IDS", "quarantine": "1h"}))
    try:
        assert revoked["complete"] is True
        entry = {d["request_id"]: d for d in revoked["destroyed"]}[doc["request_id"]]
        assert entry["result"] == "gone"  # used by the login
        assert entry["tokens"] == [{"accessor": auth["accessor"], "found_by": "scan", "result": "revoked"}]
        assert token_status(stack, auth["client_token"]) == 403
        assert requests.get(f"{stack.vault_addr}/v1/secret/data/web/config", timeout=10,
                            headers=stack.vault_headers(auth["client_token"])).status_code == 403
        renewed = requests.post(f"{stack.vault_addr}/v1/auth/token/renew-self", timeout=10,
                                headers=stack.vault_headers(auth["client_token"]))
        assert renewed.status_code == 403
        assert auth["client_token"] not in json.dumps(revoked)
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")


def test_an_issuance_recorded_outside_its_window_takes_itself_back(broker, monkeypatch):
    """A revocation's second sweep stands in for a re-read of the quarantine only if every
    issuance is recorded within its window of the quarantine reads it relied on: one that
    is not (a stalled Lambda, a slow audit write) reads its quarantine keys again after its
    record is written. Quarantined meanwhile: it answers 403, its secret ID is destroyed,
    its wrapping tokens are dead, and both records say so. Clear: it is served."""
    import time

    import app as broker_app
    from chalicelib.stores.quarantine import QuarantineList, quarantine_key
    from devstack import aws as stack_aws

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    service = broker_app.get_service()
    quarantine = QuarantineList(stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE)
    key = quarantine_key("instance", instance)
    minted = []
    real_issue = service._minter.issue
    stalled = {"by": 0.0, "quarantine": True}

    def issue_then_stall(*args, **kwargs):
        result = real_issue(*args, **kwargs)
        minted.append(result)
        stalled["by"] = service.settings.issuance_window_seconds + 1  # as if the process had stalled here
        if stalled["quarantine"]:  # and a revocation had landed meanwhile
            quarantine.place(key, revocation_id=str(uuid.uuid4()), until=int(time.time()) + 600,
                             reason="stalled", by="test")
        return result

    monkeypatch.setattr(service._minter, "issue", issue_then_stall)
    monkeypatch.setattr(service, "_monotonic", lambda: time.monotonic() + stalled["by"])
    try:
        refused = assert_error(broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())),
                               403, "quarantined")
    finally:
        quarantine.lift(key, quarantine.get(key).revocation_id)
    follow = broker.audit.get(refused["request_id"])
    assert follow["action"] == "take_back" and follow["code"] == "quarantined"
    original = broker.audit.get(follow["related_request_id"])
    assert original["outcome"] == "issued" and original["instance"] == instance
    assert f"issuance {original['request_id']} taken back" in follow["reason"]
    assert "over its window" in follow["reason"]
    # In OpenBao: the secret ID is gone, and so are both wrapping tokens.
    looked = requests.post(f"{stack.vault_addr}/v1/auth/approle/role/web/secret-id-accessor/lookup",
                           json={"secret_id_accessor": minted[0].secret_id_accessor},
                           headers={"X-Vault-Token": "root"}, timeout=10)
    assert looked.status_code in (400, 404), looked.status_code
    for wrap in (minted[0].role_id_wrap, minted[0].secret_id_wrap):
        assert requests.post(f"{stack.vault_addr}/v1/sys/wrapping/unwrap", timeout=10,
                             headers={"X-Vault-Token": wrap.token}).status_code == 400
    # stalled as long, not quarantined: the keys read again are clear, it is served
    stalled.update(by=0.0, quarantine=False)
    assert broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())).status_code == 200
    monkeypatch.undo()
    # within its window the same instance is served again
    assert broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())).status_code == 200


def test_an_issuance_in_flight_when_a_revocation_lands_is_reached_by_its_second_sweep(broker, security,
                                                                                     monkeypatch):
    """The quarantine lands after this issuance was admitted and before its record is
    written; the issuance answers 200 within its window, and the revocation's second sweep
    (settle seconds after the quarantine) destroys what it was given."""
    import app as broker_app
    from chalicelib.stores.quarantine import QuarantineList, quarantine_key
    from devstack import aws as stack_aws

    stack = broker.stack
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    first = issue(broker, creds, "web")  # the instance has a record: no --force needed
    quarantine = QuarantineList(stack.client("dynamodb"), stack_aws.QUARANTINE_TABLE)
    key = quarantine_key("instance", instance)
    in_flight = RevocationInFlight(monkeypatch, broker_app.get_service(), security,
                                   {"instance": instance, "reason": "in flight", "quarantine": "1h"},
                                   placed=lambda: quarantine.get(key) is not None, after_first_pass=True)
    response = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
    revocation = in_flight.wait()
    try:
        assert response.status_code == 200  # recorded within its window: the sweep will reach it
        doc = body_of(response)
        assert revocation["complete"] is True, revocation["problems"]
        reached = {d["request_id"]: d for d in revocation["destroyed"]}
        assert reached[first["request_id"]]["found_by"] == "first pass"
        assert reached[doc["request_id"]]["found_by"] == "sweep"
        assert reached[doc["request_id"]]["result"] == "destroyed"
        assert unwrap_status(stack, doc) == 400
        assert unwrap_status(stack, doc, "role_id_wrap") == 400
        # and nothing new for the instance while it is quarantined
        assert_error(broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when())), 403, "quarantined")
    finally:
        security.delete(f"/v1/revocations/{revocation['revocation_id']}")


# ---- targets: canonical spellings, unknown targets, a GCE instance's service account --------------


def test_a_role_named_in_another_case_is_the_same_role(broker, security):
    stack = broker.stack
    creds = stack.assume("demo-batch", f"case-{uuid.uuid4().hex[:6]}")
    doc = issue(broker, creds, "batch")
    revoked = security.post("/v1/revocations", {"principal": f"arn:aws:iam::{ACCOUNT}:role/Demo-Batch",
                                                "reason": "case test", "quarantine": "10m"})
    assert revoked.status_code == 200, revoked.body
    answer = body_of(revoked)
    try:
        assert answer["target"] == {"principal": f"arn:aws:iam::{ACCOUNT}:role/demo-batch"}  # IAM's spelling
        assert doc["request_id"] in {d["request_id"] for d in answer["destroyed"]}
        assert_error(broker.post(signed_login(creds, "batch", broker.server_id, when=fresh_when())), 403, "quarantined")
    finally:
        security.delete(f"/v1/revocations/{answer['revocation_id']}")


@pytest.mark.parametrize("target", [
    {"principal": f"arn:aws:iam::{ACCOUNT}:role/no-such-role"},
    {"principal": f"arn:aws:sts::{ACCOUNT}:assumed-role/no-such-role/s1"},
    {"principal": "nobody@demo-project.iam.gserviceaccount.com"},
    {"instance": "i-0abcdef0123456789"},
])
def test_a_target_matching_nothing_is_refused_unless_forced(security, target):
    refused = security.post("/v1/revocations", dict(target, reason="typo?"))
    assert_error(refused, 404, "not_found")
    assert "force" in body_of(refused)["error"]["message"]
    forced = security.post("/v1/revocations", dict(target, reason="preventive", quarantine="1m", force=True))
    assert forced.status_code == 200, forced.body
    assert body_of(forced)["destroyed"] == []
    security.delete(f"/v1/revocations/{body_of(forced)['revocation_id']}")


def test_quarantining_a_gce_instance_refuses_its_service_accounts_instanceless_tokens(broker, security):
    stack = broker.stack
    audience = stack.broker_env()["BROKER_GCP_AUDIENCE"]
    sa = "demo-node@demo-project.iam.gserviceaccount.com"
    name = f"web-sa-{uuid.uuid4().hex[:6]}"
    stack.gcp_create_instance(name, labels={"vault-role": "web"}, service_account=sa)

    def gcp_post(jwt):
        return broker.client.http.post("/v1/credentials/gcp", body=json.dumps({"role": "web", "jwt": jwt}),
                                       headers={"Content-Type": "application/json"})

    issued = gcp_post(stack.gcp_instance_token(name, audience=audience))
    assert issued.status_code == 200, issued.body
    instance_id = broker.audit.get(body_of(issued)["request_id"])["instance"]
    # Before: the service account's instance-less token is refused by the rules only.
    assert_error(gcp_post(stack.gcp_sa_token(sa, audience=audience)), 403, "not_authorized")

    revoked = body_of(security.post("/v1/revocations", {"instance": instance_id, "reason": "GCE compromise",
                                                        "quarantine": "10m"}))
    try:
        targets = [q["target"] for q in revoked["quarantine"]]
        assert targets == [{"instance": instance_id}, {"instanceless": sa}]
        assert any(sa in note and "metadata server" in note for note in revoked["covers"])
        refused = assert_error(gcp_post(stack.gcp_sa_token(sa, audience=audience)), 403, "quarantined")
        assert "instanceless" in broker.audit.get(refused["request_id"])["reason"]
    finally:
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")


# ---- registered tokens ------------------------------------------------------------------------------


def register(broker, creds, request_id, accessor):
    body = dict(proof_fields(creds, broker.server_id), request_id=request_id, accessor=accessor)
    return broker.client.http.post("/v1/tokens", body=json.dumps(body), headers={"Content-Type": "application/json"})


def test_a_registered_token_is_revoked_first_and_a_borrowed_accessor_is_ignored(broker, security):
    stack = broker.stack
    creds = stack.assume("demo-batch", f"reg-{uuid.uuid4().hex[:6]}")
    mine, other = issue(broker, creds, "batch"), issue(broker, stack.assume("demo-batch", "bystander"), "batch")
    my_auth, other_auth = vault_login(stack, "batch", mine), vault_login(stack, "batch", other)
    registered = register(broker, creds, mine["request_id"], my_auth["accessor"])
    assert registered.status_code == 200, registered.body
    assert broker.audit.get(body_of(registered)["request_id"])["outcome"] == "registration"
    # somebody else's accessor, registered under my issuance: the revocation must not revoke it
    assert register(broker, creds, mine["request_id"], other_auth["accessor"]).status_code == 200
    # and nobody registers a token under an issuance that is not theirs
    assert_error(register(broker, stack.assume("demo-batch", "mallory"), mine["request_id"], "x" * 24), 403,
                 "not_authorized")

    revoked = body_of(security.post("/v1/revocations", {"request_id": mine["request_id"], "reason": "reg",
                                                        "quarantine": "0"}))
    tokens = {d["request_id"]: d["tokens"] for d in revoked["destroyed"]}[mine["request_id"]]
    assert tokens == [{"accessor": my_auth["accessor"], "found_by": "registered", "result": "revoked"}]
    assert token_status(stack, my_auth["client_token"]) == 403
    assert token_status(stack, other_auth["client_token"]) == 200  # the bystander's token lives on


# ---- no role-wide lockout ------------------------------------------------------------------------


def test_failed_logins_of_one_machine_lock_out_no_other_machine_of_the_role(broker):
    """Every machine of a role holds its role ID: eight failed logins (a used or revoked secret ID
    retried by an Agent) must not refuse another machine's fresh secret ID."""
    stack = broker.stack
    doc = issue(broker, stack.assume("demo-batch", f"crashloop-{uuid.uuid4().hex[:6]}"), "batch")
    used = unwrap_secret_id(stack, doc)
    assert approle_login(stack, "batch", used) == 200
    assert [approle_login(stack, "batch", used) for _ in range(8)] == [400] * 8  # the crash loop
    other = issue(broker, stack.assume("demo-batch", f"healthy-{uuid.uuid4().hex[:6]}"), "batch")
    assert approle_login(stack, "batch", unwrap_secret_id(stack, other)) == 200
