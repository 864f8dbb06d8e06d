"""The audit trail API against the local stack's real DynamoDB API (moto, with the GSIs
devstack creates from chalicelib/audit_schema.py): every filter, paging, cursors, and who
may read it. Records are seeded in a time window of their own, so nothing else the test
session writes shows up in these queries."""

import base64
import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.audit import AuditRecord
from tests.service.security_helpers import SecurityClient, binding, proof_header

ACCOUNT = "123456789012"


def body_of(response):
    return json.loads(response.body)


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def seeded(broker):
    """60 records over three UTC days of a random past window; returns their fields."""
    uid = uuid.uuid4().hex[:8]
    # a random past window within the retention (older records are outside any search)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    base = today - timedelta(days=random.randrange(30, 330))
    start = base.timestamp() + 3600 * 20  # 20:00 on day 1: the records span days 1, 2 and 3
    instances = [f"i-{uid}{n:09x}" for n in (1, 2)]
    roles = [f"web-{uid}", f"batch-{uid}"]
    records = []
    for i in range(60):
        epoch = start + i * 1500 + (0 if i != 11 else -1500)  # records 10 and 11 share a time
        method = "gcp" if i % 4 == 3 else "aws"
        instance = instances[i % 2] if i % 5 else None
        if method == "gcp":
            principal = f"sa-{uid}@proj-{uid}.iam.gserviceaccount.com"
            account = f"proj-{uid}"
        else:
            principal = f"arn:aws:sts::{ACCOUNT}:assumed-role/node-{uid}/{instance or 'job-' + str(i)}"
            account = ACCOUNT
        rec = AuditRecord(request_id=str(uuid.uuid4()), method=method, epoch=epoch, time=iso(epoch),
                          outcome=("issued", "denied", "error", "incident", "admin")[i % 5], code="test",
                          role=roles[i % 3 == 0], principal=principal, account=account, instance=instance,
                          reason=f"seeded {i}")
        records.append(rec)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(broker.audit.write, records))
    records = [rec.fields() | {"epoch": float(f"{rec.epoch:.3f}")} for rec in records]
    return {"uid": uid, "records": records, "since": iso(start - 1), "until": iso(start + 60 * 1500),
            "instances": instances, "roles": roles, "day1": base}


@pytest.fixture(scope="module")
def security(broker):
    return SecurityClient(broker, broker.stack.assume("security-team", f"alice-{uuid.uuid4().hex[:6]}"))


def expected(seeded, keep):
    rows = [r for r in seeded["records"] if keep(r)]
    rows.sort(key=lambda r: (r["epoch"], r["request_id"]), reverse=True)
    return [r["request_id"] for r in rows]


def fetch_all(security, limit, **params):
    """Every page of a search; returns (request IDs in order, number of pages)."""
    ids, pages, cursor = [], 0, None
    while True:
        query = dict(params, limit=limit, **({"next": cursor} if cursor else {}))
        response = security.search(**query)
        assert response.status_code == 200, response.body
        doc = body_of(response)
        pages += 1
        assert doc["count"] == len(doc["events"]) <= limit
        ids += [e["request_id"] for e in doc["events"]]
        cursor = doc["next"]
        if not cursor:
            return ids, pages
        assert pages < 40


def window(seeded, **params):
    return dict(params, since=seeded["since"], until=seeded["until"])


def test_a_time_window_pages_newest_first_across_days_and_shards(security, seeded):
    ids, pages = fetch_all(security, 7, **window(seeded))
    assert ids == expected(seeded, lambda r: True)
    assert len(ids) == 60 and len(set(ids)) == 60 and pages == 9


def test_one_page_with_everything(security, seeded):
    response = security.search(**window(seeded, limit=500))
    doc = body_of(response)
    assert [e["request_id"] for e in doc["events"]] == expected(seeded, lambda r: True)
    assert doc["next"] is None
    event = doc["events"][0]
    assert not any(k.startswith("gsi_") for k in event)  # index keys are internal
    assert {"request_id", "time", "epoch", "outcome", "method", "expires_at"} <= set(event)


