"""OpenBao dev server (in memory) and its seed: AppRoles, policies, KV secrets, in the root
namespace or in a namespace of their own (``make stack-up VAULT_NAMESPACE=team-a``)."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import requests

from broker.errors import ClientError, VaultError as BrokerVaultError

from .procs import (Proc, StackError, find_executable, free_port, lost_port_race, start_process,
                    wait_until)

ROOT_TOKEN = "root"
BROKER_ROLE = "secret-zero-broker"
APPROLE_MOUNT = "approle"
KV_MOUNT = "secret"
_UNSEAL_RE = re.compile(r"^Unseal Key:\s*(\S+)\s*$", re.MULTILINE)
_NAMESPACE_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def namespace_path(value: str | None) -> str | None:
    """A namespace path (``team-a``, ``admin/team-a``) without its slashes at the ends, or None
    for the root namespace (unset, empty or ``root``), as the broker reads BROKER_VAULT_NAMESPACE."""
    path = (value or "").strip().strip("/")
    if not path or path == "root":
        return None
    parts = path.split("/")
    if len(parts) > 8 or not all(_NAMESPACE_SEGMENT.match(p) for p in parts) or parts[0] in ("root", "sys"):
        raise StackError(f"not a Vault namespace path: {value!r} (segments of letters, digits, '-' and '_', "
                         "like team-a or admin/team-a)")
    return path


class OpenBaoServer:
    """``bao server -dev`` on a loopback port. All data lives in memory."""

    def __init__(self, workdir: Path, port: int | None = None, detached: bool = False):
        self.workdir = Path(workdir)
        # the dev cluster listener takes port+1
        self.port = port or free_port(span=2)
        self._auto_port = port is None
        self.detached = detached
        self.log_path = self.workdir / "openbao.log"
        # A file audit device at path "file" (declared in a config file: OpenBao refuses
        # to enable audit devices through its API); the broker asks sys/audit-hash/file.
        self.audit_log_path = self.workdir / "openbao-audit.log"
        self.proc: Proc | None = None
        self.unseal_key: str | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "OpenBaoServer":
        """Start the process (returns at once; call :meth:`wait_ready`)."""
        if self.proc is not None and self.proc.alive():
            raise StackError(f"OpenBao already runs on {self.addr}")
        self.unseal_key = None
        # a fresh log per start, so the unseal key read is this run's
        if self.log_path.exists():
            self.log_path.unlink()
        argv = [
            find_executable("bao"), "server", "-dev",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",  # don't write ~/.vault-token
            f"-config={self._write_audit_config()}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        self.proc = start_process("OpenBao", argv, self.log_path, env=env, detached=self.detached)
        return self

    def _write_audit_config(self) -> Path:
        config = self.workdir / "openbao-audit.hcl"
        config.write_text('audit "file" "file" {\n  options {\n'
                          f'    file_path = {json.dumps(str(self.audit_log_path))}\n    mode = "0600"\n  }}\n}}\n')
        return config

    def wait_ready(self, timeout: float = 20.0) -> "OpenBaoServer":
        for attempt in range(3):
            try:
                return self._wait_ready(timeout)
            except StackError:
                if attempt == 2 or not (self._auto_port and lost_port_race(self.proc)):
                    raise
                self.port = free_port(span=2)
                self.start()
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> "OpenBaoServer":
        assert self.proc is not None

        def ready() -> bool:
            if self.unseal_key is None:
                m = _UNSEAL_RE.search(self.log_path.read_text(errors="replace"))
                if m:
                    self.unseal_key = m.group(1)
            if self.unseal_key is None:
                return False
            r = requests.get(f"{self.addr}/v1/sys/health", timeout=1)
            return r.status_code == 200

        wait_until(ready, timeout=timeout, proc=self.proc,
                   what=f"OpenBao to answer on {self.addr}/v1/sys/health")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def client(self, token: str | None = ROOT_TOKEN, namespace: str | None = None) -> hvac.Client:
        """An hvac client; ``namespace``: X-Vault-Namespace on every call (None: the root
        namespace, where seal, unseal, health and the audit devices live)."""
        return hvac.Client(url=self.addr, token=token, timeout=5, namespace=namespace or None)

    def create_namespace(self, namespace: str) -> dict:
        """Create ``namespace`` (each level of ``admin/team-a``; one that exists is kept) with the
        root token, and in it what the dev server gives the root namespace: KV v2 at ``secret/``.
        Returns the namespace's ``sys/namespaces`` entry (``id``, ``path``)."""
        parent: str | None = None
        entry: dict = {}
        for segment in namespace.split("/"):
            entry = _retry(lambda parent=parent, segment=segment: self.client(namespace=parent).adapter.post(
                f"/v1/sys/namespaces/{segment}").get("data") or {}, f"namespace {segment}")
            parent = f"{parent}/{segment}" if parent else segment
        inside = self.client(namespace=namespace)
        mounts = _retry(lambda: inside.sys.list_mounted_secrets_engines(), "mounts")
        if f"{KV_MOUNT}/" not in (mounts.get("data") or mounts):
            _retry(lambda: inside.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"}),
                   f"KV v2 at {KV_MOUNT}/")
        return entry

    def health(self) -> dict:
        """``sys/health`` as JSON (sealed/standby answer with non-200 codes)."""
        r = requests.get(f"{self.addr}/v1/sys/health", timeout=2)
        return r.json()

    def seal(self) -> None:
        self.client().sys.seal()
        wait_until(lambda: self.client().sys.is_sealed(), timeout=5, proc=self.proc,
                   what="OpenBao to report sealed")

    def unseal(self) -> None:
        if not self.unseal_key:
            raise StackError("the OpenBao unseal key was not captured")
        self.client().sys.submit_unseal_key(self.unseal_key)
        # standby/active settle a moment after unseal: wait for health 200
        wait_until(lambda: requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200,
                   timeout=10, proc=self.proc, what="OpenBao to be active after unseal")


