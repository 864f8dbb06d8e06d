"""Benchmarks 1 and 2: the broker against the floor of its own backends, and the
handler's CPU per issuance.

The floor is what one AWS issuance cannot do without, made directly and
sequentially with the broker's own credentials and the same kind of clients:

    sts GetCallerIdentity (the signed request forwarded to moto, Host kept)
    dynamodb PutItem (replay record)
    iam ListRoleTags
    ec2 DescribeInstances
    vault read  auth/approle/role/web/role-id   (wrapped)
    vault write auth/approle/role/web/secret-id (wrapped)
    dynamodb PutItem (audit record)

The broker also calls iam GetInstanceProfile (the instance profile must hold the
caller's role). Issue 6 leaves it out of the floor; each floor iteration makes it
too, timed apart, so both "floor" (issue 6) and "floor + GetInstanceProfile" come
out of the same loop.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from statistics import median

from .env import GCI_BODY, LOGIN_PATH, Bench, backend_ports, proof_hash, trace_http
from .stats import percentile, ratio, summary_ms

FLOOR_CALLS = ("sts GetCallerIdentity", "dynamodb PutItem replay", "iam ListRoleTags", "ec2 DescribeInstances",
               "vault read role-id (wrapped)", "vault write secret-id (wrapped)", "dynamodb PutItem audit")
EXTRA_CALL = "iam GetInstanceProfile"


class Floor:
    """The backend calls of one issuance, made directly, with the broker's keys."""

    def __init__(self, bench: Bench, role: str = "web"):
        import botocore.config
        import botocore.session
        import hvac
        import requests

        stack = bench.stack
        env = stack.broker_env()
        keys = stack.broker_keys
        # the same client settings as chalicelib/backends.py uses today
        config = botocore.config.Config(connect_timeout=2, read_timeout=5,
                                        retries={"mode": "standard", "max_attempts": 2}, max_pool_connections=20)

        session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})

        def client(name):
            return session.create_client(name, region_name=env["BROKER_AWS_REGION"],
                                         endpoint_url=stack.aws_endpoint_url, config=config,
                                         aws_access_key_id=keys.access_key_id,
                                         aws_secret_access_key=keys.secret_access_key)

        self.ec2, self.iam, self.dynamodb = client("ec2"), client("iam"), client("dynamodb")
        self.http = requests.Session()
        self.http.trust_env = False
        self.sts_url = env["BROKER_STS_FORWARD_URL"] + "/"
        vault_http = requests.Session()
        vault_http.trust_env = False
        self.vault = hvac.Client(url=stack.vault_addr, timeout=5, session=vault_http)
        login = self.vault.auth.approle.login(role_id=stack.vault_seed.broker_role_id,
                                              secret_id=stack.vault_seed.broker_secret_id, use_token=False)
        self.vault.token = login["auth"]["client_token"]
        self.replay_table = env["BROKER_REPLAY_TABLE"]
        self.audit_table = env["BROKER_AUDIT_TABLE"]
        self.role = role
        self.role_path = f"auth/approle/role/{role}"
        self.instance_id = bench.instance_id
        self.principal = f"arn:aws:sts::123456789012:assumed-role/demo-node/{bench.instance_id}"

    def run(self, sts_headers: dict) -> dict:
        """One floor iteration; returns {call: seconds}."""
        t = {}
        clock = time.perf_counter
        request_id = str(uuid.uuid4())
        now = int(time.time())

        t0 = clock()
        r = self.http.post(self.sts_url, data=GCI_BODY.encode(), headers=sts_headers, allow_redirects=False,
                           timeout=(3, 5))
        body = r.content
        t1 = clock()
        t["sts GetCallerIdentity"] = t1 - t0
        if r.status_code != 200 or b"GetCallerIdentityResult" not in body:
            raise RuntimeError(f"floor: STS answered {r.status_code}: {body[:200]!r}")

        self.dynamodb.put_item(
            TableName=self.replay_table,
            Item={"proof_hash": {"S": proof_hash(sts_headers)}, "request_id": {"S": request_id},
                  "method": {"S": "aws"}, "spent_at": {"N": str(now)}, "expires_at": {"N": str(now + 1200)}},
            ConditionExpression="attribute_not_exists(proof_hash)")
        t2 = clock()
        t["dynamodb PutItem replay"] = t2 - t1

        self.iam.list_role_tags(RoleName="demo-node")
        t3 = clock()
        t["iam ListRoleTags"] = t3 - t2

        page = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        t4 = clock()
        t["ec2 DescribeInstances"] = t4 - t3
        if not page["Reservations"]:
            raise RuntimeError("floor: the instance is gone")

        self.iam.get_instance_profile(InstanceProfileName="demo-node")
        t5 = clock()
        t[EXTRA_CALL] = t5 - t4

        role_id = self.vault.read(f"{self.role_path}/role-id", wrap_ttl="60s")
        t6 = clock()
        t["vault read role-id (wrapped)"] = t6 - t5

        metadata = {"request_id": request_id, "principal": self.principal, "instance": self.instance_id,
                    "rule": "web-nodes"}
        secret = self.vault.write_data(f"{self.role_path}/secret-id", wrap_ttl="60s",
                                       data={"metadata": json.dumps(metadata), "ttl": "300s", "num_uses": 1})
        t7 = clock()
        t["vault write secret-id (wrapped)"] = t7 - t6

        iso = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        item = {
            "request_id": request_id, "method": "aws", "time": iso, "outcome": "issued", "code": "issued",
            "reason": "rule web-nodes grants role web", "role": self.role, "rule": "web-nodes",
            "principal": self.principal, "account": "123456789012", "instance": self.instance_id,
            "source_ip": "127.0.0.1", "role_id_wrap_accessor": role_id["wrap_info"]["accessor"],
            "secret_id_wrap_accessor": secret["wrap_info"]["accessor"],
            "secret_id_accessor": secret["wrap_info"].get("wrapped_accessor", ""),
        }
        attrs = {k: {"S": v} for k, v in item.items()}
        attrs["facts"] = {"S": json.dumps({"instance_tags": {"vault-role": "web"}}, separators=(",", ":"))}
        attrs["epoch"] = {"N": f"{time.time():.3f}"}
        attrs["expires_at"] = {"N": str(now + 400 * 86400)}
        self.dynamodb.put_item(TableName=self.audit_table, Item=attrs,
                               ConditionExpression="attribute_not_exists(request_id)")
        t8 = clock()
        t["dynamodb PutItem audit"] = t8 - t7
        return t


