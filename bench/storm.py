"""Benchmark 4: the boot storm, and the proof that nothing was lost.

N distinct instances (one ``run_instances``, tagged vault-role=web, instance
profile demo-node), one assumed-role session each (session name = instance ID),
one signed proof each, all before the timed part. Then:

- **W separate "Lambda environments"**: W fresh Python processes (``python -c``,
  the broker's environment plus the Lambda runtime's variables, through the
  latency proxies), each cold: the storm's clock starts before they are spawned,
  so their interpreter start, ``import app`` and first issuance are in the figures.
  Each serves one request at a time through the Lambda entry point
  ``app.app(event, context)``, taking the next from one shared queue, as Lambda
  hands a burst to its execution environments.
- **In-region latencies** on every backend call (devstack/latency.py, mode ``pad``).
- **All N requests arrive at once** (the queue is full at t0): an identity's
  latency runs from t0 to its 200, queueing and retries included.
- **Faults**: the proxies inject faults into a fraction of the backend calls
  (``FAULTS`` below: throttled DynamoDB writes, Vault refusing to create a secret
  ID, cut STS connections, slow Vault answers). A request answered 503 is asked
  again with a fresh proof (at the back of the queue), up to ``MAX_ATTEMPTS``.

The callers' side: each 200 is used at once, as ``broker login`` does (its wrapping
tokens live 60 s): both tokens unwrapped, the secret ID used for an AppRole login
with its role ID (directly against OpenBao, on a pool of 2 threads in the
benchmark process). Afterwards, the reconciliation (Vault and DynamoDB read
directly, no proxy):

1. Vault's live secret-ID accessors of role ``web`` (LIST, root token) minus those
   live before the storm: what was minted during the storm and is still usable
   (a used secret ID is gone: ``num_uses=1``);
2. the audit records of the storm's instances (Scan), against each 200 (request
   ID, wrapping accessor) and each unwrapped secret ID (its accessor).

``storm_requests``: identities; ``storm_lost``: identities without a usable
credential (no 200 after the retries, no issued audit record naming the answer's
accessors, an unwrap or a login that failed); ``storm_duplicates``: identities
with more than one issued record (an issuance a take_back record names was taken back:
not counted), plus secret-ID accessors named by more than one issued record; ``storm_orphans``: secret IDs minted during the storm (live in
Vault after it) that no audit record names.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from .coldstart import LAMBDA_ENV, clean_env
from .env import NODE_ROLE, WEB_TAGS, Bench, _sigv4, tree
from .stats import summary_ms

MAX_ATTEMPTS = 6
THROTTLED = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded."})
FAULTS = [
    # DynamoDB writes throttled (botocore retries once: some requests fail, some get through)
    {"backend": "dynamodb", "operation": "PutItem", "rate": 0.08, "kind": "status", "status": 400,
     "headers": {"Content-Type": "application/x-amz-json-1.0"}, "body": THROTTLED},
    {"backend": "dynamodb", "operation": "TransactWriteItems", "rate": 0.08, "kind": "status", "status": 400,
     "headers": {"Content-Type": "application/x-amz-json-1.0"}, "body": THROTTLED},
    # Vault refuses to create a secret ID (after the role ID may have been wrapped)
    {"backend": "vault", "operation": "POST auth/approle/role/web/secret-id", "rate": 0.03, "kind": "status",
     "status": 503, "headers": {"Content-Type": "application/json"}, "body": '{"errors":["injected: Vault is sealed"]}'},
    # a slow Vault answer
    {"backend": "vault", "operation": "GET auth/approle/role/web/role-id", "rate": 0.02, "kind": "delay",
     "seconds": 0.3},
    # the proof's forward cut
    {"backend": "sts", "rate": 0.02, "kind": "reset"},
]

_WORKER = r"""
import json, os, sys, time
proto_out = os.fdopen(os.dup(1), "w", buffering=1)
log_dir = os.environ.get("BENCH_STORM_LOG_DIR")  # the broker's JSON log lines, formatted as in Lambda
log_fd = (os.open(os.path.join(log_dir, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
          if log_dir else os.open(os.devnull, os.O_WRONLY))
os.dup2(log_fd, 1)
import app
exec(PRELUDE)

class Context:
    function_name = "secret-zero-broker-bench"; function_version = "$LATEST"; memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:secret-zero-broker-bench"
    log_group_name = "/aws/lambda/secret-zero-broker-bench"; log_stream_name = "storm"; aws_request_id = "storm"
    def get_remaining_time_in_millis(self): return 30000

proto_out.write("NEXT\n")
for line in sys.stdin:
    if line.strip() == "END":
        break
    job = json.loads(line)
    t0 = time.time()
    try:
        out = app.app(job["event"], Context())
    except Exception as e:
        out = {"statusCode": None, "body": type(e).__name__}
    proto_out.write(json.dumps({"job": job["job"], "t0": t0, "t1": time.time(), "status": out.get("statusCode"),
                                "body": out.get("body")}) + "\nNEXT\n")
"""


def patient_client(bench: Bench, service: str):
    """An admin client that waits: moto takes long over 500 instances or a full table on a busy machine."""
    from botocore.config import Config

    from devstack import REGION

    return bench.stack.admin_keys.session().client(
        service, region_name=REGION, endpoint_url=bench.stack.aws_endpoint_url,
        config=Config(connect_timeout=5, read_timeout=300, retries={"max_attempts": 1}))  # no retry: a second RunInstances would launch 500 more


def launch_many(bench: Bench, n: int) -> list[str]:
    from devstack import aws as stack_aws

    ec2 = patient_client(bench, "ec2")
    ids: list[str] = []
    while len(ids) < n:  # moto takes 500 in one call; bounded anyway
        count = min(n - len(ids), 500)
        r = ec2.run_instances(
            ImageId=stack_aws.AMI_ID, MinCount=count, MaxCount=count, InstanceType="t3.micro",
            IamInstanceProfile={"Name": NODE_ROLE},
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": k, "Value": v} for k, v in WEB_TAGS.items()]}])
        ids += [i["InstanceId"] for i in r["Instances"]]
    # moto (5.x) gives the instance profile to the first instance of a multi-instance
    # run_instances only; associate it with the others, as EC2 would have.
    bare = [i for i in ids if not _has_profile(ec2, i)] if n <= 3 else ids[1:]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda iid: ec2.associate_iam_instance_profile(
            IamInstanceProfile={"Name": NODE_ROLE}, InstanceId=iid), bare))
    missing = [i for i in ids[:: max(1, n // 10)] if not _has_profile(ec2, i)]
    if missing:
        raise RuntimeError(f"instances without their instance profile: {missing}")
    return ids


def _has_profile(ec2, instance_id: str) -> bool:
    r = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return bool((r.get("IamInstanceProfile") or {}).get("Arn"))


class _Identity:
    def __init__(self, instance_id, creds):
        self.instance_id = instance_id
        self.creds = creds
        self.used_seconds: set[int] = set()
        self.attempts: list[dict] = []
        self.answer: dict | None = None  # the 200's body
        self.t_done: float | None = None
        self.used = None  # the client's unwrap + login, started as the 200 arrives


def _proof_event(bench: Bench, ident: _Identity) -> dict:
    """A fresh signed proof (a second this identity never used) as a Lambda event."""
    sigv4 = _sigv4()
    second = int(time.time())
    while second in ident.used_seconds:
        second -= 1
    ident.used_seconds.add(second)
    headers = sigv4.sign(ident.creds, server_id=bench.server_id, when=datetime.fromtimestamp(second, timezone.utc))
    body = json.dumps(sigv4.login_body("web", headers)).encode()
    return bench.json_event(body)


def _vault_accessors(bench: Bench) -> set[str]:
    import hvac.exceptions

    try:
        data = bench.stack.vault().list("auth/approle/role/web/secret-id")
    except hvac.exceptions.InvalidPath:  # none live
        return set()
    return set(((data or {}).get("data") or {}).get("keys") or [])


_sessions = threading.local()


def use_credentials(vault_addr: str, answer: dict) -> tuple[str, str | None]:
    """What the client does with a 200 at once: unwrap both tokens (their TTL is 60 s)
    and log in with the secret ID. Returns (outcome, the unwrapped secret-ID accessor)."""
    import requests

    http = getattr(_sessions, "http", None)
    if http is None:
        http = _sessions.http = requests.Session()
        http.trust_env = False
    try:
        r1 = http.post(f"{vault_addr}/v1/sys/wrapping/unwrap",
                       headers={"X-Vault-Token": answer["role_id_wrap"]["token"]}, timeout=10)
        r2 = http.post(f"{vault_addr}/v1/sys/wrapping/unwrap",
                       headers={"X-Vault-Token": answer["secret_id_wrap"]["token"]}, timeout=10)
        if r1.status_code != 200 or r2.status_code != 200:
            return "unwrap failed", None
        role_id = r1.json()["data"]["role_id"]
        sid = r2.json()["data"]
        r3 = http.post(f"{vault_addr}/v1/auth/approle/login",
                       json={"role_id": role_id, "secret_id": sid["secret_id"]}, timeout=10)
        if r3.status_code != 200 or not (r3.json().get("auth") or {}).get("client_token"):
            return "login failed", sid.get("secret_id_accessor")
        return "ok", sid.get("secret_id_accessor")
    except Exception as e:  # noqa: BLE001 - counted as lost
        return f"error {type(e).__name__}", None


def storm(bench: Bench, n: int, workers: int, say=print, faults: list | None = None) -> dict:
    faults = FAULTS if faults is None else faults
    t_prep = time.perf_counter()
    ids = launch_many(bench, n)
    with ThreadPoolExecutor(4) as pool:  # sts:AssumeRole against moto, before the timed part
        creds = list(pool.map(lambda iid: bench.stack.assume(NODE_ROLE, iid), ids))
    idents = [_Identity(i, c) for i, c in zip(ids, creds)]
    jobs: queue.Queue = queue.Queue()
    for k, ident in enumerate(idents):
        jobs.put((k, _proof_event(bench, ident)))
    before = _vault_accessors(bench)
    prep = time.perf_counter() - t_prep
    say(f"benchmark 4: {n} instances, sessions and proofs ready in {prep:.1f} s; storm with {workers} "
        f"cold processes, faults {'on' if faults else 'off'}")

    lat = bench.latency
    from .stacklatency import in_region_delays

    lat.set_delays(in_region_delays(), mode="pad")
    lat.set_faults(faults)
    lat.reset()
    env = clean_env({**bench.broker_env(), **LAMBDA_ENV})
    import tempfile

    # the workers' broker logs, kept for what the reconciliation finds (a duplicate's story)
    log_dir = env["BENCH_STORM_LOG_DIR"] = tempfile.mkdtemp(prefix="bench-storm-logs-")
    lock = threading.Lock()
    pending = [n]  # identities neither answered 200 nor out of attempts
    statuses: Counter = Counter()
    worker_errors: list[str] = []
    # the callers' side: each 200 is unwrapped and used at once, as `broker login` does
    # (directly against OpenBao, not through the proxies)
    clients = ThreadPoolExecutor(2)

    def finish_one():
        with lock:
            pending[0] -= 1

    def serve(proc):
        """Feed one worker process: a job per NEXT, END when every identity is settled."""
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    r = json.loads(line)
                    ident = idents[r["job"]]
                    with lock:
                        statuses[str(r["status"])] += 1
                    ident.attempts.append({"status": r["status"], "t0": r["t0"], "t1": r["t1"]})
                    if r["status"] == 200:
                        ident.answer = json.loads(r["body"])
                        ident.t_done = r["t1"]
                        ident.used = clients.submit(use_credentials, bench.stack.vault_addr, ident.answer)
                        finish_one()
                    elif len(ident.attempts) >= MAX_ATTEMPTS:
                        finish_one()
                    else:  # asked again, with a fresh proof, at the back of the queue
                        jobs.put((r["job"], _proof_event(bench, ident)))
                    continue
                if line.strip() != "NEXT":
                    continue
                while True:
                    try:
                        job, event = jobs.get(timeout=0.05)
                        break
                    except queue.Empty:
                        with lock:
                            done = pending[0] == 0
                        if done:
                            job = None
                            break
                if job is None:
                    proc.stdin.write("END\n")
                    proc.stdin.flush()
                    return
                proc.stdin.write(json.dumps({"job": job, "event": event}) + "\n")
                proc.stdin.flush()
        except Exception as e:  # noqa: BLE001 - reported, the storm's check counts the rest as lost
            worker_errors.append(f"{type(e).__name__}: {e}")

    pids = {"moto": bench.stack.moto.pid, "openbao": bench.stack.openbao.pid}
    cpu0 = {name: _proc_cpu(pid) for name, pid in pids.items()}
    t0 = time.time()
    from .env import TUNED_CLIENTS_PRELUDE

    code = f"PRELUDE = {TUNED_CLIENTS_PRELUDE!r}\n" + _WORKER
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tree(), env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
             for _ in range(workers)]
    feeders = [threading.Thread(target=serve, args=(p,), daemon=True) for p in procs]
    for f in feeders:
        f.start()
    for f in feeders:
        f.join()
    wall = time.time() - t0
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.returncode:
            worker_errors.append(f"a worker exited {p.returncode}: {p.stderr.read()[-500:]}")
    cpu1 = {name: _proc_cpu(pid) for name, pid in pids.items()}
    clients.shutdown(wait=True)
    faulted = lat.faulted()
    lat.set_faults([])
    for p in procs:
        p.stdout.close()
        p.stdin.close()
        p.stderr.close()

    latencies = [ident.t_done - t0 for ident in idents if ident.t_done is not None]
    attempts = Counter(len(ident.attempts) for ident in idents)
    say(f"benchmark 4: {n} identities settled in {wall:.1f} s; reconciling")
    check = reconcile(bench, idents, before)
    cpu_per_issuance = {name: (cpu1[name] - cpu0[name]) * 1000 / n
                        for name in pids if cpu0[name] is not None and cpu1[name] is not None}
    return {
        "requests": n,
        "workers": workers,
        "prep_seconds": prep,
        "seconds": wall,
        "throughput_rps": len(latencies) / wall if wall else float("nan"),
        "latency_ms": summary_ms(latencies),
        "first_answer_ms": min((ident.t_done - t0) * 1000 for ident in idents if ident.t_done) if latencies else None,
        "statuses": dict(statuses),
        "attempts_per_identity": {str(k): v for k, v in sorted(attempts.items())},
        "faults_injected": dict(faulted),
        "cpu_ms_per_issuance": cpu_per_issuance,
        "worker_errors": worker_errors,
        "worker_logs": log_dir,
        "lost": check["lost"],
        "duplicates": check["duplicates"],
        "orphans": check["orphans"],
        "check": check,
    }


def reconcile(bench: Bench, idents: list[_Identity], vault_before: set[str]) -> dict:
    t0 = time.perf_counter()
    vault_new = _vault_accessors(bench) - vault_before

    # the storm's audit records
    # the audit table holds every record of the run's benchmarks by now: small pages,
    # only the attributes the check reads
    db = patient_client(bench, "dynamodb")
    table = bench.stack.broker_env()["BROKER_AUDIT_TABLE"]
    storm_instances = {ident.instance_id for ident in idents}
    records = defaultdict(list)
    kwargs = {"TableName": table, "Limit": 300,
              "ProjectionExpression": "request_id, instance, outcome, code, #a, related_request_id, reason, "
                                      "secret_id_accessor, secret_id_wrap_accessor",
              "ExpressionAttributeNames": {"#a": "action"}}
    for _ in range(100_000):
        page = db.scan(**kwargs)
        for item in page.get("Items", []):
            inst = item.get("instance", {}).get("S")
            if inst in storm_instances:
                records[inst].append({k: v.get("S") for k, v in item.items() if "S" in v})
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    named = Counter(r["secret_id_accessor"] for recs in records.values() for r in recs if r.get("secret_id_accessor"))
    issued_named = Counter(r["secret_id_accessor"] for recs in records.values() for r in recs
                           if r.get("outcome") == "issued" and r.get("secret_id_accessor"))

    # every credential was used as it arrived (use_credentials)
    answered = [ident for ident in idents if ident.answer]
    used = {ident.instance_id: ident.used.result() for ident in answered}
    unwrapped = Counter(acc for _, acc in used.values() if acc)

    lost_reasons: Counter = Counter()
    duplicates = 0
    duplicate_detail = []
    # An issuance taken back after its record was written (past its window, its quarantine keys
    # unreadable: chalicelib/pipeline/issuance.py) is named by a take_back record: its wrapping
    # tokens were spent and its secret ID destroyed, so it is no second credential.
    taken_back = {r.get("related_request_id") for recs in records.values() for r in recs
                  if r.get("action") == "take_back"}
    for ident in idents:
        issued = [r for r in records.get(ident.instance_id, []) if r.get("outcome") == "issued"
                  and r.get("request_id") not in taken_back]
        duplicates += max(0, len(issued) - 1)
        if len(issued) > 1 and len(duplicate_detail) < 10:  # what the identity's records say
            duplicate_detail.append([{k: (v[:140] if k == "reason" else v) for k, v in r.items()
                                      if k in ("request_id", "outcome", "code", "action", "related_request_id", "reason")}
                                     for r in records[ident.instance_id]])
        if not ident.answer:
            lost_reasons["no 200 after retries"] += 1
            continue
        mine = [r for r in issued if r.get("request_id") == ident.answer.get("request_id")]
        if not mine or mine[0].get("secret_id_wrap_accessor") != ident.answer["secret_id_wrap"]["accessor"]:
            lost_reasons["200 without its issued audit record"] += 1
            continue
        outcome, accessor = used[ident.instance_id]
        if outcome != "ok":
            lost_reasons[outcome] += 1
        elif accessor != mine[0].get("secret_id_accessor"):
            lost_reasons["the secret ID is not the one recorded"] += 1
    duplicates += sum(c - 1 for c in issued_named.values() if c > 1)
    duplicates += sum(c - 1 for c in unwrapped.values() if c > 1)  # one secret ID handed out twice
    # live after the storm and named by no record (the ones used at once are gone from
    # Vault: single use; they were checked against their records above)
    orphans = sorted(vault_new - set(named))
    return {
        "seconds": time.perf_counter() - t0,
        "answered_200": len(answered),
        "vault_new_accessors_live": len(vault_new),
        "audit_records": sum(len(v) for v in records.values()),
        "audit_outcomes": dict(Counter(r.get("outcome") for recs in records.values() for r in recs)),
        "issued_records": sum(issued_named.values()),
        "used_ok": sum(1 for o, _ in used.values() if o == "ok"),
        "lost_reasons": dict(lost_reasons),
        "lost": sum(lost_reasons.values()),
        "duplicates": duplicates,
        "duplicate_detail": duplicate_detail,
        "orphans": len(orphans),
        # live secret IDs named only by a failure record (taken back but not destroyed)
        "recorded_not_issued_live": len(vault_new & (set(named) - set(issued_named))),
        # live secret IDs of issued records: delivered, yet not used up by the login
        "issued_still_live": len(vault_new & set(issued_named)),
    }


def _proc_cpu(pid) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; 10 ms ticks: use over a long span)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None
