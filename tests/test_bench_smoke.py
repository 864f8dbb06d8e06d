"""The benchmark harness (bench/, `make bench`) on tiny counts, so that it doesn't rot.

Not a performance test: nothing here checks a figure, only that each building
block runs against the real local stack and reports what `make bench` prints.
"""

import math

import pytest

from bench import __main__ as runner
from bench import coldstart, overhead, storm
from bench.env import Bench


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


def test_overhead_trace_and_cpu_on_three_iterations(bench, collected):
    o = collected["overhead"] = overhead.overhead(bench, 3, say=lambda _m: None)
    assert o["errors"] == {"inprocess": 0, "http": 0}
    for name in ("floor", "floor+gip", "inprocess", "http"):
        assert o["latency_ms"][name]["n"] == 3
    assert o["ratio_p50_inprocess"] > 0 and o["ratio_p50_http"] > 0
    assert set(o["floor_calls_ms"]) == {*overhead.FLOOR_CALLS, overhead.EXTRA_CALL}

    t = collected["trace"] = overhead.trace_issuance(bench, 1)
    labels = " ".join(c["call"] for c in t["calls"])
    assert t["count"] == 1 and "sts GetCallerIdentity" in labels and "vault" in labels

    cpu = collected["cpu"] = overhead.handler_cpu(bench, 3, say=lambda _m: None)
    assert cpu["errors"] == 0 and cpu["cpu_ms"]["p50"] > 0


def test_storm_of_ten_loses_and_duplicates_nothing(bench, collected):
    s = collected["storm"] = storm.storm(bench, 10, 4, say=lambda _m: None)
    assert s["statuses"] == {"200": 10}
    assert s["lost"] == 0 and s["duplicates"] == 0
    assert s["check"]["secret_id_accessors"] == 10


def test_report_ends_with_the_headline_lines(collected):
    results = collected
    heads = runner.headlines(results)
    assert list(heads) == list(runner.HEADLINES)
    assert math.isnan(heads["lambda_zip_mb"])  # not measured here
    doc = {"label": "smoke", "time": "now", "quick": True, "tree": ".", "git": {"rev": None,
           "broker_code_modified": None}, "machine": runner.machine(), "results": results, "headlines": heads}
    tail = runner.report(doc).splitlines()[-len(runner.HEADLINES):]
    assert [line.split()[0] for line in tail] == list(runner.HEADLINES)
    assert all(len(line.split()) == 2 for line in tail)


def test_importtime_parser():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |   chalicelib.errors\n"
              "import time:       300 |        300 |   dataclasses\n"
              "import time:        50 |        450 | chalicelib\n")
    records = coldstart.parse_importtime(stderr)
    assert records == [("chalicelib.errors", 100, 100, 1), ("dataclasses", 300, 300, 1), ("chalicelib", 50, 450, 0)]
    assert coldstart._first_imported_by_own(records, set()) == [("dataclasses", 0.3)]
