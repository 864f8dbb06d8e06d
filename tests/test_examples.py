"""The deployment examples in examples/ are syntax-checked and hold what they claim:
`broker login` as the entrypoint (exec mode), --agent-dir before the Agent starts, a
oneshot before the Agent, an in-memory volume shared by the init containers.
(The Agent configurations are run for real in tests/e2e/test_agent_handoff.py.)"""

from __future__ import annotations

import configparser
import json
import py_compile
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                           "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def bash_n(script: str, name: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, f"{name}: {proc.stderr}"


def login_argv(command: str) -> list[str]:
    """The `broker login ...` words of a shell line, or []."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # a continued or partial line
        return []
    for i in range(len(words) - 1):
        if words[i].endswith("broker") and words[i + 1] == "login":
            return words[i:]
    return []


# ---- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword, rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_dockerfile():
    path = EXAMPLES / "docker" / "Dockerfile"
    instructions = dockerfile_instructions(path)
    assert instructions[0][0] == "FROM"
    for keyword, _ in instructions:
        assert keyword in DOCKERFILE_INSTRUCTIONS, f"unknown instruction {keyword}"
        assert keyword == keyword.upper()
    (entrypoint,) = [json.loads(rest) for k, rest in instructions if k == "ENTRYPOINT"]  # exec form
    (cmd,) = [json.loads(rest) for k, rest in instructions if k == "CMD"]
    assert isinstance(entrypoint, list) and isinstance(cmd, list) and cmd
    start = entrypoint.index("broker")
    assert entrypoint[:start] in ([], ["/usr/bin/tini", "--"])  # only an init in front of it
    assert entrypoint[start:start + 2] == ["broker", "login"]
    assert entrypoint[-2:] == ["--exec", "--"]  # CMD is the command that broker execs
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the application does not run as root"
    # what the build copies from the repository root (the build context) exists
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from=" not in rest:
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    py_compile.compile(str(EXAMPLES / "docker" / "job.py"), doraise=True, cfile=str(REPO / ".pytest-job.pyc"))
    (REPO / ".pytest-job.pyc").unlink()


# ---- EC2 user-data (cloud-init) ----------------------------------------------------------------


def test_ec2_user_data():
    path = EXAMPLES / "ec2" / "user-data.yaml"
    text = path.read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert set(data) <= {"write_files", "runcmd", "packages", "bootcmd"}
    files = {f["path"]: f["content"] for f in data["write_files"]}
    # the Agent configuration is the tested one
    assert files["/etc/vault-agent/agent.hcl"] == (EXAMPLES / "agent" / "agent.hcl").read_text()
    assert files["/etc/vault-agent/app.env.tmpl"] == (EXAMPLES / "agent" / "app.env.tmpl").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(files["/etc/systemd/system/vault-agent.service"])
    assert "agent.hcl" in unit["Service"]["ExecStart"]
    script = "\n".join(data["runcmd"])
    bash_n(script, "runcmd")
    lines = script.splitlines()
    logins = [i for i, line in enumerate(lines) if login_argv(line)]
    assert len(logins) == 1
    argv = login_argv(lines[logins[0]])
    assert argv[argv.index("--agent-dir") + 1] == "/run/vault-agent"
    starts = [i for i, line in enumerate(lines) if "systemctl start vault-agent" in line]
    assert starts and starts[0] > logins[0], "the Agent starts after broker login"


# ---- systemd ----------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str
    unit.read_string(path.read_text())
    return unit


def test_systemd_units(tmp_path):
    login = read_unit(EXAMPLES / "systemd" / "broker-login.service")
    agent = read_unit(EXAMPLES / "systemd" / "vault-agent.service")
    assert login["Service"]["Type"] == "oneshot"
    assert "vault-agent.service" in login["Unit"]["Before"].split()
    argv = login_argv(login["Service"]["ExecStart"])
    assert argv[argv.index("--agent-dir") + 1] == "/run/vault-agent"
    assert login["Service"]["RuntimeDirectory"] == "vault-agent"
    assert login["Service"]["RuntimeDirectoryMode"] == "0700"
    assert "broker-login.service" in agent["Unit"]["Requires"].split()
    assert "broker-login.service" in agent["Unit"]["After"].split()
    assert login["Service"]["User"] == agent["Service"]["User"], "the Agent reads the 0600 files"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the structure checks above are what can be done
    # systemd-analyze verify wants the ExecStart binaries to exist: point them at true(1)
    true = shutil.which("true")
    for name in ("broker-login.service", "vault-agent.service"):
        text = (EXAMPLES / "systemd" / name).read_text()
        text = text.replace("/usr/local/bin/broker ", f"{true} ").replace("/usr/local/bin/bao ", f"{true} ")
        (tmp_path / name).write_text(text)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "broker-login.service"),
                           str(tmp_path / "vault-agent.service")],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output


# ---- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_init_container_writes_to_a_shared_memory_volume():
    docs = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "pod.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ServiceAccount", "ConfigMap", "Pod"}
    pod = by_kind["Pod"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    login, agent = pod["initContainers"]
    argv = login_argv(shlex.join(login["command"]))
    agent_dir = argv[argv.index("--agent-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in login["volumeMounts"]}
    creds = volumes[mounts[agent_dir]]
    assert creds["emptyDir"]["medium"] == "Memory"
    # the Agent (next init container) mounts the same volume at the same place...
    assert {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}[agent_dir] == mounts[agent_dir]
    config = by_kind["ConfigMap"]["data"]["agent.hcl"]
    assert f'role_id_file_path                = "{agent_dir}/role_id"' in config
    assert f'secret_id_file_path              = "{agent_dir}/secret_id"' in config
    assert 'secret_id_response_wrapping_path = "auth/approle/role/web/secret-id"' in config
    assert "exit_after_auth = true" in config  # an init container must end
    # ...and the app gets only the rendered secrets, from another in-memory volume
    (app,) = pod["containers"]
    app_volumes = {m["name"] for m in app["volumeMounts"]}
    assert mounts[agent_dir] not in app_volumes
    assert all(volumes[name]["emptyDir"]["medium"] == "Memory" for name in app_volumes)
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert by_kind["ServiceAccount"]["metadata"]["name"] == pod["serviceAccountName"]


# ---- GCE ------------------------------------------------------------------------------------


def test_gce_startup_script():
    path = EXAMPLES / "gce" / "startup-script.sh"
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    bash_n(text, path.name)
    (line,) = [line for line in text.splitlines() if login_argv(line)]
    argv = login_argv(line.split("||")[0])
    assert argv[argv.index("--cloud") + 1] == "gcp"
    assert argv[argv.index("--agent-dir") + 1] == "/run/vault-agent"
    assert text.index("broker login") < text.index("bao agent")


def _gce_lines(text: str, first: str, last: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    return "\n".join(lines[start:end + 1])


@pytest.mark.parametrize("role, vault", [("batch", "https://vault.test:8443"), ("web", "https://v.example")])
def test_gce_agent_config_has_the_metadata_role_and_vault(tmp_path, role, vault):
    """The script's own lines render the tested Agent config with the role and Vault read
    from metadata (the wrapping path the Agent checks is that role's, not web's)."""
    text = (EXAMPLES / "gce" / "startup-script.sh").read_text()
    render = _gce_lines(text, "sed -e", '> "$AGENT_HCL"').replace("/etc/vault-agent/agent.hcl",
                                                                  str(EXAMPLES / "agent" / "agent.hcl"))
    out = tmp_path / "agent.hcl"
    subprocess.run(["bash", "-euc", render], check=True, timeout=10,
                   env={"PATH": "/usr/bin:/bin", "ROLE": role, "VAULT_ADDR": vault, "AGENT_HCL": str(out)})
    config = out.read_text()
    assert f'secret_id_response_wrapping_path    = "auth/approle/role/{role}/secret-id"' in config
    assert f'address = "{vault}"' in config and "vault.example.internal" not in config
    assert "bao agent -config \"$AGENT_HCL\"" in text


@pytest.mark.parametrize("role, vault", [('web" }\nx = "', "https://v.test"), ("", "https://v.test"),
                                         ("web", "http://v.test"), ("web", "https://v.test|x"),
                                         ("web", "https://v.test/../")])
def test_gce_script_refuses_metadata_that_is_not_a_name_and_address(role, vault):
    text = (EXAMPLES / "gce" / "startup-script.sh").read_text()
    checks = _gce_lines(text, '[[ "$ROLE"', "vault-addr is not")
    proc = subprocess.run(["bash", "-euc", checks + "\necho passed"], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "ROLE": role, "VAULT_ADDR": vault})
    assert proc.returncode == 2 and "passed" not in proc.stdout, proc
    assert "metadata vault-" in proc.stderr


@pytest.mark.parametrize("path", sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*")
                                        if p.is_file()))
def test_every_example_is_checked(path):
    checked = {"docker/Dockerfile", "docker/job.py", "ec2/user-data.yaml", "systemd/broker-login.service",
               "systemd/vault-agent.service", "kubernetes/pod.yaml", "gce/startup-script.sh",
               "agent/agent.hcl", "agent/app.env.tmpl", "README.md"}
    assert path in checked, f"examples/{path} is not checked by any test"


def test_json_snippets_of_the_operations_guide_parse():
    import re

    text = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        json.loads(block)


# ---- how the client gets onto the machine ------------------------------------------------------


@pytest.mark.parametrize("name", ["ec2/user-data.yaml", "gce/startup-script.sh", "docker/Dockerfile",
                                  "systemd/broker-login.service", "kubernetes/pod.yaml"])
def test_no_example_installs_the_client_by_name_and_each_pins_the_vault(name):
    text = (EXAMPLES / name).read_text()
    assert "pip install" not in text and "pip3 install" not in text, f"{name} installs something by name"
    assert "VAULT_ADDR" in text, f"{name} does not pin the Vault address"


@pytest.mark.parametrize("name", ["ec2/user-data.yaml", "gce/startup-script.sh", "docker/Dockerfile"])
def test_examples_that_fetch_the_client_check_its_sum_before_it_runs(name):
    text = (EXAMPLES / name).read_text()
    fetch = text.index("broker-0.1.0.pyz")
    check = text.index("sha256sum -c", fetch)
    import re

    runs = [m.start() for m in re.finditer(r'^[ \t]*(?:rc=0\n)?(?:[A-Z_]+=\S+ )*broker login|"broker", "login"', text, re.M)]
    assert runs and check < min(runs), f"{name}: the sum is checked after the client runs"
    assert "/usr/local/bin/broker" in text[check:]  # installed only after the check


def _docker_fetch(tmp_path, **build_args):
    """The client stage's RUN of the Dockerfile, run by sh as docker would (the image's
    /broker.pyz under tmp_path), with these build arguments in its environment."""
    instructions = dockerfile_instructions(EXAMPLES / "docker" / "Dockerfile")
    run = next(rest for keyword, rest in instructions if keyword == "RUN" and "BROKER_PYZ_URL" in rest)
    target = tmp_path / "broker.pyz"
    env = {"PATH": "/usr/bin:/bin", **build_args}
    return subprocess.run(["sh", "-c", run.replace("/broker.pyz", str(target)).replace("python -c", "python3 -c")],
                          capture_output=True, text=True, timeout=30, env=env), target


def test_docker_build_names_each_missing_build_argument(tmp_path):
    proc, target = _docker_fetch(tmp_path, BROKER_PYZ_SHA256="0" * 64)
    assert proc.returncode != 0 and "BROKER_PYZ_URL" in proc.stderr and not target.exists()
    proc, target = _docker_fetch(tmp_path, BROKER_PYZ_URL="file:///dev/null")
    assert proc.returncode != 0 and "BROKER_PYZ_SHA256" in proc.stderr and not target.exists()


def test_docker_build_fetches_the_url_and_checks_its_sum(tmp_path):
    import hashlib

    pyz = tmp_path / "hosted.pyz"
    pyz.write_bytes(b"#!/usr/bin/env python3\n")
    url = pyz.as_uri()
    proc, target = _docker_fetch(tmp_path, BROKER_PYZ_URL=url, BROKER_PYZ_SHA256="0" * 64)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr
    proc, target = _docker_fetch(tmp_path, BROKER_PYZ_URL=url,
                                 BROKER_PYZ_SHA256=hashlib.sha256(pyz.read_bytes()).hexdigest())
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == pyz.read_bytes() and target.stat().st_mode & 0o777 == 0o755
