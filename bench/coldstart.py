"""Benchmark 3: cold start.

* ``python -X importtime -c "import app"`` in a fresh process (cwd = the tree),
  against importing the same third-party modules alone. Totals are sums of the
  "self" column over the modules that ``python -c pass`` does not import
  (interpreter start-up and site are left out of both).
  ``import_overhead_ratio = (app - deps) / deps``: the project's own modules
  plus the standard-library modules only they import, over the dependencies.
  The runs alternate (app, deps, app, deps, ...); the ratio uses the fastest run
  of each (noise from other processes only ever adds time), the medians are
  reported beside it.
* time to the first answered request in a fresh process: a subprocess that
  imports app, builds a ``chalice.test.Client`` and asks ``GET /v1/health`` of the
  running stack; the wall time from just before the spawn to the answer. The
  same process then makes one AWS issuance (a proof signed by the parent) and
  says which of the Google libraries (and botocore) it has imported by then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

OWN_TOPS = ("app", "chalicelib")
GOOGLE_MODULES = ("google", "google.auth", "google.oauth2", "cryptography")
# Imported by the app in a fresh process only when a route needs them.
WATCH_MODULES = (*GOOGLE_MODULES, "botocore", "hvac", "requests", "defusedxml")


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """[(module, self_us, cumulative_us, depth)] in the order Python printed them
    (a module's imports are printed before it, one indentation level deeper)."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        raw = parts[2].rstrip("\n")[1:]  # one space after the bar, then two per level
        name = raw.lstrip(" ")
        out.append((name, int(parts[0]), int(parts[1]), (len(raw) - len(name)) // 2))
    return out


def _importtime(python: str, args: list[str], cwd: Path, env: dict) -> list[tuple[str, int, int]]:
    proc = subprocess.run([python, "-X", "importtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return parse_importtime(proc.stderr)


def _is_own(name: str) -> bool:
    return name.split(".")[0] in OWN_TOPS


def _is_stdlib(name: str) -> bool:
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top.startswith("_") or top in ("encodings",)


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_", "PYTHON"))}
    env.update(extra or {})
    return env


def import_times(tree: Path, reps: int, python: str = sys.executable, say=print) -> dict:
    env = clean_env()
    baseline = {m for m, *_ in _importtime(python, ["-c", "pass"], tree, env)}
    first = _importtime(python, ["-c", "import app"], tree, env)
    new = [(m, s, c) for m, s, c, _d in first if m not in baseline]
    deps = [m for m, *_ in new if not _is_own(m) and not _is_stdlib(m)]
    import importlib.util

    dep_tops = sorted(t for t in {m.split(".")[0] for m in deps} if importlib.util.find_spec(t) is not None)
    deps_code = ("import importlib\nfor _m in %r:\n    try:\n        importlib.import_module(_m)\n"
                 "    except Exception:\n        pass\n" % (deps,))

    def total(records):
        return sum(s for m, s, *_ in records if m not in baseline) / 1000.0

    app_ms, deps_ms = [], []
    for _ in range(reps):
        app_ms.append(total(_importtime(python, ["-c", "import app"], tree, env)))
        deps_ms.append(total(_importtime(python, ["-c", deps_code], tree, env)))
    app_total, deps_total = min(app_ms), min(deps_ms)
    own = sorted(((m, s / 1000.0) for m, s, *_ in new if _is_own(m)), key=lambda x: -x[1])
    first_by_own = _first_imported_by_own(first, baseline)
    ratio = (app_total - deps_total) / deps_total if deps_total else float("nan")
    say(f"benchmark 3: import times, {reps} runs each (app, dependencies alone)")
    return {
        "reps": reps,
        "app_import_ms": app_total,
        "deps_import_ms": deps_total,
        "app_import_ms_median": median(app_ms),
        "deps_import_ms_median": median(deps_ms),
        "app_import_ms_runs": app_ms,
        "deps_import_ms_runs": deps_ms,
        "import_overhead_ratio": ratio,
        "dependencies": dep_tops,
        "own_modules_self_ms": own,
        "first_imported_by_own_code_ms": first_by_own,
        "modules_after_import_app": {m: any(x == m or x.startswith(m + ".") for x, *_ in first)
                                     for m in WATCH_MODULES},
    }


def _first_imported_by_own(records, baseline) -> list[tuple[str, float]]:
    """Modules whose first import was made directly by one of the project's modules,
    with their cumulative import time (ms): what a lazy import could move off the cold start."""
    pending: dict[int, list] = {}
    found = []
    for name, _self, cum, depth in records:
        children = pending.pop(depth + 1, [])
        if _is_own(name):
            found += [(c, ms) for c, ms in children if not _is_own(c) and c not in baseline]
        pending.setdefault(depth, []).append((name, cum / 1000.0))
    return sorted(found, key=lambda x: -x[1])


_CHILD = r"""
import json, os, sys, time
t_spawn = float(sys.argv[1])
marks = {}
import app
marks["import_app"] = time.time()
mods_after_import = {m: m in sys.modules for m in WATCH}
from chalice.test import Client
marks["import_chalice_test"] = time.time()
client = Client(app.app, stage_name="local", project_dir=os.getcwd())
r = client.http.get("/v1/health")
marks["health"] = time.time()
health_status = r.status_code
body = sys.stdin.buffer.read()
r2 = client.http.post("/v1/credentials/aws", body=body, headers={"Content-Type": "application/json"})
marks["issuance"] = time.time()
mods_after_issuance = {m: m in sys.modules for m in WATCH}
print("BENCH_RESULT " + json.dumps({
    "t_spawn": t_spawn, "marks": marks, "health_status": health_status, "issuance_status": r2.status_code,
    "mods_after_import": mods_after_import, "mods_after_issuance": mods_after_issuance}))
"""


def first_request(tree: Path, broker_env: dict, make_login, reps: int, python: str = sys.executable,
                  say=print) -> dict:
    """Fresh processes: spawn -> import app -> chalice.test.Client -> GET /v1/health answered,
    then one AWS issuance; ``make_login()`` returns the body of a fresh signed proof."""
    env = clean_env(broker_env)
    env["PYTHONUNBUFFERED"] = "1"
    code = f"WATCH = {WATCH_MODULES!r}\n" + _CHILD
    runs = []
    for _ in range(reps):
        body = make_login()
        t0 = time.time()
        proc = subprocess.run([python, "-c", code, repr(t0)], cwd=tree, env=env, input=body,
                              capture_output=True, timeout=120)
        t_exit = time.time()
        line = next((ln for ln in proc.stdout.decode(errors="replace").splitlines()
                     if ln.startswith("BENCH_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"first-request child failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace')[-2000:]}")
        doc = json.loads(line.split(" ", 1)[1])
        m = doc["marks"]
        runs.append({
            "to_import_app_ms": (m["import_app"] - t0) * 1000,
            "to_first_health_ms": (m["health"] - t0) * 1000,
            "chalice_test_import_ms": (m["import_chalice_test"] - m["import_app"]) * 1000,
            "first_health_ms": (m["health"] - m["import_chalice_test"]) * 1000,
            "first_issuance_ms": (m["issuance"] - m["health"]) * 1000,
            "to_first_issuance_ms": (m["issuance"] - t0) * 1000,
            "process_wall_ms": (t_exit - t0) * 1000,
            "health_status": doc["health_status"],
            "issuance_status": doc["issuance_status"],
            "mods_after_import": doc["mods_after_import"],
            "mods_after_issuance": doc["mods_after_issuance"],
        })
    keys = [k for k in runs[0] if k.endswith("_ms")]
    result = {k: median(r[k] for r in runs) for k in keys}
    last = runs[-1]
    result.update({
        "reps": reps,
        "statuses": [(r["health_status"], r["issuance_status"]) for r in runs],
        "google_imported_after_aws_issuance": any(last["mods_after_issuance"].get(m) for m in GOOGLE_MODULES),
        "modules_after_import_app": last["mods_after_import"],
        "modules_after_aws_issuance": last["mods_after_issuance"],
    })
    say(f"benchmark 3: first request in {reps} fresh processes")
    return result


# ---- cold_first_issuance_ms (issue 14) ----------------------------------------------

LAMBDA_ENV = {  # what the Lambda runtime sets besides the function's own variables
    "AWS_LAMBDA_FUNCTION_NAME": "secret-zero-broker-bench",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
    "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
    "LAMBDA_TASK_ROOT": "/var/task",
    "TZ": ":UTC",
}

_COLD_CHILD = r"""
import json, sys, time
t_main = time.time()
payload = json.loads(sys.stdin.buffer.read())
import app
exec(PRELUDE)
t_import = time.time()

class Context:  # the attributes of Lambda's context object that chalice reads
    function_name = "secret-zero-broker-bench"; function_version = "$LATEST"
    memory_limit_in_mb = "512"; aws_request_id = payload["request_id"]
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:secret-zero-broker-bench"
    log_group_name = "/aws/lambda/secret-zero-broker-bench"; log_stream_name = "bench"
    def get_remaining_time_in_millis(self): return 30000

out = app.app(payload["event"], Context())
t_done = time.time()
print("BENCH_RESULT " + json.dumps({"t_main": t_main, "t_import": t_import, "t_done": t_done,
                                    "cpu": time.process_time(), "status": out.get("statusCode")}))
"""


class TaskRoot:
    """What Lambda runs, on this machine: the tree's deployment.zip (`chalice package`
    plus deploy/bytecode.py, for this Python) unpacked into a directory, and a bare
    virtualenv of this Python to run it (no site-packages: none of the development
    virtualenv's .pth files, such as the project's editable install, which costs every
    process here ~25 ms at start that Lambda never pays). Bytecode is never written
    (PYTHONDONTWRITEBYTECODE: /var/task is read-only), so a module without bytecode in
    the zip is compiled by every cold start, as in Lambda."""

    def __init__(self, tree: Path, workdir: Path):
        import zipfile

        from .package import chalice_package

        self.root = workdir / "task"
        out = workdir / "package"
        chalice_package(tree, out)
        with zipfile.ZipFile(out / "deployment.zip") as z:
            z.extractall(self.root)
        venv = workdir / "runtime"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        self.python = str(venv / "bin" / "python")
        # Lambda's Python runtime brings boto3 and botocore (/var/runtime, after the task's
        # own code on sys.path); the zip pins none. Here: the development pin's, linked.
        runtime = workdir / "var-runtime"
        runtime.mkdir(exist_ok=True)
        import botocore
        import dateutil
        import jmespath

        for module in (botocore, jmespath, dateutil):
            source = Path(module.__file__).parent
            if not (runtime / source.name).exists():
                (runtime / source.name).symlink_to(source)
        import six

        if not (runtime / "six.py").exists():
            (runtime / "six.py").symlink_to(Path(six.__file__))
        self.env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(runtime)}

    def without_bytecode(self) -> "TaskRoot":
        """The same task root with no bytecode at all (as `chalice package` alone ships it
        from a clean clone): what deploy/bytecode.py saves each cold start."""
        import copy
        import shutil

        bare = copy.copy(self)
        bare.root = self.root.with_name("task-no-bytecode")
        shutil.copytree(self.root, bare.root, ignore=shutil.ignore_patterns("__pycache__"))
        return bare


def cold_first_issuance(tree: Path, broker_env: dict, make_event, reps: int, python: str = sys.executable,
                        say=print, task_root: TaskRoot | None = None) -> dict:
    """``cold_first_issuance_ms``: a fresh process with the Lambda's environment (the
    broker's BROKER_* and AWS_* variables, the runtime's AWS_LAMBDA_* ones): from just
    before the spawn to the first AWS issuance answered through the Lambda entry point
    ``app.app(event, context)`` (interpreter, import app, building the service, the
    issuance). ``make_event()`` returns a prebuilt API Gateway event of a fresh proof.
    The median of ``reps`` runs; the parts beside it.

    With the Lambda environment, app.py builds the service at import (Lambda's init:
    clients, the Vault login), so "import app" holds the init and "first issuance" is
    what an environment restored from a SnapStart snapshot still pays after the restore
    (docs/performance.md). BENCH_AWS_CLIENTS=tuned no longer reaches the cold process's
    clients: they are built before its prelude runs."""
    env = clean_env({**broker_env, **LAMBDA_ENV})
    cwd = tree
    if task_root is not None:  # the unpacked zip, run by a bare interpreter
        env.update(task_root.env)
        python, cwd = task_root.python, task_root.root
    runs = []
    for i in range(reps):
        payload = json.dumps({"event": make_event(), "request_id": f"cold-{i}"}).encode()
        t0 = time.time()
        from .env import TUNED_CLIENTS_PRELUDE

        code = f"PRELUDE = {TUNED_CLIENTS_PRELUDE!r}\n" + _COLD_CHILD
        proc = subprocess.run([python, "-c", code], cwd=cwd, env=env, input=payload,
                              capture_output=True, timeout=120)
        line = next((ln for ln in proc.stdout.decode(errors="replace").splitlines()
                     if ln.startswith("BENCH_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"cold-start child failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
        doc = json.loads(line.split(" ", 1)[1])
        if doc["status"] != 200:
            raise RuntimeError(f"the cold first issuance answered {doc['status']}")
        runs.append({"total_ms": (doc["t_done"] - t0) * 1000,
                     "interpreter_ms": (doc["t_main"] - t0) * 1000,
                     "import_app_ms": (doc["t_import"] - doc["t_main"]) * 1000,
                     "first_issuance_ms": (doc["t_done"] - doc["t_import"]) * 1000,
                     # the process's own CPU from its start to the answer: less sensitive to load
                     "process_cpu_ms": doc["cpu"] * 1000})
    result = _medians(runs)
    say(f"benchmark 3: cold first issuance in {reps} fresh processes, median {result['total_ms']:.0f} ms")
    return result


def _medians(runs: list[dict]) -> dict:
    result = {k: median(r[k] for r in runs) for k in runs[0]}
    result["runs_total_ms"] = [r["total_ms"] for r in runs]
    result["reps"] = len(runs)
    return result


def cold_variants(tree: Path, broker_env: dict, make_event, reps: int, variants: dict, say=print) -> dict:
    """cold_first_issuance for each variant ({name: TaskRoot, or None for the tree in this
    virtualenv}), one run of each in turn, `reps` rounds: the machine's load and moto's
    growing session list fall on every variant alike."""
    runs: dict = {name: [] for name in variants}
    for _ in range(reps):
        for name, task_root in variants.items():
            one = cold_first_issuance(tree, broker_env, make_event, 1, say=lambda _m: None, task_root=task_root)
            runs[name].append({k: v for k, v in one.items() if k not in ("runs_total_ms", "reps")})
    out = {name: _medians(r) for name, r in runs.items()}
    say("benchmark 3: cold first issuance, median of " + str(reps) + ": "
        + ", ".join(f"{name} {v['total_ms']:.0f} ms" for name, v in out.items()))
    return out