@dataclass
class VaultSeed:
    """What the seed produced; the IDs are secrets except the accessors."""

    broker_role_id: str
    broker_secret_id: str
    role_ids: dict[str, str] = field(default_factory=dict)  # web/batch
    revoker_role_id: str = ""  # the revoking identity (secret-zero-revoker)
    revoker_secret_id: str = ""
    kv: dict[str, dict] = field(default_factory=dict)  # path -> data


def _retry(fn, what: str, timeout: float = 10.0):
    """Retry while a fresh dev server's KV v2 mount is still upgrading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (hvac.exceptions.VaultError, BrokerVaultError, requests.ConnectionError) as e:
            if time.monotonic() >= deadline:
                raise StackError(f"OpenBao seed failed at {what}: {e}") from e
            time.sleep(0.05)


def seed_vault(
    client: hvac.Client,
    policy_dir: Path,
    *,
    previous: VaultSeed | None = None,
    rules_file: Path | None = None,
    namespace: str | None = None,
) -> VaultSeed:
    """Seed a fresh dev server with the root-token ``client``; with ``namespace`` (a namespace
    :meth:`OpenBaoServer.create_namespace` made; ``client`` sends it) every object is made in it.

    The AppRole mount, the policies and the AppRoles are configured by ``broker vault
    setup``'s own steps (``broker/vault_setup.py``), for the roles the rules file serves
    (``rules_file``, default ``policy_dir/../rules.toml``), so `broker vault setup` on the
    seeded stack finds nothing to change. The broker's AppRole is created with 1 h tokens
    here (setup's default is 15 min). Then the dev-only parts: the broker's secret ID
    (response-wrapped in transit, as setup does; stored in Secrets Manager by the stack
    once moto is up), the KV secrets.

    With ``previous`` the role IDs, the broker's secret ID and the KV data are
    put back as they were (a restarted dev server has lost everything, a real
    one would not have), so a running broker keeps working configuration.
    """
    from broker import vault_setup as setup

    policy_dir = Path(policy_dir)
    vault = setup.Vault(client.url, client.token, timeout=5, namespace=namespace)
    try:
        roles = setup.served_roles(str(rules_file or policy_dir.parent / "rules.toml"))
        policies = setup.check_policy_dir(policy_dir, roles, APPROLE_MOUNT, BROKER_ROLE)
    except ClientError as e:
        raise StackError(f"OpenBao seed: {e}") from None
    plan = setup.Plan(dry_run=False)
    _retry(lambda: setup.ensure_approle(vault, APPROLE_MOUNT, plan), "enable approle")
    _retry(lambda: setup.ensure_no_lockout(vault, APPROLE_MOUNT, plan), "approle lockout")
    _retry(lambda: setup.ensure_policies(vault, policies, plan), "policies")
    _retry(lambda: setup.ensure_role(vault, APPROLE_MOUNT, BROKER_ROLE,
                                     {"token_policies": [BROKER_ROLE], "secret_id_num_uses": 0},
                                     {"token_ttl": 3600, "token_max_ttl": 14400}, plan), f"AppRole {BROKER_ROLE}")
    _retry(lambda: setup.ensure_role(vault, APPROLE_MOUNT, setup.REVOKER_ROLE, setup.REVOKER_WANTED,
                                     setup.BROKER_ROLE_DEFAULTS, plan), f"AppRole {setup.REVOKER_ROLE}")
    for role, secret_id_ttl in sorted(roles.items()):
        _retry(lambda role=role, ttl=secret_id_ttl: setup.ensure_role(
            vault, APPROLE_MOUNT, role, {"token_policies": [role], "secret_id_num_uses": 1, "secret_id_ttl": ttl},
            setup.SERVED_ROLE_CREATE_DEFAULTS, plan), f"AppRole {role}")

    role_ids: dict[str, str] = {}
    for role in (BROKER_ROLE, setup.REVOKER_ROLE, *sorted(roles)):
        old = previous.broker_role_id if previous is not None and role == BROKER_ROLE else \
            previous.revoker_role_id if previous is not None and role == setup.REVOKER_ROLE else \
            (previous.role_ids.get(role) if previous is not None else None)
        if old:
            vault.ok("POST", f"auth/{APPROLE_MOUNT}/role/{role}/role-id", {"role_id": old})
        role_ids[role] = (vault.read(f"auth/{APPROLE_MOUNT}/role/{role}/role-id") or {})["role_id"]

    if previous is not None:
        secret_id = previous.broker_secret_id
        vault.ok("POST", f"auth/{APPROLE_MOUNT}/role/{BROKER_ROLE}/custom-secret-id", {"secret_id": secret_id})
        revoker_secret_id = previous.revoker_secret_id
        vault.ok("POST", f"auth/{APPROLE_MOUNT}/role/{setup.REVOKER_ROLE}/custom-secret-id",
                 {"secret_id": revoker_secret_id})
    else:
        secret_id, _accessor = setup.mint_secret_id(vault, APPROLE_MOUNT, BROKER_ROLE)
        revoker_secret_id, _accessor = setup.mint_secret_id(vault, APPROLE_MOUNT, setup.REVOKER_ROLE)

    kv = dict(previous.kv) if previous is not None else {
        "web/config": {"db_password": secrets.token_urlsafe(18), "api_url": "https://web.internal"},
        "batch/config": {"db_password": secrets.token_urlsafe(18), "queue_url": "https://batch.internal/queue"},
    }
    for path, data in kv.items():
        _retry(lambda path=path, data=data: client.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=KV_MOUNT), f"kv {path}")

    return VaultSeed(
        broker_role_id=role_ids.pop(BROKER_ROLE),
        broker_secret_id=secret_id,
        revoker_role_id=role_ids.pop(setup.REVOKER_ROLE),
        revoker_secret_id=revoker_secret_id,
        role_ids=role_ids,
        kv=kv,
    )
