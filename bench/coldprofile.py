"""Where a cold start's time goes: ``python -m bench.coldprofile`` (issue 14, item 4).

Starts the local stack (as ``make bench``), then runs the cold child of benchmark 3
(a fresh process with the Lambda's environment: ``import app`` + the first AWS issuance
through ``app.app(event, context)``) twice more:

* with ``-X importtime``: every module the process imports, the lazy ones of the first
  issuance included, the biggest cumulative times first (top-level imports only,
  i.e. those not counted inside another);
* under cProfile (wall clock, the calling thread only: work on the pipeline's thread
  pool shows as waits): the functions with the most cumulative and own time, once
  for ``import app`` (in Lambda: the init, the service built and warmed) and once for
  the first issuance.

Options: ``--top N`` (rows per table, 25), ``--sort cumulative|tottime``.
Nothing here is a pass/fail figure; docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from . import env as bench_env
from .coldstart import _COLD_CHILD, LAMBDA_ENV, clean_env, parse_importtime

_PROFILED = r"""
import cProfile, io, json, pstats, sys, time
t_main = time.time()
payload = json.loads(sys.stdin.buffer.read())
_init = cProfile.Profile(time.perf_counter)
_init.enable()
import app
_init.disable()
exec(PRELUDE)
t_import = time.time()

class Context:
    function_name = "secret-zero-broker-bench"; function_version = "$LATEST"
    memory_limit_in_mb = "512"; aws_request_id = payload["request_id"]
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:secret-zero-broker-bench"
    log_group_name = "/aws/lambda/secret-zero-broker-bench"; log_stream_name = "bench"
    def get_remaining_time_in_millis(self): return 30000

_first = cProfile.Profile(time.perf_counter)
_first.enable()
out = app.app(payload["event"], Context())
_first.disable()
t_done = time.time()
print("BENCH_RESULT " + json.dumps({"t_main": t_main, "t_import": t_import, "t_done": t_done,
                                    "status": out.get("statusCode")}))
for _name, _profile in (("INIT", _init), ("FIRST", _first)):
    for _key in ("cumulative", "tottime"):
        _out = io.StringIO()
        pstats.Stats(_profile, stream=_out).sort_stats(_key).print_stats(TOP)
        print("PROFILE_" + _name + "_" + _key.upper() + "\n" + _out.getvalue())
"""

def _child(tree, env, payload, code, extra=()):
    proc = subprocess.run([sys.executable, *extra, "-c", code], cwd=tree, env=env, input=payload,
                          capture_output=True, timeout=180)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "BENCH_RESULT " not in out:
        raise RuntimeError(f"cold child failed ({proc.returncode}): {err[-3000:]}")
    return out, err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    tree = bench_env.activate_tree()
    prelude = f"PRELUDE = {bench_env.TUNED_CLIENTS_PRELUDE!r}\n"
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as workdir:
        bench = bench_env.Bench(workdir=workdir, say=lambda m: print(m, file=sys.stderr))
        try:
            bench.start()
            bench.warm()
            env = clean_env({**bench.broker_env(), **LAMBDA_ENV})

            def payload(i):
                return json.dumps({"event": bench.json_event(bench.proofs.login()),
                                   "request_id": f"coldprofile-{i}"}).encode()

            out, err = _child(tree, env, payload(0), prelude + _COLD_CHILD, ["-X", "importtime"])
            doc = json.loads(out.split("BENCH_RESULT ", 1)[1].splitlines()[0])
            records = parse_importtime(err)
            print(f"== -X importtime of import app + the first issuance (status {doc['status']}), "
                  f"top-level imports by cumulative ms ==")
            tops = sorted(((m, c / 1000) for m, _s, c, depth in records if depth == 0), key=lambda x: -x[1])
            total = sum(s for _m, s, _c, _d in records) / 1000
            print(f"sum of every module's own time: {total:.1f} ms")
            for name, ms in tops[:args.top]:
                print(f"  {ms:8.1f}  {name}")
            # app's own imports at the next level: with the Lambda environment, the init's
            children = []
            for m, _s, c, depth in records:  # a module's imports come before it, one level deeper
                children.append((m, c / 1000, depth))
            print("imports of app (one level down), cumulative ms:")
            pending = []
            for m, ms, depth in children:
                if depth == 1:
                    pending.append((m, ms))
                elif depth == 0:
                    if m == "app":
                        for name, ms1 in sorted(pending, key=lambda x: -x[1])[:args.top]:
                            print(f"  {ms1:8.1f}  {name}")
                    pending = []
            out, _ = _child(tree, env, payload(1), prelude + f"TOP = {args.top}\n" + _PROFILED)
            doc = json.loads(out.split("BENCH_RESULT ", 1)[1].splitlines()[0])
            print(f"\n== cProfile (wall clock, the calling thread only) (status {doc['status']}): "
                  f"import app {(doc['t_import'] - doc['t_main']) * 1000:.0f} ms, the first issuance "
                  f"{(doc['t_done'] - doc['t_import']) * 1000:.0f} ms ==")
            print("PROFILE_" + out.split("PROFILE_", 1)[1])
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
