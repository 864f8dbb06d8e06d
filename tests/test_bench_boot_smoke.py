"""Benchmark 10 (bench/boot.py, the per-boot call budget) on a tiny count, so that it doesn't rot.

Not a performance test: no figure is checked against a target; the counts must be there, whole
per boot, and what a boot must make (one issuance, one STS call, the client's Vault calls)."""

import math

import pytest

from bench import boot
from bench.env import Bench, tree


@pytest.fixture(scope="module")
def bench(local_broker):
    stack = local_broker.stack
    b = Bench(stack=stack).start()
    try:
        stack.start_broker(b.broker_env())  # the broker's backends behind the latency proxies
        b.warm(1)
        yield b
    finally:
        b.close()
        stack.start_broker()  # as the other tests expect it


def test_two_boots_are_counted_at_the_proxies_and_in_the_vault_audit_log(bench):
    r = boot.per_boot(bench, tree(), 2, say=lambda _m: None)
    assert r["boots"] == 2 and r["client_warnings"] == []
    lines = boot.headlines(r)
    assert set(lines) == {"broker_calls_per_boot", "sts_calls_per_boot", "ec2_calls_per_boot",
                          "dynamodb_calls_per_boot", "vault_requests_per_boot", "vault_storage_ops_per_boot",
                          "time_to_token_ms_p50", "time_to_token_ms_p95"}
    assert all(isinstance(v, float) and not math.isnan(v) for v in lines.values()), lines
    assert r["per_operation"]["broker POST /v1/credentials/aws"] == 1
    assert 1 <= lines["broker_calls_per_boot"] <= 2 and lines["sts_calls_per_boot"] >= 1
    assert lines["ec2_calls_per_boot"] >= 1 and lines["dynamodb_calls_per_boot"] >= 3
    # the client's five (two lookups, two unwraps, the login) and the broker's two at least
    assert r["vault_paths"]["sys/wrapping/unwrap"] == 2 and r["vault_paths"]["auth/approle/login"] == 1
    assert lines["vault_requests_per_boot"] >= 7 and lines["vault_storage_ops_per_boot"] > 0
    assert 0 < lines["time_to_token_ms_p50"] <= lines["time_to_token_ms_p95"] <= r["exit_ms"]["max"]
