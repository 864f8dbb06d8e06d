"""deploy/bytecode.py on a small zip, with the Python running the tests: stale bytecode
out, the roots' bytecode in (checked-hash, for this interpreter), everything else kept
byte for byte, and the bytecode used by an interpreter that can't write any."""

from __future__ import annotations

import importlib.util
import os
import marshal
import subprocess
import sys
import zipfile

from deploy import bytecode

TAG = sys.implementation.cache_tag  # e.g. cpython-311


def make_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("app.py", "import chalicelib.mod\nVALUE = chalicelib.mod.VALUE\n")
        z.writestr("chalicelib/__init__.py", "")
        z.writestr("chalicelib/mod.py", "VALUE = 42\n")
        z.writestr("chalicelib/__pycache__/mod.cpython-39.pyc", b"stale bytes of another Python")
        z.writestr("chalicelib/__pycache__/gone.cpython-311.pyc", b"a module that no longer exists")
        z.writestr("google/auth.py", "X = 1\n")  # a vendored library outside ROOTS
        z.writestr("rules.toml", "[rule]\n")


def test_the_zip_gets_the_roots_bytecode_and_loses_the_stale(tmp_path):
    path = tmp_path / "deployment.zip"
    make_zip(path)
    assert bytecode.add_bytecode(path, sys.executable) == 3
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {"app.py", "chalicelib/__init__.py", "chalicelib/mod.py", "google/auth.py", "rules.toml"} <= names
        assert z.read("chalicelib/mod.py") == b"VALUE = 42\n" and z.read("rules.toml") == b"[rule]\n"
        pycs = sorted(n for n in names if n.endswith(".pyc"))
        assert pycs == [f"__pycache__/app.{TAG}.pyc", f"chalicelib/__pycache__/__init__.{TAG}.pyc",
                        f"chalicelib/__pycache__/mod.{TAG}.pyc"]
        data = z.read(f"chalicelib/__pycache__/mod.{TAG}.pyc")
    assert int.from_bytes(data[4:8], "little") == 0b11  # checked hash (PEP 552)
    assert data[8:16] == importlib.util.source_hash(b"VALUE = 42\n")


def test_the_same_sources_give_the_same_zip(tmp_path):
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    for path in (first, second):
        make_zip(path)
        bytecode.add_bytecode(path, sys.executable)
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(second) as b:
        assert [(i.filename, i.date_time, i.CRC) for i in a.infolist() if i.filename.endswith(".pyc")] == \
               [(i.filename, i.date_time, i.CRC) for i in b.infolist() if i.filename.endswith(".pyc")]


def test_a_read_only_task_root_imports_from_the_shipped_bytecode(tmp_path):
    """As in Lambda (no bytecode written): the module comes from the zip's .pyc, not from
    compiling its source (the .pyc's code is swapped for one that says so, its header
    kept); an edited source is compiled again (checked hash), not shadowed."""
    path = tmp_path / "deployment.zip"
    make_zip(path)
    bytecode.add_bytecode(path, sys.executable)
    root = tmp_path / "task"
    with zipfile.ZipFile(path) as z:
        z.extractall(root)
    pyc = root / "chalicelib" / "__pycache__" / f"mod.{TAG}.pyc"
    pyc.write_bytes(pyc.read_bytes()[:16] + marshal.dumps(compile("VALUE = 'from the pyc'", "mod.py", "exec")))

    def value():
        probe = f"import sys; sys.path.insert(0, {str(root)!r}); import chalicelib.mod as m; print(m.VALUE)"
        return subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True,
                              env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}).stdout.strip()

    assert value() == "from the pyc"
    (root / "chalicelib" / "mod.py").write_text("VALUE = 7\n")
    assert value() == "7"


def test_the_runtimes_interpreter_is_one_that_runs(tmp_path, monkeypatch):
    """A pyenv shim for a version pyenv has not selected is on the PATH but only says
    "command not found": it is no interpreter for the bytecode."""
    version = "%d.%d" % sys.version_info[:2]
    found = bytecode.interpreter_for(f"python{version}")
    assert found and subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                    text=True).stdout.strip() == str(tuple(sys.version_info[:2]))
    shim = tmp_path / "python3.98"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.98: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    assert bytecode.interpreter_for("python3.98") is None
