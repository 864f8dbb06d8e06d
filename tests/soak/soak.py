"""Soak: steady issuance through ``chalice local`` for a while, with faults injected at
intervals, then a report. Not part of the test suite: ``make soak`` runs it.

    SOAK_SECONDS=600 SOAK_RATE=4 SOAK_FAULT_EVERY=60 python -m tests.soak.soak [--out report.json]

It starts its own local stack (OpenBao dev, moto, the simulated Google) and a broker
under ``chalice local`` whose backends are reached through fault proxies
(devstack/faultproxy.py). Callers (threads) send AWS logins (batch jobs, and web
instances with EC2 facts) at SOAK_RATE per second; a failed attempt is retried like
the real client does (a fresh proof, at least one second later, waiting Retry-After
capped at 2 s to keep the load steady) for up to 30 s. Every SOAK_FAULT_EVERY seconds
one fault, in turn, lasts a few seconds: Vault sealed, Vault slow (past the broker's
timeout), DynamoDB throttling, STS answering 500, DynamoDB connections reset,
Vault stopped (restarted with the same IDs).

Reported: success rate (attempts and logical requests), latency percentiles per
minute, the broker process's RSS over time (and its growth after warm-up), the
audit reconciliation (every answered attempt has its record; records exist only
for attempts sent; missing ones only while DynamoDB was down), and a secret scan of
the broker's log for the tokens it issued and the proofs it was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devstack import Stack  # noqa: E402
from devstack import aws as stack_aws  # noqa: E402
from devstack.broker import ChaliceLocal  # noqa: E402
from devstack.faultproxy import STS_INTERNAL_ERROR, THROTTLED, Fault, FaultProxy, dynamodb, sts  # noqa: E402
from tests.secret_scan import SecretScanner  # noqa: E402
from tests.sigv4 import signed_login  # noqa: E402


CALLERS = 8  # chalice local's listen backlog is 5, but callers spend most of their time between requests
WEB_EVERY = 12
WEB_INSTANCES = 16


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000, 1)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, seconds, rate, fault_every, workdir):
        self.seconds, self.rate, self.fault_every = seconds, rate, fault_every
        self.workdir = Path(workdir)
        self.attempts = []  # dicts
        self.faults = []  # (name, start, end)
        self.rss = []  # (t, KiB)
        self.lock = threading.Lock()
        self.scanner = SecretScanner()
        self.run = f"soak{int(time.time()) % 100000}"
        self.stop_at = None

    # ---- setup ------------------------------------------------------------------------------

    def start(self):
        print(f"soak: starting the local stack in {self.workdir} ...", flush=True)
        self.stack = Stack.start(self.workdir / "stack")
        self.vault = FaultProxy(self.stack.vault_addr).start()
        self.aws = FaultProxy(self.stack.aws_endpoint_url).start()
        self.sts = FaultProxy(self.stack.aws_endpoint_url).start()
        env = {**self.stack.broker_env(), "BROKER_VAULT_ADDR": self.vault.url,
               "BROKER_VAULT_PUBLIC_ADDR": self.stack.vault_addr, "BROKER_AWS_ENDPOINT_URL": self.aws.url,
               "BROKER_STS_FORWARD_URL": self.sts.url}
        self.broker = ChaliceLocal(self.workdir, env, url_env=("BROKER_GCP_AUDIENCE",))
        self.broker.start()
        self.broker.wait_ready()
        self.server_id = env["BROKER_SERVER_ID"]
        # Every logical request is another machine (the per-identity rate limit is 20/h): a new
        # demo-batch session each time, and 1 in WEB_EVERY a web instance from a pool, in turn.
        self.instances = [self.stack.launch_instance({"vault-role": "web"}) for _ in range(WEB_INSTANCES)]
        print(f"soak: broker {self.broker.url} (pid {self.broker.pid}); {self.seconds}s at {self.rate}/s, "
              f"a fault every {self.fault_every}s", flush=True)

    def stop(self):
        for part in ("broker", "vault", "aws", "sts", "stack"):
            obj = getattr(self, part, None)
            if obj is not None:
                try:
                    obj.stop()
                except Exception:
                    pass

    # ---- load -------------------------------------------------------------------------------

    def identity(self, ticket):
        if ticket % WEB_EVERY == WEB_EVERY - 1:
            instance = self.instances[(ticket // WEB_EVERY) % len(self.instances)]
            role, creds = "web", self.stack.assume("demo-node", instance)
        else:
            role, creds = "batch", self.stack.assume("demo-batch", f"{self.run}-{ticket}")
        self.scanner.register(creds["secret_access_key"], "a session's secret key")
        self.scanner.register(creds["session_token"], "a session token")
        return role, creds

    def caller(self, index, tickets):
        session = requests.Session()
        session.trust_env = False
        while True:
            ticket = tickets.get()
            if ticket is None:
                return
            logical = ticket
            role, creds = self.identity(ticket)
            last_second = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                while int(time.time()) == last_second:  # the same second would sign the same proof
                    time.sleep(0.02)
                last_second = int(time.time())
                body = signed_login(creds, role, self.server_id)
                self.scanner.register_proof(json.dumps(body).encode(), "soak")
                started = time.monotonic()
                try:
                    r = session.post(f"{self.broker.url}/v1/credentials/aws", json=body, timeout=35)
                    status, doc, retry_after = r.status_code, r.json(), r.headers.get("Retry-After")
                    self.scanner.broker_answer("POST /v1/credentials/aws", status, r.content)
                except (requests.RequestException, ValueError) as e:
                    status, doc, retry_after = 0, {"error": {"code": type(e).__name__}}, None
                finished = time.monotonic()
                with self.lock:
                    self.attempts.append({"logical": logical, "role": role, "start": started, "end": finished,
                                          "status": status, "request_id": doc.get("request_id"),
                                          "code": (doc.get("error") or {}).get("code")})
                if status == 200:
                    break
                if status not in (0, 429, 502, 503, 504):
                    break  # not retried by the real client either
                time.sleep(min(float(retry_after or 1), 2.0))

    def load(self):
        import queue

        tickets = queue.Queue()
        workers = [threading.Thread(target=self.caller, args=(i, tickets), daemon=True) for i in range(CALLERS)]
        for w in workers:
            w.start()
        n = 0
        while time.monotonic() < self.stop_at:
            tickets.put(n)
            n += 1
            time.sleep(1 / self.rate)
        for _ in workers:
            tickets.put(None)
        for w in workers:
            w.join(timeout=40)

    # ---- faults and memory -----------------------------------------------------------------

    def fault_plan(self):
        s = self.stack
        return [
            ("vault sealed", s.seal_vault, s.unseal_vault, 5),
            ("vault slow (7 s delay > 5 s timeout)", lambda: self.vault.set(Fault("delay", seconds=7)),
             self.vault.clear, 8),
            ("dynamodb throttling", lambda: self.aws.set(Fault("status", match=dynamodb(), status=400, body=THROTTLED,
                                                                headers={"Content-Type": "application/x-amz-json-1.0"})),
             self.aws.clear, 5),
            ("sts answers 500", lambda: self.sts.set(Fault("status", match=sts(), status=500, body=STS_INTERNAL_ERROR)),
             self.sts.clear, 5),
            ("dynamodb connections reset", lambda: self.aws.set(Fault("reset", match=dynamodb())), self.aws.clear, 5),
            ("vault stopped", s.stop_vault, s.start_vault, 5),
        ]

    def inject(self, t0):
        plan = self.fault_plan()
        i = 0
        while True:
            at = t0 + self.fault_every * (i + 1) - self.fault_every / 2
            if at + 15 > self.stop_at:
                return
            time.sleep(max(0, at - time.monotonic()))
            name, begin, end, duration = plan[i % len(plan)]
            start = time.monotonic()
            begin()
            time.sleep(duration)
            end()
            with self.lock:
                self.faults.append((name, start, time.monotonic()))
            print(f"soak: t={start - t0:5.0f}s fault: {name} ({time.monotonic() - start:.1f}s)", flush=True)
            i += 1

    def sample_memory(self, t0):
        while time.monotonic() < self.stop_at + 5:
            kib = rss_kib(self.broker.pid)
            if kib:
                self.rss.append((time.monotonic() - t0, kib))
            time.sleep(5)

    # ---- the run and the report -----------------------------------------------------------

    def run_soak(self):
        t0 = time.monotonic()
        self.stop_at = t0 + self.seconds
        threads = [threading.Thread(target=self.inject, args=(t0,), daemon=True),
                   threading.Thread(target=self.sample_memory, args=(t0,), daemon=True)]
        for t in threads:
            t.start()
        self.load()
        for t in threads:
            t.join(timeout=30)
        self.t0 = t0
        return self.report()

    def _during(self, t, names):
        return any(n in names and s - 0.5 <= t <= e + 0.5 for n, s, e in self.faults)

    def report(self):
        t0 = self.t0
        attempts = self.attempts
        per_minute = defaultdict(list)
        for a in attempts:
            per_minute[int((a["start"] - t0) // 60)].append(a)
        minutes = []
        for m in sorted(per_minute):
            items = per_minute[m]
            ok = [a["end"] - a["start"] for a in items if a["status"] == 200]
            minutes.append({"minute": m + 1, "attempts": len(items), "ok": len(ok),
                            "503": sum(a["status"] == 503 for a in items),
                            "other": sum(a["status"] not in (200, 503) for a in items),
                            "p50_ms": percentile(ok, 50), "p95_ms": percentile(ok, 95), "p99_ms": percentile(ok, 99),
                            "max_ms": percentile(ok, 100)})
        logical = defaultdict(list)
        for a in attempts:
            logical[a["logical"]].append(a["status"])
        logical_ok = sum(200 in v for v in logical.values())

        # audit reconciliation
        ddb = self.stack.client("dynamodb")
        records = {}
        for page in ddb.get_paginator("scan").paginate(TableName=stack_aws.AUDIT_TABLE):
            for item in page["Items"]:
                if f"/{self.run}-" in item.get("principal", {}).get("S", ""):
                    records[item["request_id"]["S"]] = item["outcome"]["S"]
        # Records the scan could not attribute to the run: the web instance's session is named after
        # the instance, and a request that failed before its proof was verified has no principal.
        unattributed = {a["request_id"] for a in attempts if a["request_id"] and a["request_id"] not in records}
        for rid in unattributed:
            item = ddb.get_item(TableName=stack_aws.AUDIT_TABLE, Key={"request_id": {"S": rid}}).get("Item")
            if item:
                records[rid] = item["outcome"]["S"]
        answered = [a for a in attempts if a["request_id"]]
        missing = [a for a in answered if a["request_id"] not in records]
        unexplained_missing = [a for a in missing if not self._during(
            a["start"], {"dynamodb connections reset", "dynamodb throttling"})
            and not self._during(a["end"], {"dynamodb connections reset", "dynamodb throttling"})]
        wrong_outcome = [a for a in answered if a["request_id"] in records and
                         records[a["request_id"]] != ("issued" if a["status"] == 200 else
                                                      "error" if a["status"] >= 500 else "denied")]
        sent_ids = {a["request_id"] for a in answered}
        # Records of attempts whose answer the caller never got (connection cut, timeout): fine when
        # not issued; an issued one is a credential nobody received (still wrapped, expires unused).
        unanswered = [outcome for rid, outcome in records.items() if rid not in sent_ids]

        rss = self.rss
        warm = [k for t, k in rss if t >= min(120, self.seconds / 3)]
        rss_summary = {"samples": len(rss), "start_kib": rss[0][1] if rss else None,
                       "after_warmup_kib": warm[0] if warm else None, "end_kib": rss[-1][1] if rss else None,
                       "max_kib": max(k for _, k in rss) if rss else None,
                       "growth_after_warmup_pct": round(100 * (warm[-1] - warm[0]) / warm[0], 1) if len(warm) > 1 else None,
                       "series": [(round(t), k) for t, k in rss[::max(1, len(rss) // 20)]]}
        log_hits = []
        self.scanner.log_dirs.add(self.workdir)
        for hit in self.scanner.scan():
            log_hits.append(str(hit))
        return {
            "seconds": self.seconds, "rate_per_s": self.rate, "fault_every_s": self.fault_every,
            "attempts": len(attempts), "attempts_ok": sum(a["status"] == 200 for a in attempts),
            "attempt_success_rate": round(sum(a["status"] == 200 for a in attempts) / max(1, len(attempts)), 4),
            "logical_requests": len(logical), "logical_ok": logical_ok,
            "logical_success_rate": round(logical_ok / max(1, len(logical)), 4),
            "statuses": {str(s): sum(a["status"] == s for a in attempts) for s in sorted({a["status"] for a in attempts})},
            "codes": {c: sum(a["code"] == c for a in attempts) for c in sorted({a["code"] for a in attempts if a["code"]})},
            "faults": [{"name": n, "at_s": round(s - t0), "seconds": round(e - s, 1)} for n, s, e in self.faults],
            "per_minute": minutes,
            "rss": rss_summary,
            "audit": {"answered_attempts": len(answered), "records": len(records), "missing": len(missing),
                      "missing_outside_dynamodb_faults": len(unexplained_missing),
                      "wrong_outcome": len(wrong_outcome), "records_without_an_answer": len(unanswered),
                      "issued_without_an_answer": unanswered.count("issued"),
                      "unanswered_attempts": sum(1 for a in attempts if not a["request_id"])},
            "secret_scan_hits": log_hits,
        }


def print_report(r):
    print(f"\nsoak: {r['seconds']}s at {r['rate_per_s']}/s, faults every {r['fault_every_s']}s")
    print(f"  attempts {r['attempts']}, ok {r['attempts_ok']} ({100 * r['attempt_success_rate']:.2f}%), "
          f"statuses {r['statuses']}")
    print(f"  logical requests {r['logical_requests']}, ok {r['logical_ok']} ({100 * r['logical_success_rate']:.2f}%)")
    print("  faults: " + ", ".join(f"{f['name']} @{f['at_s']}s" for f in r["faults"]))
    print("  minute  attempts  ok   503  other  p50ms  p95ms  p99ms  maxms")
    for m in r["per_minute"]:
        print(f"  {m['minute']:>6}  {m['attempts']:>8}  {m['ok']:>4} {m['503']:>4}  {m['other']:>5}  "
              f"{m['p50_ms']!s:>5}  {m['p95_ms']!s:>5}  {m['p99_ms']!s:>5}  {m['max_ms']!s:>5}")
    rss = r["rss"]
    print(f"  broker RSS: start {rss['start_kib']} KiB, after warm-up {rss['after_warmup_kib']} KiB, "
          f"end {rss['end_kib']} KiB, max {rss['max_kib']} KiB, growth after warm-up {rss['growth_after_warmup_pct']}%")
    print(f"  audit: {r['audit']}")
    print(f"  secret scan of the logs: {'no leak' if not r['secret_scan_hits'] else r['secret_scan_hits']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "4")))
    parser.add_argument("--fault-every", type=int, default=int(os.environ.get("SOAK_FAULT_EVERY", "60")))
    parser.add_argument("--out", default=os.environ.get("SOAK_REPORT"), help="write the report (JSON) here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(args.seconds, args.rate, args.fault_every, workdir)
    try:
        soak.start()
        report = soak.run_soak()
    finally:
        soak.stop()
    print_report(report)
    out = Path(args.out) if args.out else workdir / "soak-report.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  report: {out}")
    ok = (report["logical_success_rate"] >= 0.99 and report["audit"]["missing_outside_dynamodb_faults"] == 0
          and report["audit"]["wrong_outcome"] == 0 and report["audit"]["issued_without_an_answer"] == 0
          and not report["secret_scan_hits"] and report["statuses"].get("500", 0) == 0)
    print("soak: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
