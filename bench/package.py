"""Benchmark 6: package sizes.

* the Lambda zip: ``AWS_DEFAULT_REGION=us-east-1 chalice package --stage dev DIR``
  in the tree, the size of DIR/deployment.zip in MB (10^6 bytes, as deploy/package.py
  prints it), its unzipped size, and the biggest top-level entries;
* the client: ``pip install --no-deps --no-build-isolation --target DIR TREE``
  (the ``broker`` package alone, what ``pip install secret-zero-broker`` installs
  with its zero dependencies), plus the ``[aws]`` extra: botocore and its
  requirements, counted from the files they install (their installed
  distributions in this virtualenv, ``importlib.metadata``).

Chalice keeps its built dependencies in ``.chalice/deployments/`` (a cache keyed
on the requirements); a tree without it gets a copy of this checkout's, so that
packaging another revision does not rebuild (and download) the same wheels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

from .env import PROJECT_DIR

MB = 1_000_000


def chalice_package(tree: Path, out: Path | str) -> subprocess.CompletedProcess:
    """`chalice package --stage dev OUT` in the tree, for this interpreter's Python
    version, then deploy/bytecode.py's step (as `make package` does for the runtime):
    OUT/deployment.zip is what Lambda would unpack."""
    bytecode = _checkout_module("deploy/bytecode.py")  # this checkout's, whatever the tree (--rev)
    chalice = Path(sys.executable).with_name("chalice")
    cache = tree / ".chalice" / "deployments"
    if not cache.exists() and (PROJECT_DIR / ".chalice" / "deployments").exists() and tree != PROJECT_DIR:
        shutil.copytree(PROJECT_DIR / ".chalice" / "deployments", cache)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    proc = subprocess.run([str(chalice), "package", "--stage", "dev", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"chalice package failed: {proc.stderr[-2000:]}{proc.stdout[-1000:]}")
    bytecode.add_bytecode(Path(out) / "deployment.zip", sys.executable)
    return proc


def _checkout_module(relative: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_" + Path(relative).stem, PROJECT_DIR / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lambda_zip(tree: Path, say=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-package-") as out:
        t0 = time.perf_counter()
        proc = chalice_package(tree, out)
        seconds = time.perf_counter() - t0
        zpath = Path(out) / "deployment.zip"
        size = zpath.stat().st_size
        top_c, top_u = Counter(), Counter()
        with zipfile.ZipFile(zpath) as z:
            infos = z.infolist()
            for info in infos:
                top = info.filename.split("/", 1)[0]
                if top.endswith(".dist-info"):
                    top = "*.dist-info"
                top_c[top] += info.compress_size
                top_u[top] += info.file_size
    say(f"benchmark 6: chalice package in {seconds:.1f} s"
        + (" (reused .chalice/deployments)" if "Reusing" in proc.stdout + proc.stderr else ""))
    return {
        "lambda_zip_mb": size / MB,
        "lambda_zip_bytes": size,
        "lambda_unzipped_mb": sum(top_u.values()) / MB,
        "lambda_files": len(infos),
        "lambda_top_entries_mb": [(k, v / MB, top_u[k] / MB) for k, v in top_c.most_common(10)],
        "package_seconds": seconds,
    }


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def _installed_size(dist_name: str, seen: set) -> int:
    """Bytes of the files a distribution installed (and, recursively, its requirements)."""
    from importlib import metadata
    from packaging.requirements import Requirement

    key = dist_name.lower().replace("_", "-")
    if key in seen:
        return 0
    seen.add(key)
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or []:
        if "__pycache__" in f.parts:
            continue
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    for req in dist.requires or []:
        r = Requirement(req)
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        total += _installed_size(r.name, seen)
    return total


def client_size(tree: Path, say=print) -> dict:
    """Install the client from a copy of the tree's packaging files (pip builds in the
    source directory: no build/ or *.egg-info left in the work tree)."""
    with tempfile.TemporaryDirectory(prefix="bench-client-install-") as tmp:
        src, target = Path(tmp) / "src", Path(tmp) / "target"
        src.mkdir()
        for name in ("pyproject.toml", "setup.py", "setup.cfg", "README.md", "LICENSE"):
            if (tree / name).is_file():
                shutil.copy2(tree / name, src / name)
        shutil.copytree(tree / "broker", src / "broker", ignore=shutil.ignore_patterns("__pycache__"))
        (src / "docs").mkdir()
        if (tree / "docs" / "client.md").is_file():
            shutil.copy2(tree / "docs" / "client.md", src / "docs" / "client.md")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"pip install --target failed: {proc.stderr[-2000:]}")
        own = _tree_size(target)
    aws_extra = _installed_size("botocore", set())
    say("benchmark 6: client install size")
    return {"client_mb": own / MB, "client_aws_extra_mb": aws_extra / MB,
            "client_with_aws_mb": (own + aws_extra) / MB}
