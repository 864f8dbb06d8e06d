"""Helpers of the packaging tests: CloudFormation YAML, and lines for the run's summary."""

from __future__ import annotations

from deploy.cfn_yaml import CfnLoader, load_cfn  # noqa: F401 - re-exported for the tests

REPORT: list[str] = []


def report(line: str) -> None:
    """A line for the end of the test run (e.g. the Lambda zip's size); also printed."""
    print(line)
    REPORT.append(line)
