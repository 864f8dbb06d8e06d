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


def test_the_wheel_holds_every_client_module_and_its_command_runs(built, tmp_path):
    """A wheel missing a subpackage installs a `broker` command that can't start."""
    import zipfile

    out, _ = built
    (wheel,) = out.glob("secret_zero_broker-*-py3-none-any.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("broker/")}
    wanted = {p.relative_to(REPO).as_posix() for p in (REPO / "broker").rglob("*.py")}
    assert wanted <= shipped, f"missing from the wheel: {sorted(wanted - shipped)}"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    run = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "from broker.cli import main; sys.argv = ['broker', '--help']; main()", str(target)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0 and "login" in run.stdout, run.stderr[-2000:]


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


# ---- the rules engine inside the file (issue 23, item 3) ------------------------------

def newest_python() -> str | None:
    """The newest CPython 3.9+ of the machine (pyenv versions, then PATH)."""
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    found = []
    for root in filter(None, roots):
        for path in glob.glob(os.path.join(root, "versions", "3.*.*", "bin", "python")):
            parts = path.split(os.sep)[-3].split(".")
            if all(p.isdigit() for p in parts) and (int(parts[0]), int(parts[1])) >= (3, 9):
                found.append((tuple(int(p) for p in parts), path))
    return max(found)[1] if found else shutil.which("python3")


BATCH_FACTS = {"principal_arn": "arn:aws:sts::123456789012:assumed-role/demo-batch/job-42",
               "role_tags": {"vault-role": "batch"}}


@pytest.fixture
def alone(built, tmp_path):
    """The pyz, a copy of the rules and a facts file in an empty directory: no checkout anywhere."""
    out, _ = built
    where = tmp_path / "alone"
    where.mkdir()
    shutil.copy2(out / "broker.pyz", where / "broker.pyz")
    shutil.copy2(REPO / "policies" / "rules.toml", where / "rules-copy.toml")
    (where / "facts.json").write_text(json.dumps(BATCH_FACTS))
    (where / "bad.toml").write_text("version = 1\n[[rule]]\nname = 'x'\nrole = 'web'\n")
    return where


def run_pyz(python: str, where: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(where), "BROKER_CONFIG": os.devnull}
    return subprocess.run([python, "-I", str(where / "broker.pyz"), *args], cwd=where, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("which", ["3.9", "newest"])
def test_the_pyz_checks_and_explains_rules_alone(alone, which):
    python = python39() if which == "3.9" else newest_python()
    if python is None:
        pytest.skip(f"no Python {which} on this machine")
    checked = run_pyz(python, alone, "policy", "check", "rules-copy.toml")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "rules-copy.toml: OK, 5 rule(s) for role(s) batch, web"
    as_json = run_pyz(python, alone, "policy", "check", "rules-copy.toml", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["roles"] == ["batch", "web"]

    granted = run_pyz(python, alone, "policy", "explain", "--facts", "facts.json", "--role", "batch",
                      "--rules", "rules-copy.toml")
    assert granted.returncode == 0, granted.stderr
    assert "rule batch-jobs (role batch): GRANTED" in granted.stdout
    assert granted.stdout.strip().endswith("role batch: GRANTED by batch-jobs")

    denied = run_pyz(python, alone, "policy", "explain", "--facts", "facts.json", "--role", "web",
                     "--rules", "rules-copy.toml", "--json")
    assert denied.returncode == 9, denied.stderr
    doc = json.loads(denied.stdout)
    assert doc["granted"] is False and [v["rule"] for v in doc["verdicts"]] == ["web-nodes", "web-tasks", "web-gce"]
    nodes = doc["verdicts"][0]["reasons"]
    assert "caller is not a verified running EC2 instance" in nodes
    assert any("principal arn:aws:iam::123456789012:role/demo-batch matches none of" in r for r in nodes)

    invalid = run_pyz(python, alone, "policy", "check", "bad.toml")
    assert invalid.returncode == 8
    assert "bad.toml: rule #1 (x): needs exactly one of [rule.aws] or [rule.gcp]" in invalid.stderr
    broken = run_pyz(python, alone, "policy", "check", "facts.json")  # JSON is not TOML
    assert broken.returncode == 8 and "not valid TOML" in broken.stderr

    # An audit record as `audit show --json` prints it, on standard input.
    record = {"event": {"request_id": "r-1", "method": "aws", "outcome": "denied", "role": "web",
                        "facts": dict(BATCH_FACTS, account="123456789012")}}
    piped = run_pyz(python, alone, "policy", "explain", "--facts", "-", "--role", "batch", "--rules",
                    "rules-copy.toml", stdin=json.dumps(record))
    assert piped.returncode == 0 and "role batch: GRANTED by batch-jobs" in piped.stdout, piped.stderr
    for proc in (checked, granted, denied, invalid, broken, piped):
        assert "Traceback" not in proc.stderr and "checkout" not in proc.stderr


def test_the_engine_in_the_pyz_is_the_servers_own_code(built):
    """One source: every engine module in the file is byte for byte the checkout's, and the
    engine is there whole (the modules the rules import, and tomli)."""
    import zipfile

    out, _ = built
    names = set(zipfile.ZipFile(out / "broker.pyz").namelist())
    engine = {n for n in names if n.startswith("chalicelib/") and n.endswith(".py")}
    with zipfile.ZipFile(out / "broker.pyz") as zf:
        for name in engine:
            assert zf.read(name) == (REPO / name).read_bytes(), name
    wanted = {p.relative_to(REPO).as_posix() for p in (REPO / "chalicelib" / "policy").glob("*.py")}
    assert wanted <= engine
    assert {"chalicelib/methods/aws/match.py", "chalicelib/methods/gcp/match.py", "tomli/__init__.py"} <= names
    # and nothing of the server that does I/O: no proof verifiers, facts readers or stores
    assert not {n for n in engine if n.rsplit("/", 1)[-1] in ("proof.py", "facts.py", "readers.py", "audit.py")}


def test_audit_show_piped_into_policy_explain_with_the_pyz_on_python_3_9(built, local_broker, alone):
    """The security team's question, from the verified file alone: a real denied record of the
    local stack, shown by `broker.pyz audit show --json` and explained by `broker.pyz policy
    explain --facts -` with a copy of the rules, on Python 3.9."""
    python = python39()
    if python is None:
        pytest.skip("no Python 3.9 on this machine (pyenv versions 3.9.x or python3.9)")
    stack = local_broker.stack
    instance_id = stack.launch_instance({"vault-role": "batch"}, profile="demo-node")
    try:
        creds = stack.assume("demo-node", instance_id)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(alone), "BROKER_CONFIG": os.devnull,
               "AWS_ACCESS_KEY_ID": creds["access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
               "AWS_SESSION_TOKEN": creds["session_token"], "AWS_EC2_METADATA_DISABLED": "true"}
        login = subprocess.run(
            [python, "-I", str(alone / "broker.pyz"), "login", "--broker-url", local_broker.url, "--role", "web",
             "--server-id", SERVER_ID, "--vault-addr", stack.vault_addr, "--out-dir", str(alone / "agent"), "--json"],
            cwd=alone, env=env, capture_output=True, text=True, timeout=120)
    finally:
        stack.terminate_instance(instance_id)
    assert login.returncode == 4, login.stderr
    request_id = json.loads(login.stdout)["request_id"]
    engineer = stack.assume("security-team", "carol-pyz")
    env.update(AWS_ACCESS_KEY_ID=engineer["access_key_id"], AWS_SECRET_ACCESS_KEY=engineer["secret_access_key"],
               AWS_SESSION_TOKEN=engineer["session_token"])
    shown = subprocess.run([python, "-I", str(alone / "broker.pyz"), "audit", "show", request_id, "--json",
                            "--broker-url", local_broker.url, "--server-id", SERVER_ID],
                           cwd=alone, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    explained = run_pyz(python, alone, "policy", "explain", "--facts", "-", "--role", "web", "--rules",
                        "rules-copy.toml", stdin=shown.stdout)
    assert explained.returncode == 9, explained.stderr
    assert "rule web-nodes (role web): denied" in explained.stdout
    assert "instance tag vault-role is 'batch', needs 'web'" in explained.stdout
    assert explained.stdout.strip().endswith("role web: DENIED")
