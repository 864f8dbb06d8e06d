"""Bytecode in the Lambda zip: what a cold start would otherwise compile every time.

Lambda unpacks the zip into /var/task, which is read-only: Python can't write the
`__pycache__` it compiles, so without bytecode in the zip every cold start compiles
app.py, Chalice's runtime and chalicelib from source (80 to 140 ms here;
docs/performance.md, "Cold start"). `chalice package` ships none of its own, only
whatever `__pycache__` the working tree happens to hold, from whichever Python made it.

`add_bytecode` rewrites the zip: every `__pycache__` entry out, then the modules of a
cold AWS start (`ROOTS`) compiled by an interpreter of the function's runtime, as
checked-hash .pyc files (valid whatever the unpacked files' times; Python still
recompiles a module whose source no longer matches). The vendored libraries of the
other proof methods (google-auth, cryptography, requests) are left out: they are
imported on a GCP method's first request, and their bytecode would put the zip over
its size budget (benchmark 6). Without an interpreter of that version on the machine,
the zip ships no bytecode and the build says so (still correct, only slower to start).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

# What an AWS issuance imports from the zip (the rest comes with the runtime).
ROOTS = ("app.py", "chalice", "chalicelib", "certifi")
TASK_ROOT = "/var/task"  # where Lambda unpacks the zip: the path tracebacks show
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the added entries' time: the same bytes from the same sources


def interpreter_for(runtime: str) -> str | None:
    """An interpreter of the runtime's version (`python3.12`) that runs on this machine:
    `pythonX.Y` on the PATH, else pyenv's build of it; None if there is none. Each is
    run once to check it (a pyenv shim for a version pyenv has not selected only says
    "command not found")."""
    version = runtime.removeprefix("python")
    candidates = [shutil.which(runtime)]
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(str(p) for p in root.glob(f"versions/{version}.*/bin/{runtime}"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):  # not runnable, or wedged: not an interpreter
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def add_bytecode(zip_path: Path | str, python: str, roots=ROOTS) -> int:
    """Rewrite the zip with `python`'s bytecode of `roots` (and no other __pycache__).
    Returns the number of .pyc files added."""
    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(prefix="bytecode-") as tmp:
        unpacked = Path(tmp) / "task"
        with zipfile.ZipFile(zip_path) as z:
            kept = [(info, z.read(info)) for info in z.infolist() if "__pycache__/" not in info.filename]
            z.extractall(unpacked, members=[info.filename for info, _ in kept
                                            if _under(info.filename, roots) and info.filename.endswith(".py")])
        targets = [str(unpacked / root) for root in roots if (unpacked / root).exists()]
        if targets:
            subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash",
                            "-s", str(unpacked), "-p", TASK_ROOT, *targets], check=True, capture_output=True)
        compiled = sorted(p for p in unpacked.rglob("*.pyc"))
        rewritten = zip_path.with_suffix(".tmp")
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as out:
            for info, data in kept:
                out.writestr(info, data)
            for pyc in compiled:
                info = zipfile.ZipInfo(pyc.relative_to(unpacked).as_posix(), FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(info, pyc.read_bytes())
        rewritten.replace(zip_path)
    return len(compiled)


def _under(name: str, roots) -> bool:
    return any(name == root or name.startswith(root.rstrip("/") + "/") for root in roots)
