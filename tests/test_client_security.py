"""The security commands of the client without a broker: times, rendering, usage errors.
(Against the real broker: tests/e2e/test_security_cli.py.)"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from datetime import datetime, timezone

import pytest

from broker.cli import main
from broker.cli.security import render_csv, render_table, short_principal, to_iso

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("24h", "2026-01-01T03:04:05.000Z"),
    ("30m", "2026-01-02T02:34:05.000Z"),
    ("2w", "2025-12-19T03:04:05.000Z"),
    ("2025-12-31T10:00:00Z", "2025-12-31T10:00:00.000Z"),
    ("2025-12-31T12:00:00+02:00", "2025-12-31T10:00:00.000Z"),
    ("2025-12-31", "2025-12-31T00:00:00.000Z"),
])
def test_times(text, expected):
    assert to_iso(text, now=NOW) == expected


def test_bad_times_are_usage_errors():
    from broker.errors import UsageError

    with pytest.raises(UsageError):
        to_iso("yesterday", now=NOW)


def test_short_principal():
    assert short_principal("arn:aws:sts::123456789012:assumed-role/demo-node/i-0abc") == "123456789012:demo-node/i-0abc"
    assert short_principal("arn:aws:iam::123456789012:role/security-team") == "123456789012:security-team"
    assert short_principal("sa@p.iam.gserviceaccount.com") == "sa@p.iam.gserviceaccount.com"


EVENTS = [
    {"time": "2026-01-02T03:04:05.123+00:00", "outcome": "denied", "code": "not_authorized", "role": "web",
     "instance": "i-0123456789abcdef0", "principal": "arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0",
     "request_id": "5b1259de-0c4e-4c8e-9a47-0d6f1c2b3a4d", "reason": "rule web-nodes: " + "x" * 300,
     "facts": {"account": "123456789012"}},
    {"time": "2026-01-02T03:00:00.000+00:00", "outcome": "admin", "code": "ok", "action": "audit.search",
     "principal": "arn:aws:sts::123456789012:assumed-role/security-team/alice",
     "request_id": "6c2360ef-1d5f-4d9f-8b58-1e7f2d3c4b5e", "query": {"role": "web"}},
]


def test_table_is_aligned_and_fits_the_width():
    out = io.StringIO()
    render_table(EVENTS, out, width=150)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("TIME") and len(lines) == 3
    assert all(len(line) <= 150 for line in lines)
    assert lines[1].index("denied") == lines[0].index("OUTCOME") == lines[2].index("admin")
    assert "audit.search" in lines[2] and lines[1].endswith("…")


def test_csv_has_fixed_columns_and_json_for_structures():
    out = io.StringIO()
    render_csv(EVENTS, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["request_id"] == EVENTS[0]["request_id"] and rows[1]["action"] == "audit.search"
    assert rows[0]["reason"] == EVENTS[0]["reason"]


@pytest.mark.parametrize("argv, message", [
    (["revoke", "--reason", "x"], "name the target"),
    (["revoke", "--instance", "i-0123456789abcdef0"], "--reason is required"),
    (["revoke", "lift"], "usage: broker revoke lift"),
    (["revoke", "frobnicate", "x"], "usage: broker revoke lift"),
    (["revoke", "lift", "not-a-uuid"], "must be a UUID"),
    (["audit", "show", "nope", "--broker-url", "http://127.0.0.1:9", "--server-id", "x"], "must be a UUID"),
    (["audit", "search", "--server-id", "x"], "missing --broker-url"),
    (["audit", "search", "--limit", "0"], "--limit"),
    (["audit", "search", "--since", "soon", "--broker-url", "http://127.0.0.1:9", "--server-id", "x"], "duration"),
])
def test_usage_errors_exit_2_before_any_request(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("BROKER_URL", raising=False)
    monkeypatch.delenv("BROKER_SERVER_ID", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_table_to_a_file_or_pipe_is_not_cut(monkeypatch):
    """Not a terminal and no COLUMNS: every cell whole (a cut principal is useless in a file)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    long_reason = "no rule grants role web: " + "tag vault-role is not web; " * 12
    out = io.StringIO()  # not a terminal
    render_table([dict(EVENTS[0], reason=long_reason)], out)
    assert " ".join(long_reason.split()) in out.getvalue() and "…" not in out.getvalue()


def test_outcome_is_checked_before_any_proof(tmp_path):
    """A bad --outcome is a usage error (exit 2) at once: no proof signed, nothing sent."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "broker", "audit", "search", "--broker-url", "http://127.0.0.1:9",
                           "--outcome", "issued,bogus"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.returncode == 2, proc.stderr
    assert "--outcome takes issued" in proc.stderr and "bogus" in proc.stderr


def test_client_outcomes_are_the_servers():
    from broker.cli.security import OUTCOMES as client
    from chalicelib.audit_query import OUTCOMES as server

    assert set(client) == set(server)
