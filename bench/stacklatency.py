"""Benchmark 7: the broker on a stack with real latency (devstack/latency.py).

- ``requests_per_issuance``: backend HTTP requests of one AWS issuance of the seeded
  ``web`` instance, counted at the proxies (every AWS and Vault request passes one),
  averaged over the issuances of this benchmark, with the breakdown per operation.
- ``critical_path_steps``: the same delay D (50 ms) on every backend call (mode
  ``add``: D on top of the local server's time) against no delay:
  (p50 with D − p50 without) / D, rounded; the unrounded value is reported too.
  Calls in flight together cost one D; calls that wait on each other cost one each.
- ``latency_ratio_p50``: the p50 with the in-region delays (DEFAULT_DELAYS_MS, mode
  ``pad``: each call takes at least its figure, the local server's time counting
  toward it) ÷ the sum of the delays along the shortest possible chain: STS, the
  slowest fact read (EC2 or IAM), Vault, the audit write (DynamoDB).
- beside it, the exposed-delay ratio: (p50 with the in-region delays added on top,
  mode ``add`` − p50 with none) ÷ that chain: how much delay the pipeline's order
  of calls exposes, with the local servers' (and the broker's) own time taken out.

The four profiles (none; 50 ms added; in-region padded; in-region added) alternate
within each iteration (rotating order), so load on the shared machine hits them alike.
Every proof is signed, and its API Gateway event made, before the timed call: the
timed call is the Lambda entry point, ``app.app(event, context)``, as Lambda makes it
(and as benchmarks 2 and 3 do). Until issue 14's sixth pass it went through
chalice.test's Client, whose local gateway builds the event and reads the answer back
(API Gateway's work, not the broker's) inside the timed call.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from .env import Bench, latency_module
from .stats import ratio, summary_ms

UNIFORM_DELAY_MS = 50.0
TEST_CLIENT_PROFILE = "in-region (pad), chalice.test Client"
IDLE_SECONDS = 6.0  # longer than every cache of the issuance path (BROKER_FACT_CACHE_SECONDS is 5)


def in_region_delays() -> dict:
    """DEFAULT_DELAYS_MS, with BENCH_DELAYS_MS (a JSON object, e.g. '{"iam": 80}') over it."""
    delays = dict(latency_module().DEFAULT_DELAYS_MS)
    delays.update(json.loads(os.environ.get("BENCH_DELAYS_MS") or "{}"))
    return delays


def shortest_chain_ms(delays: dict) -> float:
    return delays["sts"] + max(delays["ec2"], delays["iam"]) + delays["vault"] + delays["dynamodb"]


def requests_per_issuance(bench: Bench, n: int) -> dict:
    lat = bench.latency
    lat.set_delays(latency_module().NO_DELAY)
    bodies = [bench.proofs.login() for _ in range(n)]
    bench.post_inprocess(bench.proofs.login())  # warm (a token refresh is not counted below)
    lat.reset()
    ok = 0
    for body in bodies:
        status, _ = bench.post_inprocess(body)
        ok += status == 200
    counts = lat.counts()
    if ok != n:
        raise RuntimeError(f"{n - ok} of {n} issuances failed while counting requests")
    per_op = {k: v / n for k, v in sorted(counts.items())}
    per_backend: Counter = Counter()
    for k, v in counts.items():
        per_backend[k.split(" ", 1)[0]] += v / n
    # The same issuance once the process's short caches have expired (role tags, trust
    # policy and instance-profile membership: 5 s; a role's quarantine key: settle/3 s):
    # what a lone boot after a quiet spell costs.
    time.sleep(IDLE_SECONDS)
    body = bench.proofs.login()
    lat.reset()
    status, _ = bench.post_inprocess(body)
    if status != 200:
        raise RuntimeError(f"the issuance after {IDLE_SECONDS} s idle answered {status}")
    idle = lat.counts()
    return {"issuances": n, "requests_per_issuance": sum(counts.values()) / n,
            "per_operation": per_op, "per_backend": dict(per_backend),
            "idle_seconds": IDLE_SECONDS, "requests_after_idle": sum(idle.values()),
            "per_operation_after_idle": dict(sorted(idle.items()))}


def latency_profiles(bench: Bench, iterations: int, say=print) -> dict:
    mod = latency_module()
    lat = bench.latency
    delays = in_region_delays()
    profiles = {
        "none": (mod.NO_DELAY, "add"),
        f"uniform {UNIFORM_DELAY_MS:g} ms (add)": (mod.uniform(UNIFORM_DELAY_MS), "add"),
        "in-region (pad)": (delays, "pad"),
        "in-region (add)": (delays, "add"),
        # the same as "in-region (pad)", through chalice.test's Client as before this pass
        # (its local gateway's event building inside the timed call): the difference shown
        TEST_CLIENT_PROFILE: (delays, "pad"),
    }
    names = list(profiles)
    series: dict = {name: [] for name in names}
    errors = Counter()
    def issue(name):
        """One issuance, timed: (seconds, status)."""
        if name == TEST_CLIENT_PROFILE:
            body = bench.proofs.login()
            t0 = time.perf_counter()
            status, _ = bench.post_inprocess(body)
            return time.perf_counter() - t0, status
        event = bench.lambda_event(bench.proofs.login())  # what API Gateway sends, made before the clock starts
        t0 = time.perf_counter()
        out = bench.invoke(*event)
        return time.perf_counter() - t0, out.get("statusCode")

    for name in names:  # a warm-up issuance per profile
        lat.set_delays(*profiles[name])
        issue(name)
    t_start = time.monotonic()
    for i in range(iterations):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            lat.set_delays(*profiles[name])
            took, status = issue(name)
            if status == 200:
                series[name].append(took)
            else:
                errors[name] += 1
    lat.set_delays(mod.NO_DELAY)
    stats = {name: summary_ms(v) for name, v in series.items()}
    p50 = {name: s.get("p50", float("nan")) for name, s in stats.items()}
    steps = (p50[names[1]] - p50[names[0]]) / UNIFORM_DELAY_MS
    chain = shortest_chain_ms(delays)
    say(f"benchmark 7: {iterations} iterations x {len(names)} delay profiles in {time.monotonic() - t_start:.1f} s")
    return {
        "iterations": iterations,
        "errors": dict(errors),
        "latency_ms": stats,
        "uniform_delay_ms": UNIFORM_DELAY_MS,
        "critical_path_steps_exact": steps,
        "critical_path_steps": round(steps) if steps == steps else float("nan"),
        "delays_ms": delays,
        "shortest_chain_ms": chain,
        "latency_ratio_p50": ratio(p50[names[2]], chain),
        # the delay the pipeline's structure exposes, the local servers' own time taken out:
        # 1.0 = the shortest chain exactly (see docs/performance.md)
        "exposed_delay_ratio_p50": ratio(p50[names[3]] - p50[names[0]], chain),
        "latency_ratio_p50_test_client": ratio(p50[TEST_CLIENT_PROFILE], chain),
    }
