"""Benchmark 4: the boot storm.

N distinct instances (one ``run_instances`` with MinCount = MaxCount = N, tagged
vault-role=web, instance profile demo-node), one assumed-role session per
instance (session name = instance ID, as EC2 names them), one proof each, all
made before the timed part. Then all N requests are handed at once to a pool of
T threads calling the Lambda entry point in process (``app.app(event, context)``,
one shared service, as T concurrent execution environments would be if they
shared one process; see ``env.ThreadLocalRequests``).

Afterwards, the check: every request answered 200 with two wrapping tokens;
every request ID has its audit record (DynamoDB GetItem, admin keys, consistent
read) with outcome ``issued``; the audit table holds exactly one record per
storm instance (a Scan); no secret ID accessor and no wrapping accessor appears
twice. ``storm_lost`` counts requests without a 200 or without their issued
audit record; ``storm_duplicates`` counts repeated accessors plus extra audit
records.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from .env import NODE_ROLE, WEB_TAGS, Bench, ThreadLocalRequests, login_for
from .stats import summary_ms


def launch_many(bench: Bench, n: int) -> list[str]:
    from devstack import aws as stack_aws

    ec2 = bench.stack.client("ec2")
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


def storm(bench: Bench, n: int, threads: int, say=print) -> dict:
    t_prep = time.perf_counter()
    ids = launch_many(bench, n)
    with ThreadPoolExecutor(4) as pool:  # sts:AssumeRole against moto, before the timed part
        creds = list(pool.map(lambda iid: bench.stack.assume(NODE_ROLE, iid), ids))
    events = [bench.lambda_event(login_for(c, "web", bench.server_id)) for c in creds]
    prep = time.perf_counter() - t_prep
    say(f"benchmark 4: {n} instances, sessions and proofs ready in {prep:.1f} s; storm with {threads} threads")

    results: list = [None] * n

    def one(i):
        event, context = events[i]
        t0 = time.perf_counter()
        try:
            out = bench.invoke(event, context)
        except Exception as e:  # noqa: BLE001 - counted as lost
            out = {"statusCode": None, "body": f"{type(e).__name__}: {e}"}
        t1 = time.perf_counter()
        results[i] = (t0, t1, out)

    pids = {"moto": bench.stack.moto.pid, "openbao": bench.stack.openbao.pid}
    with ThreadLocalRequests(bench.app_module.app):
        with ThreadPoolExecutor(threads) as pool:
            cpu0 = {name: _proc_cpu(pid) for name, pid in pids.items()}
            own0 = time.process_time()
            started = time.perf_counter()
            list(pool.map(one, range(n)))
            finished = time.perf_counter()
            own1 = time.process_time()
            cpu1 = {name: _proc_cpu(pid) for name, pid in pids.items()}
    wall = finished - started
    cpu_per_issuance = {name: (cpu1[name] - cpu0[name]) * 1000 / n
                        for name in pids if cpu0[name] is not None and cpu1[name] is not None}
    cpu_per_issuance["benchmark process (the handler)"] = (own1 - own0) * 1000 / n

    statuses = Counter()
    ok = []
    for i, (t0, t1, out) in enumerate(results):
        statuses[out.get("statusCode")] += 1
        if out.get("statusCode") == 200:
            ok.append((i, json.loads(out["body"])))
    latencies = [t1 - t0 for t0, t1, _ in results]

    check = verify(bench, ids, ok)
    lost = n - check["issued_with_record"]
    duplicates = check["duplicate_accessors"] + check["extra_audit_records"]
    say(f"benchmark 4: {n} requests in {wall:.2f} s; verified in {check['seconds']:.1f} s")
    return {
        "requests": n,
        "threads": threads,
        "prep_seconds": prep,
        "seconds": wall,
        "throughput_rps": n / wall if wall else float("nan"),
        "latency_ms": summary_ms(latencies),
        "cpu_ms_per_issuance": cpu_per_issuance,
        "statuses": {str(k): v for k, v in statuses.items()},
        "lost": lost,
        "duplicates": duplicates,
        "check": check,
    }


def _proc_cpu(pid) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; 10 ms ticks: use over a long span)."""
    import os

    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def verify(bench: Bench, instance_ids: list[str], ok: list[tuple[int, dict]]) -> dict:
    t0 = time.perf_counter()
    db = bench.stack.client("dynamodb")
    table = bench.stack.broker_env()["BROKER_AUDIT_TABLE"]
    accessors = Counter()
    issued_with_record = 0
    missing_records = 0
    by_instance = {}

    def get(item):
        i, doc = item
        return i, doc, db.get_item(TableName=table, Key={"request_id": {"S": doc["request_id"]}},
                                   ConsistentRead=True).get("Item")

    with ThreadPoolExecutor(4) as pool:
        fetched = list(pool.map(get, ok))
    for i, doc, item in fetched:
        wraps_ok = all(doc.get(k, {}).get("token") for k in ("role_id_wrap", "secret_id_wrap"))
        for k in ("role_id_wrap", "secret_id_wrap"):
            accessors["wrap:" + doc[k]["accessor"]] += 1
        if not item:
            missing_records += 1
            continue
        rec = {k: v.get("S") for k, v in item.items() if "S" in v}
        if rec.get("secret_id_accessor"):
            accessors["secret:" + rec["secret_id_accessor"]] += 1
        if (wraps_ok and rec.get("outcome") == "issued" and rec.get("instance") == instance_ids[i]
                and rec.get("secret_id_wrap_accessor") == doc["secret_id_wrap"]["accessor"]):
            issued_with_record += 1
        by_instance[instance_ids[i]] = rec

    # exactly one record per storm instance in the whole table (nothing extra, e.g. an
    # error record written beside an issued one)
    storm = set(instance_ids)
    per_instance = Counter()
    kwargs = {"TableName": table, "ProjectionExpression": "request_id, instance"}
    for _ in range(10_000):  # bounded pagination
        page = db.scan(**kwargs)
        for item in page.get("Items", []):
            inst = item.get("instance", {}).get("S")
            if inst in storm:
                per_instance[inst] += 1
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    extra = sum(c - 1 for c in per_instance.values() if c > 1)
    return {
        "seconds": time.perf_counter() - t0,
        "answered_200": len(ok),
        "issued_with_record": issued_with_record,
        "missing_audit_records": missing_records,
        "instances_with_records": len(per_instance),
        "extra_audit_records": extra,
        "duplicate_accessors": sum(c - 1 for c in accessors.values() if c > 1),
        "secret_id_accessors": sum(1 for k in accessors if k.startswith("secret:")),
    }
