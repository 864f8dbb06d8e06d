"""The set-up's Python floor, as the README states it (3.11+): `make install` with an older
interpreter stops at once with a message naming the floor, and creates no virtualenv. The
interpreters come from pyenv on this kind of machine; where one is missing the test says so."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYENV = Path.home() / ".pyenv" / "versions"


def _interpreter(prefix):
    found = sorted(PYENV.glob(f"{prefix}.*/bin/python")) if PYENV.is_dir() else []
    if not found:
        pytest.skip(f"no Python {prefix} under {PYENV}")
    return found[-1]


def test_readme_states_the_floor_the_makefile_enforces():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert re.findall(r"Python (3\.\d+)\+", head)[0] == "3.11"
    assert "(3, 11)" in (ROOT / "Makefile").read_text()


def test_make_install_refuses_python_3_10_at_once(tmp_path):
    python = _interpreter("3.10")
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-C", str(ROOT), "install", f"PYTHON={python}", f"VENV={venv}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "needs Python 3.11+" in proc.stderr and "3.10" in proc.stderr
    assert not venv.exists()


def test_the_guard_lets_python_3_11_through():
    python = _interpreter("3.11")
    makefile = (ROOT / "Makefile").read_text()
    guard = re.search(r"@\$\(PYTHON\) -c '(.*)'", makefile).group(1).replace("$(PYTHON)", str(python))
    assert subprocess.run([str(python), "-c", guard], timeout=30).returncode == 0
