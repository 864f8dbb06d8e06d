"""Build the SAM and Terraform packages once per session (deploy/package.py, as `make package
ALLOW_PLACEHOLDERS=1`), and checkov's own virtualenv when `make` has not made it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy import package as packaging
from tests.packaging.cfn import REPORT

REPO = Path(__file__).resolve().parents[2]
CHECKOV_VENV = REPO / ".venv-checkov"


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.write_sep("-", "packaging")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    return packaging.build("prod", tmp_path_factory.mktemp("dist"), allow_placeholders=True)


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov's executable, in .venv-checkov (its pins conflict with the project's):
    made here, as `make checkov-venv` does, when missing."""
    exe = CHECKOV_VENV / "bin" / "checkov"
    stamp = CHECKOV_VENV / ".installed-stamp"
    if not stamp.exists():
        subprocess.run(["python3", "-m", "venv",
                        "--clear", str(CHECKOV_VENV)], check=True)
        subprocess.run([str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r",
                        str(REPO / "requirements-checkov.txt")], check=True)
        stamp.touch()
    return exe