@pytest.mark.parametrize("name, params, keep", [
    ("outcome", lambda s: {"outcome": "denied"}, lambda s, r: r["outcome"] == "denied"),
    ("outcomes", lambda s: {"outcome": "denied,error"}, lambda s, r: r["outcome"] in ("denied", "error")),
    ("method", lambda s: {"method": "gcp"}, lambda s, r: r["method"] == "gcp"),
    ("account", lambda s: {"account": f"proj-{s['uid']}"}, lambda s, r: r["account"] == f"proj-{s['uid']}"),
    ("role", lambda s: {"role": s["roles"][1]}, lambda s, r: r["role"] == s["roles"][1]),
    ("role+outcome", lambda s: {"role": s["roles"][0], "outcome": "issued"},
     lambda s, r: r["role"] == s["roles"][0] and r["outcome"] == "issued"),
    ("instance", lambda s: {"instance": s["instances"][0]}, lambda s, r: r.get("instance") == s["instances"][0]),
    ("instance+method", lambda s: {"instance": s["instances"][1], "method": "aws"},
     lambda s, r: r.get("instance") == s["instances"][1] and r["method"] == "aws"),
    ("session principal", lambda s: {"principal": f"arn:aws:sts::{ACCOUNT}:assumed-role/node-{s['uid']}/{s['instances'][0]}"},
     lambda s, r: r["principal"].endswith(s["instances"][0])),
    ("role principal", lambda s: {"principal": f"arn:aws:iam::{ACCOUNT}:role/node-{s['uid']}"},
     lambda s, r: r["method"] == "aws"),
    ("role principal+role", lambda s: {"principal": f"arn:aws:iam::{ACCOUNT}:role/node-{s['uid']}", "role": s["roles"][0]},
     lambda s, r: r["method"] == "aws" and r["role"] == s["roles"][0]),
    ("gcp principal", lambda s: {"principal": f"sa-{s['uid']}@proj-{s['uid']}.iam.gserviceaccount.com"},
     lambda s, r: r["method"] == "gcp"),
    ("instance+role principal", lambda s: {"instance": s["instances"][0], "principal": f"arn:aws:iam::{ACCOUNT}:role/node-{s['uid']}"},
     lambda s, r: r.get("instance") == s["instances"][0] and r["method"] == "aws"),
])
def test_every_filter_pages_to_exactly_its_records(security, seeded, name, params, keep):
    ids, _ = fetch_all(security, 6, **window(seeded, **params(seeded)))
    want = expected(seeded, lambda r: keep(seeded, r))
    assert want, f"the seed has no record for {name}"
    assert ids == want


def test_since_and_until_are_inclusive_bounds(security, seeded):
    records = sorted(seeded["records"], key=lambda r: r["epoch"])
    lo, hi = records[5]["epoch"], records[20]["epoch"]
    response = security.search(since=iso(lo), until=iso(hi), limit=100, role=seeded["roles"][1])
    got = [e["request_id"] for e in body_of(response)["events"]]
    assert got == expected(seeded, lambda r: lo <= r["epoch"] <= hi and r["role"] == seeded["roles"][1])


def test_a_cursor_round_trip_continues_where_the_page_ended(security, seeded):
    first = body_of(security.search(**window(seeded, limit=10, outcome="issued,denied")))
    second = body_of(security.search(**window(seeded, limit=10, outcome="issued,denied", next=first["next"])))
    everything = expected(seeded, lambda r: r["outcome"] in ("issued", "denied"))
    assert [e["request_id"] for e in first["events"] + second["events"]] == everything[:20]


def test_tampered_and_foreign_cursors_are_400(security, seeded):
    cursor = body_of(security.search(**window(seeded, limit=3)))["next"]
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps(dict(raw, q="0" * 16)).encode()).decode().rstrip("=")
    flipped = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    for bad, params in ((forged, {}), (flipped, {}), ("not-a-cursor", {}), (cursor, {"role": seeded["roles"][0]})):
        response = security.search(**window(seeded, limit=3, next=bad, **params))
        assert response.status_code == 400, response.body
        assert body_of(response)["error"]["code"] == "invalid_request"


def test_a_long_empty_range_answers_within_its_budget_with_a_cursor(security, seeded):
    # Over a year of days with 8 shards each: far more index reads than one call may make.
    since = iso(seeded["day1"].timestamp() - 400 * 86400)
    response = security.search(since=since, until=seeded["until"], limit=100)
    doc = body_of(response)
    assert [e["request_id"] for e in doc["events"]] == expected(seeded, lambda r: True)
    assert doc["next"]  # it stopped at its budget among the empty days before the seed
    doc2 = body_of(security.search(since=since, until=seeded["until"], limit=100, next=doc["next"]))
    assert doc2["events"] == [] and doc2["next"] and doc2["next"] != doc["next"]


