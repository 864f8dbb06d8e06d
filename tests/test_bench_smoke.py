"""The benchmark harness (bench/, `make bench`) on tiny counts, so that it doesn't rot.

Not a performance test: no figure is checked against a target, only that each
building block runs against the real local stack (behind the latency proxies) and
that what it counts and reconciles adds up.
"""

import math

import pytest

from bench import __main__ as runner
from bench import botocore_cpu, coldstart, overhead, stacklatency, storm
from bench.env import Bench, latency_module, tree


@pytest.fixture(scope="module")
def collected():
    """What the tests below measured, for the report test."""
    return {"errors": {}}


@pytest.fixture(scope="module")
def bench(local_broker):
    b = Bench(stack=local_broker.stack).start()
    try:
        b.warm(1)
        yield b
    finally:
        b.close()


def test_requests_are_counted_at_the_proxies_and_the_floor_makes_the_same_calls(bench, collected):
    q = collected["requests"] = stacklatency.requests_per_issuance(bench, 2)
    per_backend = q["per_backend"]
    assert per_backend.get("sts") == 1 and per_backend.get("ec2") == 1 and per_backend.get("vault", 0) >= 2
    assert q["requests_per_issuance"] == sum(q["per_operation"].values())

    o = collected["overhead"] = overhead.overhead(bench, 2, say=lambda _m: None)
    assert o["errors"] == {"inprocess": 0}
    assert o["latency_ms"]["floor"]["n"] == 2 and o["latency_ms"]["inprocess"]["n"] == 2
    # the same kinds of work on both sides (how many of each can differ by a cache:
    # the broker reads IAM only when its seconds-long cache has expired)
    assert {label for wave in o["callset"] for label in wave} <= set(q["per_operation"])
    assert sum(len(wave) for wave in o["callset"]) >= 7  # recorded at all (an empty set passed the line above)

    # what is recorded from the broker is what the proxies count of it (each call once)...
    bench.latency.reset()
    recorded = overhead.record_callset(bench, 1)
    assert sorted(bench.latency.counts().elements()) == sorted(c.label for c in recorded)
    # ...and the floor makes exactly the requests it recorded, counted at the proxies
    floor = overhead.callset.Floor(bench, recorded)
    try:
        bench.latency.reset()
        floor.run(bench.proofs.headers())
        counted = bench.latency.counts()
    finally:
        floor.close()
    assert sorted(counted.elements()) == sorted(c.label for c in recorded)


def test_delay_profiles_and_handler_cpu(bench, collected):
    lt = collected["latency"] = stacklatency.latency_profiles(bench, 1, say=lambda _m: None)
    assert lt["errors"] == {} and lt["critical_path_steps"] >= 1
    assert lt["shortest_chain_ms"] == 65  # STS 15 + EC2/IAM 40 + Vault 4 + DynamoDB 6
    cpu = collected["cpu"] = overhead.handler_cpu(bench, 2, say=lambda _m: None)
    assert cpu["errors"] == 0 and cpu["cpu_ms"]["p50"] > 0
    t = collected["trace"] = overhead.trace_issuance(bench, 1)
    assert any(c["call"].startswith("vault ") for c in t["calls"])  # proxy ports named
    assert [c["call"] for c in t["calls"] if c["call"].startswith("sts ")] == ["sts GetCallerIdentity (forwarded)"]


def test_storm_of_six_from_two_cold_processes_reconciles(bench, collected):
    faults = [{"backend": "sts", "rate": 0.3, "kind": "reset"}]  # some answers are 503, asked again
    s = collected["storm"] = storm.storm(bench, 6, 2, say=lambda _m: None, faults=faults)
    assert s["worker_errors"] == []
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["orphans"] == 0
    ck = s["check"]
    assert ck["answered_200"] == 6 and ck["used_ok"] == 6
    assert ck["vault_new_accessors_live"] == 0  # every one used up by its login (single use)
    assert sum(s["faults_injected"].values()) > 0
    bench.latency.reset()  # the faults are off again after the storm
    assert bench.post_inprocess(bench.proofs.login())[0] == 200 and bench.latency.faulted() == {}


def test_cold_first_issuance_and_botocore_settings(bench, collected, tmp_path):
    task = coldstart.TaskRoot(tree(), tmp_path)  # the unpacked Lambda zip, a bare interpreter
    assert list(task.root.glob("chalicelib/__pycache__/minter.*.pyc")) and (task.root / "app.py").is_file()
    assert not (task.root / "tests").exists() and not (task.root / "botocore").exists()
    out = coldstart.cold_variants(tree(), bench.broker_env(), lambda: bench.json_event(bench.proofs.login()), 1,
                                  {"package": task, "tree": None}, say=lambda _m: None)
    cold = collected["cold"] = {**out["package"], "from_tree": out["tree"]}
    assert cold["total_ms"] > cold["first_issuance_ms"] > 0 and out["tree"]["total_ms"] > 0
    bc = collected["botocore"] = botocore_cpu.per_call_cpu(bench, 2, say=lambda _m: None)
    variants = [r["variant"] for r in bc["rows"]]
    assert variants == ["botocore, default settings", "the broker's clients (chalicelib/aws_clients.py)"]
    assert all(r["cpu_ms_per_call"] > 0 for r in bc["rows"])


