"""Benchmarks 1 and 2: the broker against its own call set made directly, and the
handler's CPU per issuance.

The floor is the broker's own call set (bench/callset.py): one in-process
issuance is recorded, and each floor iteration makes the same requests again,
directly, in the same waves of overlap. Floor and broker (chalice.test.Client)
alternate within each iteration, every proof signed before the timed call. Both
go through the latency proxies with no delay set (devstack/latency.py), so both
pay the same hop.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from statistics import median

from . import callset
from .env import LOGIN_PATH, Bench, backend_ports, trace_http
from .stats import percentile, ratio, summary_ms


def record_callset(bench: Bench, tries: int = 5) -> list:
    """The calls of one warm in-process issuance: of ``tries`` recorded issuances, one
    whose list of calls is the most common (a token refresh or a retry is not the norm)."""
    runs = []
    for _ in range(tries):
        body = bench.proofs.login()
        with callset.recording() as calls:
            status, _ = bench.post_inprocess(body)
        if status == 200:
            runs.append(list(calls))
    if not runs:
        raise RuntimeError("no issuance succeeded while recording the call set")
    shapes = Counter(tuple(sorted(c.label for c in run)) for run in runs)
    common = shapes.most_common(1)[0][0]
    return next(run for run in runs if tuple(sorted(c.label for c in run)) == common)


def overhead(bench: Bench, iterations: int, say=print) -> dict:
    """Benchmark 1: the broker in process against its own call set made directly,
    alternating within each iteration."""
    calls = record_callset(bench)
    floor = callset.Floor(bench, calls)
    try:
        for _ in range(2):  # connections, clients' first-call costs
            floor.run(bench.proofs.headers())
        series = {"floor": [], "inprocess": []}
        cpu_inprocess, cpu_floor = [], []
        errors = {"inprocess": 0}
        clock = time.perf_counter

        def do_floor():
            headers = bench.proofs.headers()
            c0, t0 = time.process_time(), clock()
            floor.run(headers)
            t1, c1 = clock(), time.process_time()
            series["floor"].append(t1 - t0)
            cpu_floor.append(c1 - c0)

        def do_inprocess():
            body = bench.proofs.login()
            c0, t0 = time.process_time(), clock()
            status, _ = bench.post_inprocess(body)
            t1, c1 = clock(), time.process_time()
            if status != 200:
                errors["inprocess"] += 1
                return
            series["inprocess"].append(t1 - t0)
            cpu_inprocess.append(c1 - c0)

        kinds = [do_floor, do_inprocess]
        started = time.monotonic()
        for i in range(iterations):
            for k in range(2):
                kinds[(i + k) % 2]()
        elapsed = time.monotonic() - started
    finally:
        floor.close()

    stats = {name: summary_ms(values) for name, values in series.items()}
    result = {
        "iterations": iterations,
        "seconds": elapsed,
        "errors": errors,
        "latency_ms": stats,
        "callset": floor.labels,  # the floor's waves, call labels
        "callset_requests": sum(len(w) for w in floor.labels),
        "inprocess_cpu_ms_p50": percentile([c * 1000 for c in cpu_inprocess], 50),
        "floor_cpu_ms_p50": percentile([c * 1000 for c in cpu_floor], 50),
        "ratio_p50_inprocess": ratio(stats["inprocess"]["p50"], stats["floor"]["p50"]),
    }
    say(f"benchmark 1: {iterations} iterations x (floor of {result['callset_requests']} calls, broker) "
        f"in {elapsed:.1f} s")
    return result


def trace_issuance(bench: Bench, count: int = 5) -> dict:
    """The backend calls of in-process issuances (chalice.test.Client), call by call:
    per position, the label and the median duration; and the time spent outside calls."""
    ports = backend_ports(bench.stack, bench.latency)
    runs = []
    for _ in range(count):
        body = bench.proofs.login()
        with trace_http(ports) as calls:
            t0 = time.perf_counter()
            status, _ = bench.post_inprocess(body)
            t1 = time.perf_counter()
        if status == 200:
            runs.append((t0, t1, list(calls), list(calls.connects)))
    if not runs:
        return {"count": 0}
    same = runs
    keyed: dict = {}
    for t0, _, calls, _ in runs:
        seen: dict = {}
        for s, e, label in sorted(calls):
            k = seen[label] = seen.get(label, 0) + 1
            keyed.setdefault((label, k), []).append(((s - t0) * 1000, (e - s) * 1000))
    rows = [{"call": label if k == 1 else f"{label} #{k}", "n": len(v),
             "start_ms": median(x[0] for x in v), "ms": median(x[1] for x in v)}
            for (label, k), v in keyed.items()]
    rows.sort(key=lambda r: r["start_ms"])
    total = median((r[1] - r[0]) * 1000 for r in same)
    in_calls = median(sum(e - s for s, e, _ in r[2]) * 1000 for r in same)
    # wall time covered by at least one call (overlapping calls count once)
    def covered(run):
        spans = sorted((s, e) for s, e, _ in run[2])
        total_cov, cur_s, cur_e = 0.0, None, None
        for s, e in spans:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    total_cov += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total_cov += cur_e - cur_s
        return total_cov * 1000
    outside = median((r[1] - r[0]) * 1000 - covered(r) for r in same)
    connects = {}
    for r in same:
        for server in r[3]:
            connects[server] = connects.get(server, 0) + 1
    return {"count": len(same), "calls": rows, "total_ms": total, "sum_of_calls_ms": in_calls,
            "outside_calls_ms": outside, "http_requests": median(len(r[2]) for r in same),
            "new_connections_per_issuance": {k: v / len(same) for k, v in sorted(connects.items())}}


def handler_cpu(bench: Bench, iterations: int, say=print) -> dict:
    """Benchmark 2: CPU time of the benchmark process around the Lambda entry point
    ``app.app(event, context)``, per issuance, minus the cost of an empty call of
    the same shape. moto and OpenBao are other processes, so their work is not in
    it; any thread the handler starts is (process_time, not thread_time)."""
    import gc

    def noop(event, context):
        return None

    def measure(fn, events):
        cpu, thread_cpu, wall, statuses = [], [], [], []
        for event, context in events:
            c0, h0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            out = fn(event, context)
            t1, h1, c1 = time.perf_counter(), time.thread_time(), time.process_time()
            cpu.append(c1 - c0)
            thread_cpu.append(h1 - h0)
            wall.append(t1 - t0)
            statuses.append(out.get("statusCode") if isinstance(out, dict) else None)
        return cpu, thread_cpu, wall, statuses

    # warm the Lambda path itself
    for _ in range(2):
        out = bench.invoke(*bench.lambda_event(bench.proofs.login()))
        if out.get("statusCode") != 200:
            raise RuntimeError(f"handler warm-up failed: {out.get('statusCode')} {str(out.get('body'))[:200]}")
    gc.collect()
    events = [bench.lambda_event(bench.proofs.login()) for _ in range(iterations)]
    empty_events = [bench.lambda_event(b"{}") for _ in range(iterations)]
    base_cpu, _, _, _ = measure(noop, empty_events)
    cpu, thread_cpu, wall, statuses = measure(bench.invoke, events)
    bad = sum(1 for s in statuses if s != 200)
    baseline = median(base_cpu)
    per = [max(c - baseline, 0.0) * 1000 for c, s in zip(cpu, statuses) if s == 200]
    per_thread = [max(c - baseline, 0.0) * 1000 for c, s in zip(thread_cpu, statuses) if s == 200]

    # what chalice itself costs on a trivial route (routing, Request, Response.to_dict)
    trivial = _trivial_dispatch_cpu(bench, min(iterations, 100), measure)
    result = {
        "iterations": iterations,
        "errors": bad,
        "cpu_ms": {"p50": percentile(per, 50), "p95": percentile(per, 95), "p99": percentile(per, 99),
                   "mean": sum(per) / len(per) if per else float("nan")},
        "thread_cpu_ms_p50": percentile(per_thread, 50),
        "wall_ms_p50": percentile([w * 1000 for w in wall], 50),
        "empty_call_us": baseline * 1e6,
        "chalice_trivial_route_cpu_ms_p50": trivial,
    }
    say(f"benchmark 2: {iterations} issuances through app.app(event, context)")
    return result


def _trivial_dispatch_cpu(bench: Bench, n: int, measure) -> float:
    from chalice import Chalice, Response

    tiny = Chalice(app_name="bench-trivial")

    @tiny.route(LOGIN_PATH, methods=["POST"], content_types=["*/*"])
    def _route():
        body = {"request_id": str(uuid.uuid4()), "raw": len(tiny.current_request.raw_body or b"")}
        return Response(body=body, status_code=200, headers={"Content-Type": "application/json"})

    events = [bench.lambda_event(bench.proofs.login()) for _ in range(n)]
    for _ in range(3):
        tiny(*events[0])
    cpu, _, _, _ = measure(tiny, events)
    return percentile([c * 1000 for c in cpu], 50)


@contextlib.contextmanager
def _inline_pool(wanted):
    """With BENCH_PROFILE_INLINE set, the broker's thread pool runs each call in the
    calling thread (one after the other), so the profile sees the work done in threads."""
    if not wanted:
        yield
        return
    from concurrent.futures import Future

    from chalicelib import concurrency

    class Inline:
        def submit(self, fn):
            future = Future()
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 - handed back as the pool would
                future.set_exception(e)
            return future

    saved, concurrency._pool = concurrency._pool, Inline()
    try:
        yield
    finally:
        concurrency._pool = saved


def profile_handler(bench: Bench, iterations: int = 30, top: int = 25) -> str:
    """cProfile of ``iterations`` Lambda-entry issuances with a CPU clock (the calling
    thread's CPU time, so waiting on a backend costs nothing): the top functions by
    own CPU time, then by cumulative CPU time. Work done in other threads is not seen,
    and the clock itself is a system call per event: the totals are several times the
    real CPU time, only the shares mean something."""
    import cProfile
    import io
    import pstats

    events = [bench.lambda_event(bench.proofs.login()) for _ in range(iterations)]
    prof = cProfile.Profile(time.thread_time)
    with _inline_pool(os.environ.get("BENCH_PROFILE_INLINE")):
        prof.enable()
        for event, context in events:
            bench.invoke(event, context)
        prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    if os.environ.get("BENCH_PROFILE_ONLY"):  # e.g. "chalicelib": the broker's own functions, cumulative
        stats.sort_stats("cumulative").print_stats(os.environ["BENCH_PROFILE_ONLY"], 40)
    if os.environ.get("BENCH_PROFILE_CALLERS"):  # e.g. "lower|isinstance": who calls them
        stats.sort_stats("tottime").print_callers(os.environ["BENCH_PROFILE_CALLERS"])
    return out.getvalue()