def test_bad_parameters_are_400_and_audited(security, broker):
    response = security.search(since="last tuesday")
    assert response.status_code == 400 and body_of(response)["error"]["code"] == "invalid_request"
    record = broker.audit.get(body_of(response)["request_id"])
    assert record["outcome"] == "denied" and record["action"] == "audit.search"


def test_one_record_by_request_id(security, seeded, broker):
    wanted = seeded["records"][7]
    response = security.get(f"/v1/audit/events/{wanted['request_id']}")
    assert response.status_code == 200, response.body
    doc = body_of(response)
    assert doc["event"]["request_id"] == wanted["request_id"] and doc["event"]["reason"] == "seeded 7"
    read = broker.audit.get(doc["request_id"])
    assert read["action"] == "audit.show" and read["related_request_id"] == wanted["request_id"]
    missing = security.get(f"/v1/audit/events/{uuid.uuid4()}")
    assert missing.status_code == 404 and body_of(missing)["error"]["code"] == "not_found"
    assert security.get("/v1/audit/events/not-a-uuid").status_code == 400


# ---- who may read -------------------------------------------------------------------------------


def test_no_proof_is_401(broker):
    response = broker.client.http.get("/v1/audit/events")
    assert response.status_code == 401
    doc = body_of(response)
    assert doc["error"]["code"] == "invalid_proof" and "X-Broker-Proof" in doc["error"]["message"]
    assert broker.audit.get(doc["request_id"])["outcome"] == "denied"