def test_report_ends_with_the_headline_lines(collected):
    results = collected
    heads = runner.headlines(results)
    assert list(heads) == list(runner.HEADLINES)
    assert heads["storm_orphans"] == 0 and heads["requests_per_issuance"] > 0
    assert math.isnan(heads["lambda_zip_mb"])  # not measured here
    doc = {"label": "smoke", "time": "now", "quick": True, "tree": ".", "git": {"rev": None,
           "broker_code_modified": None}, "machine": runner.machine(), "results": results, "headlines": heads}
    report = runner.report(doc)
    tail = report.splitlines()[-len(runner.HEADLINES):]
    assert [line.split()[0] for line in tail] == list(runner.HEADLINES)
    assert all(len(line.split()) == 2 for line in tail)


def test_latency_proxy_classifies_the_brokers_requests():
    classify = latency_module().classify
    sig = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"
    assert classify("POST", "/", {"host": "sts.amazonaws.com"}, b"Action=GetCallerIdentity&Version=2011-06-15") \
        == ("sts", "GetCallerIdentity (forwarded proof)")
    assert classify("POST", "/", {"authorization": sig.format("ec2")}, b"Action=DescribeInstances&Version=2016-11-15") \
        == ("ec2", "DescribeInstances")
    assert classify("POST", "/", {"authorization": sig.format("iam")}, b"Action=GetInstanceProfile") \
        == ("iam", "GetInstanceProfile")
    assert classify("POST", "/", {"x-amz-target": "DynamoDB_20120810.TransactWriteItems",
                                  "authorization": sig.format("dynamodb")}, b"{}") == ("dynamodb", "TransactWriteItems")
    assert classify("POST", "/v1/sys/audit-hash/file", {}, b"{}", "vault") == ("vault", "POST sys/audit-hash/file")


def test_latency_proxy_refuses_a_bad_configuration(local_broker):
    mod = latency_module()
    proxy = mod.LatencyProxyProcess(local_broker.stack.vault_addr, backend="vault").start()
    try:
        with pytest.raises(ValueError, match="unknown backends"):
            proxy.configure(delays={"s3": 5})
        with pytest.raises(ValueError, match="mode must be"):
            proxy.configure(mode="sometimes")
        proxy.configure(delays={"vault": 1}, mode="pad")  # a good one is taken
        assert proxy.counts() == {"counts": {}, "faulted": {}}
    finally:
        proxy.stop()


def test_importtime_parser():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |   chalicelib.errors\n"
              "import time:       300 |        300 |   dataclasses\n"
              "import time:        50 |        450 | chalicelib\n")
    records = coldstart.parse_importtime(stderr)
    assert records == [("chalicelib.errors", 100, 100, 1), ("dataclasses", 300, 300, 1), ("chalicelib", 50, 450, 0)]
    assert coldstart._first_imported_by_own(records, set()) == [("dataclasses", 0.3)]


def test_the_floor_groups_calls_in_flight_together_into_waves():
    from bench.callset import Call, waves

    def call(start, end, label):
        return Call(start, end, "POST", f"http://127.0.0.1:1/v1/{label}", {}, b"", 1)

    a, b, c, d = call(0, 10, "a"), call(1, 8, "b"), call(9, 12, "c"), call(12.5, 13, "d")
    # c starts after b (the wave's first call to end) ended: the broker waited for b
    assert [[x.url.rsplit("/", 1)[1] for x in w] for w in waves([d, c, b, a])] == [["a", "b"], ["c"], ["d"]]


def test_the_floor_reads_query_parameters_back_and_names_what_it_cannot():
    import botocore.session

    from bench.callset import _query_params

    session = botocore.session.get_session()
    ec2 = session.create_client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    iam = session.create_client("iam", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    form = {"Action": ["DescribeInstances"], "Version": ["2016-11-15"], "InstanceId.1": ["i-1"], "InstanceId.2": ["i-2"]}
    assert _query_params(ec2, "DescribeInstances", form) == {"InstanceIds": ["i-1", "i-2"]}
    assert _query_params(iam, "GetRole", {"Action": ["GetRole"], "RoleName": ["demo-node"]}) \
        == {"RoleName": "demo-node"}
    with pytest.raises(RuntimeError, match="Filter.1.Name"):
        _query_params(ec2, "DescribeInstances", {"Action": ["DescribeInstances"], "Filter.1.Name": ["tag:x"]})
