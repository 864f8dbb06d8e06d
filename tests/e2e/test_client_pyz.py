"""End to end: the single file `dist/broker.pyz`, as `make client` builds it, run by
Python 3.9 (Amazon Linux 2023's system Python) in isolated mode (nothing from the
test's environment on its path) on an EC2 instance of the local stack, against the
broker under `chalice local`: it gets a Vault token. Also: the build prints the sums
and writes them beside the files, and rebuilding gives the same bytes."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack import SERVER_ID
from tests.e2e.test_client_login import TOKEN_PATTERN

REPO = Path(__file__).resolve().parents[2]


def python39() -> str | None:
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    if shutil.which("pyenv"):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip())
    for root in filter(None, roots):
        found = sorted(glob.glob(os.path.join(root, "versions", "3.9.*", "bin", "python")))
        if found:
            return found[-1]
    return shutil.which("python3.9")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "client" / "build.py"), "--out", str(out),
                           "--wheels", str(REPO / "build" / "pyz-wheels")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_make_client_prints_and_writes_the_sums(built, tmp_path):
    out, stdout = built
    pyz = out / "broker.pyz"
    (wheel,) = out.glob("secret_zero_broker-*-py3-none-any.whl")
    for path in (pyz, wheel):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{digest}  {path}" in stdout
        assert (out / (path.name + ".sha256")).read_text() == f"{digest}  {path.name}\n"
    check = subprocess.run(["sha256sum", "-c", "broker.pyz.sha256"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and "broker.pyz: OK" in check.stdout
    # Reproducible: a second build gives the very same file.
    again = subprocess.run([sys.executable, str(REPO / "deploy" / "client" / "build.py"), "--out", str(tmp_path),
                            "--wheels", str(REPO / "build" / "pyz-wheels")], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "broker.pyz").read_bytes() == pyz.read_bytes()


def test_the_pyz_on_python_3_9_logs_an_ec2_instance_in(built, local_broker, tmp_path):
    python = python39()
    if python is None:
        pytest.skip("no Python 3.9 on this machine (pyenv versions 3.9.x or python3.9)")
    out, _ = built
    stack = local_broker.stack
    instance_id = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    try:
        creds = stack.assume("demo-node", instance_id)  # the instance profile's session, as IMDS hands it out
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "AWS_ACCESS_KEY_ID": creds["access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
               "AWS_SESSION_TOKEN": creds["session_token"], "AWS_EC2_METADATA_DISABLED": "true",
               "BROKER_CONFIG": os.devnull}
        sink = tmp_path / "token"
        proc = subprocess.run(
            [python, "-I", str(out / "broker.pyz"), "login", "--broker-url", local_broker.url, "--role", "web",
             "--server-id", SERVER_ID, "--vault-addr", stack.vault_addr, "--sink", str(sink), "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        stack.terminate_instance(instance_id)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["cloud"] == "aws" and summary["vault_pinned"] is True
    me = requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self",
                      headers={"X-Vault-Token": sink.read_text()}, timeout=10)
    assert me.status_code == 200
    assert me.json()["data"]["accessor"] == summary["token_accessor"]
    assert "web" in " ".join(me.json()["data"]["policies"])
    assert not TOKEN_PATTERN.search(proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
    version = subprocess.run([python, "-I", str(out / "broker.pyz"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("broker ")
