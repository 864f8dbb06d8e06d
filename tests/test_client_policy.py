"""`broker policy check` and `broker policy explain`: the client's command line
over the broker's rules engine (chalicelib.policy), imported lazily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker import cli
from broker.errors import EXIT_POLICY_DENIED, EXIT_RULES_INVALID, EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("chalicelib.policy", reason="the rules engine (chalicelib/policy/) is not in this checkout")

RULES = """
version = 1

[[rule]]
name = "batch-jobs"
role = "batch"
[rule.aws]
accounts = ["123456789012"]
principal_arns = ["arn:aws:iam::123456789012:role/demo-batch"]
role_tags = { "vault-role" = "batch" }
"""


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


def _facts(tmp_path, **facts):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts))
    return str(path)


def test_check_accepts_the_repository_rules(capsys):
    assert cli.main(["policy", "check", str(REPO / "policies" / "rules.toml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and "web" in summary["roles"]


def test_check_rejects_a_bad_file_naming_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('role = "batch"', 'role = "batch"\nrolee = "typo"'))
    assert cli.main(["policy", "check", str(bad)]) == EXIT_RULES_INVALID
    assert "rolee" in capsys.readouterr().err
    assert cli.main(["policy", "check", str(tmp_path / "missing.toml")]) == EXIT_RULES_INVALID


def test_explain_granted(tmp_path, rules_file, capsys):
    facts = _facts(tmp_path, principal_arn="arn:aws:sts::123456789012:assumed-role/demo-batch/job-1",
                   role_tags={"vault-role": "batch"})
    rc = cli.main(["policy", "explain", "--facts", facts, "--role", "batch", "--rules", str(rules_file)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "rule batch-jobs (role batch): GRANTED" in out


def test_explain_denied_says_why(tmp_path, rules_file, capsys):
    facts = _facts(tmp_path, principal_arn="arn:aws:sts::123456789012:assumed-role/demo-batch/job-1",
                   role_tags={"vault-role": "web"})
    rc = cli.main(["policy", "explain", "--facts", facts, "--role", "batch", "--rules", str(rules_file), "--json"])
    assert rc == EXIT_POLICY_DENIED
    summary = json.loads(capsys.readouterr().out)
    assert summary["granted"] is False
    (verdict,) = summary["verdicts"]
    assert verdict["rule"] == "batch-jobs" and not verdict["granted"]
    assert any("vault-role" in reason for reason in verdict["reasons"])


def test_explain_role_without_rules_is_denied(tmp_path, rules_file, capsys):
    facts = _facts(tmp_path, principal_arn="arn:aws:sts::123456789012:assumed-role/demo-batch/job-1")
    rc = cli.main(["policy", "explain", "--facts", facts, "--role", "nothing", "--rules", str(rules_file)])
    assert rc == EXIT_POLICY_DENIED
    assert "no rule" in capsys.readouterr().out


def test_explain_bad_facts(tmp_path, rules_file, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    assert cli.main(["policy", "explain", "--facts", str(bad_json), "--role", "batch",
                     "--rules", str(rules_file)]) == EXIT_RULES_INVALID
    facts = _facts(tmp_path, principal_arn="arn:aws:sts::123456789012:assumed-role/demo-batch/job-1", colour="red")
    assert cli.main(["policy", "explain", "--facts", facts, "--role", "batch",
                     "--rules", str(rules_file)]) == EXIT_RULES_INVALID
    assert "colour" in capsys.readouterr().err


def test_outside_a_checkout_the_message_is_clear(tmp_path, rules_file):
    """The client installed alone, run outside the repository, cannot see chalicelib."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import broker.cli\n"  # only the client is importable from here on
        f"sys.path.remove({str(REPO)!r})\n"
        f"sys.exit(broker.cli.main(['policy', 'check', {str(rules_file)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "inside a checkout" in proc.stderr
    assert "Traceback" not in proc.stderr