def test_an_outsider_is_403_and_the_attempt_is_on_the_record(broker):
    creds = broker.stack.assume("demo-other", "curious")
    outsider = SecurityClient(broker, creds)
    for response in (outsider.search(), outsider.get(f"/v1/audit/events/{uuid.uuid4()}"),
                     outsider.post("/v1/revocations", {"instance": "i-0123456789abcdef0", "reason": "x"}),
                     outsider.delete(f"/v1/revocations/{uuid.uuid4()}")):
        assert response.status_code == 403, response.body
        doc = body_of(response)
        assert doc["error"]["code"] == "not_authorized"
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "denied" and record["action"] == "lift"
    assert record["principal"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/demo-other/curious"
    assert "matches no [security] principal_arns" in record["reason"]


def test_a_replayed_admin_proof_is_401(broker, security):
    proof = proof_header(security.creds, broker.server_id, bound=binding("GET", "/v1/audit/events", {"limit": ["1"]}))
    assert security.get("/v1/audit/events?limit=1", proof=proof).status_code == 200
    again = security.get("/v1/audit/events?limit=1", proof=proof)
    assert again.status_code == 401 and body_of(again)["error"]["code"] == "proof_replayed"


@pytest.mark.parametrize("header", ["%%%", base64.b64encode(b"[1]").decode(),
                                    base64.b64encode(b'{"iam_http_request_method": "POST"}').decode()])
def test_a_malformed_proof_header_is_400(broker, header):
    response = broker.client.http.get("/v1/audit/events", headers={"X-Broker-Proof": header})
    assert response.status_code == 400 and body_of(response)["error"]["code"] == "invalid_request"


def test_a_proof_for_another_server_id_is_401(broker, security):
    proof = proof_header(security.creds, "some-other-service", bound=binding("GET", "/v1/audit/events"))
    response = security.get("/v1/audit/events", proof=proof)
    assert response.status_code == 401 and "does not name this broker" in body_of(response)["error"]["message"]


def test_reading_the_trail_is_itself_audited_and_logged(security, seeded, broker, caplog):
    params = window(seeded, role=seeded["roles"][0], outcome="denied")
    doc = body_of(security.search(**params, limit=2))
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "admin" and record["action"] == "audit.search"
    assert record["principal"].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/security-team/alice-")
    assert record["query"] == dict(params, limit=2) and record["result_count"] == doc["count"]
    # ... and is found by a search on the security team's principal
    mine = body_of(security.search(principal=record["principal"], outcome="admin", limit=500))
    assert doc["request_id"] in [e["request_id"] for e in mine["events"]]
    lines = [dict(r.fields, event=r.getMessage()) for r in caplog.records if hasattr(r, "fields")]
    admin_lines = [line for line in lines if line["event"] == "admin" and line.get("request_id") == doc["request_id"]]
    assert admin_lines and admin_lines[0]["action"] == "audit.search" and admin_lines[0]["query"] == record["query"]


def test_a_crowded_shard_is_read_page_after_page_and_merged_in_order(broker, security):
    """Most records of a day in one shard: that shard must be read in several rounds while the
    others are exhausted, and the merge must stay newest first."""
    from chalicelib.audit_schema import TIME_SHARDS, shard_of

    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) \
        - timedelta(days=random.randrange(30, 330))
    crowded, others = [], []
    while len(crowded) < 36 or len(others) < 6:
        rid = str(uuid.uuid4())
        bucket = crowded if shard_of(rid, TIME_SHARDS) == 3 else others
        if (bucket is crowded and len(crowded) < 36) or (bucket is others and len(others) < 6):
            bucket.append(rid)
    records = []
    for i, rid in enumerate(crowded + others):
        epoch = day.timestamp() + 3600 + ((i * 7919) % 42) * 60  # interleaved in time
        records.append(AuditRecord(request_id=rid, method="aws", epoch=epoch, time=iso(epoch), outcome="denied",
                                   code="test", reason=f"crowded {i}"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(broker.audit.write, records))
    want = [r.request_id for r in sorted(records, key=lambda r: (round(r.epoch, 3), r.request_id), reverse=True)]
    params = {"since": iso(day.timestamp()), "until": iso(day.timestamp() + 86399)}
    assert fetch_all(security, 20, **params)[0] == want
    assert fetch_all(security, 500, **params)[0] == want


# ---- proofs bound to one request ----------------------------------------------------------------


def test_a_proof_signed_for_an_audit_read_is_refused_for_a_revocation(broker, security):
    proof = proof_header(security.creds, broker.server_id, bound=binding("GET", "/v1/audit/events"))
    body = {"instance": "i-0123456789abcdef0", "reason": "with a borrowed proof", "quarantine": "1h", "force": True}
    response = security.post("/v1/revocations", body, proof=proof)
    assert response.status_code == 401, response.body
    doc = body_of(response)
    assert doc["error"]["code"] == "invalid_proof" and "signed for another request" in doc["error"]["message"]
    record = broker.audit.get(doc["request_id"])
    assert record["outcome"] == "denied" and record["action"] == "revoke"
    assert "signed for GET /v1/audit/events, used for POST /v1/revocations" in record["reason"]
    # and nothing was quarantined: the proof was refused before anything was done
    assert record.get("revocation_id") is None


@pytest.mark.parametrize("signed_for", [
    ("POST", "/v1/revocations", None, b'{"instance": "i-0123456789abcdef0", "reason": "one thing"}'),  # other body
    ("DELETE", f"/v1/revocations/{uuid.uuid4()}", None, b""),  # other path
    ("GET", "/v1/audit/events", {"limit": ["500"]}, b""),  # other query
])
def test_a_proof_bound_to_another_body_path_or_query_is_401(broker, security, signed_for):
    proof = proof_header(security.creds, broker.server_id, bound=binding(*signed_for))
    if signed_for[0] == "GET":
        response = security.get("/v1/audit/events?limit=1", proof=proof)
    elif signed_for[0] == "DELETE":
        response = security.delete(f"/v1/revocations/{uuid.uuid4()}", proof=proof)
    else:
        response = security.post("/v1/revocations", {"instance": "i-0123456789abcdef0", "reason": "another"},
                                 proof=proof)
    assert response.status_code == 401 and "signed for another request" in body_of(response)["error"]["message"]


def test_a_proof_without_a_binding_is_401(broker, security):
    response = security.get("/v1/audit/events", proof=proof_header(security.creds, broker.server_id))
    assert response.status_code == 401
    assert "X-Broker-Request" in body_of(response)["error"]["message"]


def test_a_binding_rewritten_after_signing_is_refused_by_sts(broker, security):
    """The binding is part of the signature: rewriting it to match another request breaks it."""
    import json as _json

    signed = proof_header(security.creds, broker.server_id, bound=binding("GET", "/v1/audit/events"))
    fields = _json.loads(base64.b64decode(signed))
    headers = _json.loads(base64.b64decode(fields["iam_request_headers"]))
    headers["X-Broker-Request"] = [binding("GET", "/v1/audit/events", {"limit": ["1"]})]
    fields["iam_request_headers"] = base64.b64encode(_json.dumps(headers).encode()).decode()
    forged = base64.b64encode(_json.dumps(fields).encode()).decode()
    response = security.get("/v1/audit/events?limit=1", proof=forged)
    assert response.status_code == 401 and body_of(response)["error"]["code"] == "invalid_proof"