def overhead(bench: Bench, iterations: int, say=print) -> dict:
    """Benchmark 1: floor, in process (chalice.test.Client) and over HTTP (chalice local),
    round-robin within each iteration, every proof signed before the timed call."""
    floor = Floor(bench)
    for _ in range(2):  # connections, clients' first-call costs
        floor.run(bench.proofs.headers())
    series = {"floor": [], "floor+gip": [], "inprocess": [], "http": []}
    per_call = {name: [] for name in (*FLOOR_CALLS, EXTRA_CALL)}
    cpu_inprocess, cpu_floor = [], []
    errors = {"inprocess": 0, "http": 0}
    url = bench.stack.broker_url + LOGIN_PATH
    clock = time.perf_counter

    def do_floor():
        headers = bench.proofs.headers()
        c0 = time.process_time()
        calls = floor.run(headers)
        cpu_floor.append(time.process_time() - c0)
        base = sum(calls[c] for c in FLOOR_CALLS)
        series["floor"].append(base)
        series["floor+gip"].append(base + calls[EXTRA_CALL])
        for name, secs in calls.items():
            per_call[name].append(secs)

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

    def do_http():
        body = bench.proofs.login()
        t0 = clock()
        r = bench.http.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        r.content
        t1 = clock()
        if r.status_code != 200:
            errors["http"] += 1
            return
        series["http"].append(t1 - t0)

    kinds = [do_floor, do_inprocess, do_http]
    started = time.monotonic()
    for i in range(iterations):
        for k in range(3):
            kinds[(i + k) % 3]()
    elapsed = time.monotonic() - started

    stats = {name: summary_ms(values) for name, values in series.items()}
    calls = OrderedDict((name, summary_ms(values)) for name, values in per_call.items())
    p50 = {name: s["p50"] for name, s in stats.items()}
    result = {
        "iterations": iterations,
        "seconds": elapsed,
        "errors": errors,
        "latency_ms": stats,
        "floor_calls_ms": calls,
        "inprocess_cpu_ms_p50": percentile([c * 1000 for c in cpu_inprocess], 50),
        # the CPU the floor's own client calls (botocore, requests, hvac) cost in this process
        "floor_cpu_ms_p50": percentile([c * 1000 for c in cpu_floor], 50),
        "ratio_p50_inprocess": ratio(p50["inprocess"], p50["floor"]),
        "ratio_p50_http": ratio(p50["http"], p50["floor"]),
        "ratio_p50_inprocess_vs_floor_gip": ratio(p50["inprocess"], p50["floor+gip"]),
        "ratio_p50_http_vs_floor_gip": ratio(p50["http"], p50["floor+gip"]),
    }
    say(f"benchmark 1: {iterations} iterations x (floor, in process, HTTP) in {elapsed:.1f} s")
    return result


def trace_issuance(bench: Bench, count: int = 5) -> dict:
    """The backend calls of in-process issuances (chalice.test.Client), call by call:
    per position, the label and the median duration; and the time spent outside calls."""
    ports = backend_ports(bench.stack)
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
    prof.enable()
    for event, context in events:
        bench.invoke(event, context)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
