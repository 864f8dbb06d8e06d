"""Benchmark 8: botocore's CPU per call, the broker's clients against botocore's defaults.

The broker's kinds of calls (EC2 DescribeInstances, IAM GetInstanceProfile and
GetRole, DynamoDB PutItem and GetItem), made with the broker's keys against
the stack (through the latency proxies, no delay), by clients built with:

1. botocore with its default settings (a session of its own);
2. the broker's clients: ``chalicelib.aws_clients.aws_client_factory`` (one shared
   session, its timeouts and retries, a fixed User-Agent, the request-ID check);
3. in an older tree measured with ``--rev``, its lean clients (``chalicelib/lean_aws/``).

Process CPU (``time.process_time``) per round of the five calls, the variants
alternating within each round (rotating order) so that load hits them alike;
the p50 over the rounds divided by five.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import uuid

from .env import PROJECT_DIR, Bench, activate_tree
from .stats import percentile

OPERATIONS = ("ec2 DescribeInstances", "iam GetInstanceProfile", "iam GetRole", "dynamodb PutItem",
              "dynamodb GetItem")


def _aws_clients():
    activate_tree()
    try:
        from chalicelib import aws_clients
    except ImportError:  # an older tree: this checkout's module
        spec = importlib.util.spec_from_file_location("bench_aws_clients", PROJECT_DIR / "chalicelib" / "aws_clients.py")
        aws_clients = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = aws_clients
        spec.loader.exec_module(aws_clients)
    return aws_clients


def per_call_cpu(bench: Bench, rounds: int, say=print) -> dict:
    import botocore.session

    from chalicelib import backends

    ac = _aws_clients()
    env = bench.broker_env()
    settings = types.SimpleNamespace(aws_region=env["BROKER_AWS_REGION"], aws_endpoint_url=env["BROKER_AWS_ENDPOINT_URL"],
                                     aws_clients="lean")
    plain = botocore.session.get_session()  # botocore's defaults

    def default_make(service, region=None, **credentials):
        return plain.create_client(service, region_name=region or settings.aws_region,
                                   endpoint_url=settings.aws_endpoint_url, **credentials)

    variants = {
        "botocore, default settings": default_make,
        "the broker's clients (chalicelib/aws_clients.py)": ac.aws_client_factory(settings),
    }
    if hasattr(backends, "botocore_client_factory"):  # an older tree, with the lean clients
        variants["lean clients (chalicelib/lean_aws)"] = backends.aws_client_factory(settings)
    replay_table, audit_table = env["BROKER_REPLAY_TABLE"], env["BROKER_AUDIT_TABLE"]
    instance = bench.instance_id

    def calls(make):
        ec2, iam, ddb = make("ec2"), make("iam"), make("dynamodb")

        def one_round():
            ec2.describe_instances(InstanceIds=[instance])
            iam.get_instance_profile(InstanceProfileName="demo-node")
            iam.get_role(RoleName="demo-node")
            now = int(time.time())
            ddb.put_item(TableName=replay_table, Item={
                "proof_hash": {"S": "bench-botocore-" + uuid.uuid4().hex}, "request_id": {"S": "bench"},
                "method": {"S": "aws"}, "spent_at": {"N": str(now)}, "expires_at": {"N": str(now + 60)}})
            ddb.get_item(TableName=audit_table, Key={"request_id": {"S": "bench-botocore-none"}})
        return one_round

    rounds_fns = {name: calls(make) for name, make in variants.items()}
    for fn in rounds_fns.values():  # connections, first-call costs
        fn()
        fn()
    names = list(rounds_fns)
    cpu = {name: [] for name in names}
    for i in range(rounds):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            c0 = time.process_time()
            rounds_fns[name]()
            cpu[name].append(time.process_time() - c0)
    rows, previous = [], None
    for name in names:
        per_call = percentile(cpu[name], 50) * 1000 / len(OPERATIONS)
        rows.append({"variant": name, "cpu_ms_per_call": per_call,
                     "vs_previous": f"{(per_call - previous) / previous * 100:+.0f}%" if previous else "-"})
        previous = per_call
    say(f"benchmark 8: {rounds} rounds x {len(names)} client settings")
    return {"calls": rounds, "operations": list(OPERATIONS), "rows": rows}
