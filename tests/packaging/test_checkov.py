"""checkov on both packages, every framework as a user runs it (`checkov -d dist`): no failed check. Every check that does not apply is
suppressed in the template itself with its reason (CloudFormation: the resource's
Metadata.checkov.skip with a comment; Terraform: `#checkov:skip=ID:reason`; the OpenAPI
body: its x-checkov-skip strings), and
docs/operations.md lists each. checkov runs from .venv-checkov (its pins conflict with
the project's), offline (--skip-download), once for both packages and a probe template
that must fail (so the scan is not a no-op)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
PROBE = """Resources:
  T:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      KeySchema: [{AttributeName: k, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: k, AttributeType: S}]
"""


@pytest.fixture(scope="module")
def reports(checkov, package, tmp_path_factory) -> dict:
    """{framework: checkov's report} for OUT/sam, OUT/terraform and probe/probe.yaml in one run."""
    scan = tmp_path_factory.mktemp("checkov")
    for d in (package.sam_dir, package.terraform_dir):
        shutil.copytree(d, scan / d.name, ignore=shutil.ignore_patterns("*.zip"))
    (scan / "probe").mkdir()
    (scan / "probe" / "probe.yaml").write_text(PROBE)
    proc = subprocess.run([str(checkov), "-d", str(scan), "--skip-download", "--compact", "--output", "json"],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(scan)})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    found = {r["check_type"]: r for r in json.loads(proc.stdout)}
    assert {"cloudformation", "terraform", "openapi"} <= set(found), set(found)
    return found


def failed(report, *, probe):
    return [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for c in report["results"]["failed_checks"] if c["file_path"].startswith("/probe/") == probe]


SCANNED = {
    "cloudformation": {"/sam/sam.yaml", "/sam/resources.yaml", "/sam/reader-role.yaml"},
    "terraform": {"/terraform/function.tf", "/terraform/api.tf", "/terraform/resources.tf",
                  "/terraform/monitoring.tf", "/terraform/modules/reader-role/main.tf"},
    "openapi": {"/terraform/openapi.json"},
}


def test_no_framework_fails_a_check(reports):
    for framework, report in reports.items():
        assert not failed(report, probe=False), "\n".join(failed(report, probe=False))
        assert report["summary"]["parsing_errors"] == 0, framework


@pytest.mark.parametrize("framework", sorted(SCANNED))
def test_each_package_file_is_scanned(reports, framework):
    results = reports[framework]["results"]
    scanned = {c["file_path"] for c in results["passed_checks"] + results["skipped_checks"]}
    assert SCANNED[framework] <= scanned, SCANNED[framework] - scanned


def test_the_scan_finds_what_it_should(reports):
    # an unsuppressed table without point-in-time recovery fails
    assert any(line.startswith("CKV_AWS_28 ") for line in failed(reports["cloudformation"], probe=True))


@pytest.mark.parametrize("framework", sorted(SCANNED))
def test_every_suppression_has_a_reason_listed_in_the_docs(reports, framework):
    skipped = reports[framework]["results"]["skipped_checks"]
    assert skipped
    docs = OPERATIONS.read_text()
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 30, f"{check['check_id']} on {check['resource']}: no reason given"
        assert re.search(rf"`{check['check_id']}`", docs), f"{check['check_id']} is not listed in docs/operations.md"


@pytest.mark.parametrize("stage, says", [("prod", "the API is PRIVATE"), ("dev", "this stage's API is public")])
def test_the_openapi_skip_reason_is_true_of_the_stage(stage, says):
    from deploy import package, values

    v = values.load(stage)
    reason = package.openapi_skip_reason(v)
    assert says in reason
    assert ("PRIVATE" in reason) == (v.endpoint_type == "PRIVATE") and (v.api_policy() is not None) == (
        v.endpoint_type == "PRIVATE")
