"""Benchmark 10: one boot as the machine feels it, ``broker login --role web --sink FILE``.

Each boot is the real client as a process (env as bench/client.py: only an assumed-role
session's credentials, made before the timed part), against the broker under
``chalice local`` whose backends sit behind the latency proxies (devstack/latency.py)
with the in-region delays (DEFAULT_DELAYS_MS, mode ``pad``). Per boot it counts:

- ``broker_calls_per_boot``: HTTP requests the client made to the broker, counted at a
  proxy in front of ``chalice local`` (no delay on it);
- ``sts_calls_per_boot``, ``ec2_calls_per_boot``, ``iam_calls_per_boot``,
  ``dynamodb_calls_per_boot``: the broker's AWS requests, counted at the AWS proxy (the
  forwarded proof is STS). IAM is read when the broker's fact cache (5 s) has expired:
  per Lambda environment, not per boot;
- ``vault_requests_per_boot``: requests in OpenBao's audit log (the broker's through its
  proxy and the client's, which go to Vault directly), the benchmark's own
  ``sys/metrics`` reads left out;
- ``vault_storage_ops_per_boot``: OpenBao's barrier puts plus deletes (``sys/metrics``,
  prometheus counters ``vault_barrier_put_count`` / ``vault_barrier_delete_count``): the
  writes its storage takes, reads left out (reported beside it as ``vault_storage_gets``);
- ``time_to_token_ms``: from just before the spawn to the sink file's mtime (the token
  on disk), p50 and p95; ``exit_ms`` beside it: to the process's exit (what runs after
  the hand-off, such as the token registration, is in exit_ms only).

The figures are means over the boots (unrounded); the first boot after start-up pays
the broker's own Vault login and its caches, so one boot is made, uncounted, first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from .env import Bench, latency_module
from .stats import summary_ms

BACKENDS = ("broker", "sts", "ec2", "iam", "dynamodb", "vault")


def _client_env(bench: Bench, broker_url: str, creds: dict) -> dict:
    return {
        "PATH": os.environ.get("PATH", ""),
        "BROKER_URL": broker_url,
        "BROKER_SERVER_ID": bench.server_id,
        "AWS_ACCESS_KEY_ID": creds["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
        "AWS_SESSION_TOKEN": creds["session_token"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "VAULT_ADDR": bench.stack.vault_addr,
    }


def _barrier(vault_addr: str) -> Counter:
    """OpenBao's cumulative barrier (storage) operation counts, from sys/metrics."""
    req = urllib.request.Request(vault_addr + "/v1/sys/metrics?format=prometheus",
                                 headers={"X-Vault-Token": "root"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out: Counter = Counter()
    for line in text.splitlines():
        for op in ("put", "delete", "get", "list"):
            if line.startswith(f"vault_barrier_{op}_count "):
                out[op] = int(float(line.split()[1]))
    return out


def _audit_requests(path: Path, offset: int) -> tuple[list[str], int]:
    """Paths of the requests OpenBao logged after ``offset``, and the new offset."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line being written is read next time
    paths = []
    for line in data[:end].splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("type") == "request":
            p = (doc.get("request") or {}).get("path", "")
            if p != "sys/metrics":
                paths.append(p)
    return paths, offset + end


def _one_boot(bench: Bench, broker_url: str, sink: Path, python: str, tree: Path) -> dict:
    creds = bench.stack.assume("demo-node", bench.instance_id)
    argv = [python, "-m", "broker", "login", "--role", "web", "--sink", str(sink), "--json"]
    t0 = time.time()
    p0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, env=_client_env(bench, broker_url, creds), capture_output=True,
                          text=True, timeout=120)
    p1 = time.perf_counter()
    if proc.returncode != 0 or not sink.exists() or not sink.read_text().strip():
        # the client masks every secret it knows in its own output
        raise RuntimeError(f"broker login failed ({proc.returncode}): {proc.stderr[-1500:]}")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    return {"to_token_ms": (sink.stat().st_mtime - t0) * 1000, "exit_ms": (p1 - p0) * 1000,
            "warnings": warnings}


def per_boot(bench: Bench, tree: Path, boots: int, python: str = sys.executable, say=print) -> dict:
    """Calls per boot and time to token over ``boots`` real client runs."""
    lat_mod = latency_module()
    if not bench.stack.broker or bench.stack.broker.proc is None:
        raise RuntimeError("the broker is not running under chalice local")
    lat = bench.latency
    lat.set_delays(lat_mod.DEFAULT_DELAYS_MS, mode="pad")
    front = lat_mod.LatencyProxyProcess(bench.stack.broker_url, backend="broker").start()
    audit_log = Path(bench.stack.openbao.audit_log_path)
    totals: Counter = Counter()
    per_op: Counter = Counter()
    vault_paths: Counter = Counter()
    storage: Counter = Counter()
    runs, warnings = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
            _one_boot(bench, front.url, Path(tmp) / "warm", python, tree)  # the broker's login, its caches
            for i in range(boots):
                front.reset()
                lat.reset()
                before = _barrier(bench.stack.vault_addr)
                offset = audit_log.stat().st_size
                run = _one_boot(bench, front.url, Path(tmp) / f"token-{i}", python, tree)
                time.sleep(0.05)  # the audit device writes the last response after answering
                paths, _ = _audit_requests(audit_log, offset)
                after = _barrier(bench.stack.vault_addr)
                counts = lat.counts()
                broker_counts = Counter(front.counts()["counts"])
                for label, n in list(counts.items()) + list(broker_counts.items()):
                    backend = label.split(" ", 1)[0]
                    totals[backend] += n
                    per_op[label] += n
                totals["vault_audit"] += len(paths)
                vault_paths.update(paths)
                storage.update(after - before)
                runs.append(run)
                warnings += run["warnings"]
    finally:
        lat.set_delays(lat_mod.NO_DELAY)
        front.stop()
    n = len(runs)
    say(f"benchmark 10: {n} boots")
    to_token = summary_ms([r["to_token_ms"] / 1000 for r in runs])
    exit_ms = summary_ms([r["exit_ms"] / 1000 for r in runs])
    return {
        "boots": n,
        "broker_calls_per_boot": totals["broker"] / n,
        "sts_calls_per_boot": totals["sts"] / n,
        "ec2_calls_per_boot": totals["ec2"] / n,
        "iam_calls_per_boot": totals["iam"] / n,
        "dynamodb_calls_per_boot": totals["dynamodb"] / n,
        "vault_requests_per_boot": totals["vault_audit"] / n,
        "vault_requests_at_broker_proxy_per_boot": totals["vault"] / n,
        "vault_storage_ops_per_boot": (storage["put"] + storage["delete"]) / n,
        "vault_storage_puts_per_boot": storage["put"] / n,
        "vault_storage_deletes_per_boot": storage["delete"] / n,
        "vault_storage_gets_per_boot": storage["get"] / n,
        "time_to_token_ms": to_token,
        "exit_ms": exit_ms,
        "per_operation": {k: v / n for k, v in sorted(per_op.items())},
        "vault_paths": {k: v / n for k, v in sorted(vault_paths.items())},
        "client_warnings": warnings,
    }


def headlines(r: dict) -> dict:
    nan = float("nan")
    t = r.get("time_to_token_ms") or {}
    return {
        "broker_calls_per_boot": r.get("broker_calls_per_boot", nan),
        "sts_calls_per_boot": r.get("sts_calls_per_boot", nan),
        "ec2_calls_per_boot": r.get("ec2_calls_per_boot", nan),
        "dynamodb_calls_per_boot": r.get("dynamodb_calls_per_boot", nan),
        "vault_requests_per_boot": r.get("vault_requests_per_boot", nan),
        "vault_storage_ops_per_boot": r.get("vault_storage_ops_per_boot", nan),
        "time_to_token_ms_p50": t.get("p50", nan),
        "time_to_token_ms_p95": t.get("p95", nan),
    }


def main(argv=None) -> None:
    """``python -m bench.boot [BOOTS]``: this benchmark alone, on its own stack."""
    boots = int((argv or sys.argv[1:] or ["10"])[0])
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as workdir:
        bench = Bench(workdir=workdir, say=lambda m: print(m, file=sys.stderr))
        try:
            bench.start()
            bench.warm()
            from .env import tree

            r = per_boot(bench, tree(), boots, say=lambda m: print(m, file=sys.stderr))
        finally:
            bench.close()
    print(json.dumps({k: v for k, v in r.items() if k != "client_warnings"}, indent=2), file=sys.stderr)
    for k, v in headlines(r).items():
        print(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}")


if __name__ == "__main__":
    main()
