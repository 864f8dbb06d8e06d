"""The revocation's order and its `complete` flag, in milliseconds: the real Revocations with
the in-memory stores (chalicelib/stores/memory.py, which pass the DynamoDB stores' contract
tests) and a Vault and an audit trail that record what they are asked, in order."""

import json
import uuid
from types import SimpleNamespace

import pytest

from chalicelib.audit import AuditRecord
from chalicelib.errors import NotFound, Unavailable
from chalicelib.revoker import Scan
from chalicelib.security.revocations import Revocations
from chalicelib.stores import memory
from chalicelib.methods import identity
from chalicelib.stores.quarantine import keys_of

INSTANCE = "i-0123456789abcdef0"
PRINCIPAL = f"arn:aws:sts::123456789012:assumed-role/demo-node/{INSTANCE}"


class Clock:
    def __init__(self):
        self.now = 1_900_000_000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def issued(n, when):
    return {"request_id": str(uuid.uuid4()), "outcome": "issued", "role": "web", "instance": INSTANCE,
            "principal": PRINCIPAL, "method": "aws", "time": f"t{n}", "secret_id_accessor": f"sid-{n}",
            "role_id_wrap_accessor": f"rw-{n}", "secret_id_wrap_accessor": f"sw-{n}",
            "secret_id_expires_at": int(when) + 300}


class Trail:
    """The audit trail as the revocation sees it: records appear when `landing` says."""

    def __init__(self, clock):
        self.clock = clock
        self.records = []  # (visible from, record)

    def add(self, record, visible_from=0):
        self.records.append((visible_from, record))

    def get(self, request_id):
        return next((r for _, r in self.records if r["request_id"] == request_id), None)

    def search(self, query):
        events = [r for t, r in self.records if t <= self.clock() and r.get("instance") == query.instance
                  and (not query.outcomes or r["outcome"] in query.outcomes)]
        return SimpleNamespace(events=events, next_cursor=None, index="by-instance")


class Vault:
    """Records every call and, for each destroy, whether the quarantine was in force then."""

    def __init__(self, quarantine, tokens=None, scan_error=None, unfinished=False):
        self.calls, self.quarantined_at_destroy = [], []
        self._quarantine, self._tokens, self._scan_error, self._unfinished = quarantine, tokens or {}, scan_error, \
            unfinished

    def revoke_token(self, accessor):
        self.calls.append(("revoke", accessor))
        return "revoked"

    def destroy_secret_id(self, role, accessor):
        try:
            self._quarantine.check(keys_of(sum(identity("aws").quarantine_keys(PRINCIPAL, INSTANCE), ())))
            self.quarantined_at_destroy.append(False)
        except Exception:
            self.quarantined_at_destroy.append(True)
        self.calls.append(("destroy", accessor))
        return "destroyed"

    def lookup(self, accessor):
        return {}

    def scan(self, request_ids, deadline=None):
        self.calls.append(("scan", tuple(sorted(request_ids))))
        if self._scan_error:
            raise self._scan_error
        found = {r: list(self._tokens.get(r, [])) for r in request_ids}
        return Scan(found, 5 if self._unfinished else 10, 10, not self._unfinished)


class Requests:
    def run(self, action, context, work, **kwargs):
        record = AuditRecord(request_id=str(uuid.uuid4()), method="aws", action=action)
        body = work(record, SimpleNamespace(principal="arn:aws:sts::123456789012:assumed-role/security-team/a"))
        body["request_id"] = record.request_id
        return body


def revocations(clock, trail, vault, quarantine, store):
    rules = SimpleNamespace(rules=[SimpleNamespace(issuance=SimpleNamespace(secret_id_ttl=300))])
    return Revocations(requests=Requests(), audit=trail, query_engine=trail, quarantine=quarantine,
                       revocations=store, revoker=vault, secret_ids=None, rules=rules, principals=None,
                       token_max_ttl=3600, settle_seconds=2, retention_days=400,
                       tokens=memory.MemoryTokenRegistry(clock), scan_seconds=5, clock=clock, sleep=clock.sleep,
                       monotonic=clock)


@pytest.fixture
def world():
    clock = Clock()
    quarantine, store = memory.MemoryQuarantineList(clock), memory.MemoryRevocationStore(clock)
    return clock, Trail(clock), quarantine, store


def revoke(service, **body):
    return service.revoke(json.dumps(dict({"instance": INSTANCE, "reason": "IDS"}, **body)).encode())


def test_the_quarantine_is_in_force_before_anything_is_destroyed_and_the_sweep_finds_late_records(world):
    clock, trail, quarantine, store = world
    first = issued(1, clock.now - 60)
    late = issued(2, clock.now)
    trail.add(first)
    trail.add(late, visible_from=clock.now + 1)  # in flight: its record lands a second later
    vault = Vault(quarantine, tokens={first["request_id"]: ["tok-1"], late["request_id"]: ["tok-2"]})
    answer = revoke(revocations(clock, trail, vault, quarantine, store), quarantine="1h")

    assert answer["complete"] is True, answer["problems"]
    assert vault.quarantined_at_destroy == [True, True]
    assert clock.slept == [2]  # the sweep waited settle_seconds after the quarantine
    by_id = {d["request_id"]: d for d in answer["destroyed"]}
    assert by_id[first["request_id"]]["found_by"] == "first pass"
    assert by_id[late["request_id"]]["found_by"] == "sweep"
    assert by_id[late["request_id"]]["tokens"] == [{"accessor": "tok-2", "found_by": "scan", "result": "revoked"}]
    assert by_id[first["request_id"]]["wrapping_tokens"] == {"role_id": "revoked", "secret_id": "revoked"}
    # every wrapping token before its secret ID, every secret ID before the scan for its tokens
    order = [c[0] for c in vault.calls]
    assert order.index("destroy") > order.index("revoke") and order.index("scan") > order.index("destroy")
    assert store.get(answer["revocation_id"])["quarantine_keys"] == [f"quarantine#instance#{INSTANCE}"]


@pytest.mark.parametrize("vault_kwargs, problem", [
    ({"scan_error": Unavailable("x", backend="vault", detail="sealed")}, "the token scan failed"),
    ({"unfinished": True}, "looked up 5 of 10 tokens"),
])
def test_a_token_scan_that_fails_or_runs_out_of_time_is_not_complete(world, vault_kwargs, problem):
    clock, trail, quarantine, store = world
    trail.add(issued(1, clock.now))
    answer = revoke(revocations(clock, trail, Vault(quarantine, **vault_kwargs), quarantine, store))
    assert answer["complete"] is False
    assert any(problem in p for p in answer["problems"]), answer["problems"]


def test_an_unknown_instance_needs_force_and_then_only_quarantines(world):
    clock, trail, quarantine, store = world
    vault = Vault(quarantine)
    service = revocations(clock, trail, vault, quarantine, store)
    with pytest.raises(NotFound, match="force"):
        revoke(service)
    assert quarantine.get(f"quarantine#instance#{INSTANCE}") is None  # refused before anything was placed
    answer = revoke(service, force=True)
    assert answer["destroyed"] == [] and answer["complete"] is True and vault.calls == []
    assert quarantine.get(f"quarantine#instance#{INSTANCE}").revocation_id == answer["revocation_id"]
