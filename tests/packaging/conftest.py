"""Build the SAM and Terraform packages once per session (deploy/package.py, as `make package`)."""

from __future__ import annotations

import pytest

from deploy import package as packaging
from tests.packaging.cfn import REPORT


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.write_sep("-", "packaging")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    return packaging.build("prod", tmp_path_factory.mktemp("dist"))
