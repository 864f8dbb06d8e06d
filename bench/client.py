"""Benchmark 5: the client, ``broker login --role web --sink FILE``.

* wall time of the real client as a process (env as devstack/demo.py's
  ``run_client``: only the instance role's credentials), from just before the
  spawn to the token on disk (the sink file's mtime) and to the process's exit;
* against the sum of its network calls, made in process with the client's own
  code (``broker.api.post_json``, ``broker.vault.VaultClient``): the broker POST
  (over HTTP, to ``chalice local``), two ``sys/wrapping/lookup``, two unwraps, one
  AppRole login;
* and the client's Python start-up: ``python -X importtime -m broker --version``
  (sum of all import times) and the wall time of ``python -m broker --version``
  against ``python -c pass``.

Each run uses its own assumed-role session (made before the timed part), so no
two runs can sign the same proof.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from .coldstart import parse_importtime
from .env import LOGIN_PATH, Bench, login_for


def _client_env(bench: Bench, creds: dict) -> dict:
    return {
        "PATH": os.environ.get("PATH", ""),
        "BROKER_URL": bench.stack.broker_url,
        "BROKER_SERVER_ID": bench.server_id,
        "AWS_ACCESS_KEY_ID": creds["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
        "AWS_SESSION_TOKEN": creds["session_token"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "VAULT_ADDR": bench.stack.vault_addr,  # pinned, as at boot (the client refuses an unpinned http Vault)
    }


def network_calls(bench: Bench, creds: dict) -> dict:
    """The client's network calls, made in process with its own HTTP code; {call: seconds}."""
    from broker.api import build_opener, post_json
    from broker.vault import VaultClient

    body = json.loads(login_for(creds, "web", bench.server_id))
    url = bench.stack.broker_url + LOGIN_PATH
    opener = build_opener(None, url)
    t = {}
    clock = time.perf_counter
    t0 = clock()
    r = post_json(opener, url, body, timeout=30)
    t["broker POST /v1/credentials/aws"] = clock() - t0
    if r.status != 200:
        raise RuntimeError(f"client calls: broker answered {r.status}: {r.body[:200]!r}")
    doc = json.loads(r.body)
    vault = VaultClient(doc["vault_addr"])
    tokens = (doc["role_id_wrap"]["token"], doc["secret_id_wrap"]["token"])
    for i, token in enumerate(tokens):
        t0 = clock()
        status, _, _ = vault.lookup_wrapping(token)
        t[f"vault sys/wrapping/lookup #{i + 1}"] = clock() - t0
        if status != 200:
            raise RuntimeError(f"client calls: lookup answered {status}")
    unwrapped = []
    for i, token in enumerate(tokens):
        t0 = clock()
        status, data, _ = vault.unwrap(token)
        t[f"vault sys/wrapping/unwrap #{i + 1}"] = clock() - t0
        if status != 200:
            raise RuntimeError(f"client calls: unwrap answered {status}")
        unwrapped.append(data)
    t0 = clock()
    vault.approle_login(unwrapped[0]["role_id"], unwrapped[1]["secret_id"])
    t["vault auth/approle/login"] = clock() - t0
    return t


def _wall(argv, cwd, env, reps) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=60, check=True)
        out.append(time.perf_counter() - t0)
    return median(out) * 1000


def client(bench: Bench, tree: Path, reps: int, python: str = sys.executable, say=print) -> dict:
    env_base = {"PATH": os.environ.get("PATH", "")}
    runs, calls = [], []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        for i in range(reps):
            creds = bench.stack.assume("demo-node", bench.instance_id)
            sink = Path(tmp) / f"token-{i}"
            argv = [python, "-m", "broker", "login", "--role", "web", "--sink", str(sink), "--json"]
            t0 = time.time()
            p0 = time.perf_counter()
            proc = subprocess.run(argv, cwd=tree, env=_client_env(bench, creds), capture_output=True,
                                  text=True, timeout=120)
            p1 = time.perf_counter()
            if proc.returncode != 0 or not sink.exists() or not sink.read_text().strip():
                raise RuntimeError(f"broker login failed ({proc.returncode}): {proc.stderr[-1500:]}")
            runs.append({"to_token_ms": (sink.stat().st_mtime - t0) * 1000, "wall_ms": (p1 - p0) * 1000})
            calls.append(network_calls(bench, bench.stack.assume("demo-node", bench.instance_id)))
    per_call = {name: median(c[name] for c in calls) * 1000 for name in calls[0]}
    network_ms = median(sum(c.values()) for c in calls) * 1000
    version = subprocess.run([python, "-X", "importtime", "-m", "broker", "--version"], cwd=tree, env=env_base,
                             capture_output=True, text=True, timeout=60)
    imports_ms = sum(s for _, s, _, _ in parse_importtime(version.stderr)) / 1000
    startup = {
        "version_wall_ms": _wall([python, "-m", "broker", "--version"], tree, env_base, max(3, reps)),
        "python_pass_wall_ms": _wall([python, "-c", "pass"], tree, env_base, max(3, reps)),
        "version_imports_ms": imports_ms,
    }
    to_token = median(r["to_token_ms"] for r in runs)
    say(f"benchmark 5: {reps} client runs")
    return {
        "reps": reps,
        "login_to_token_ms": to_token,
        "login_wall_ms": median(r["wall_ms"] for r in runs),
        "network_sum_ms": network_ms,
        "network_calls_ms": per_call,
        "startup": startup,
        "client_own_ms": to_token - network_ms - startup["version_wall_ms"],
    }
