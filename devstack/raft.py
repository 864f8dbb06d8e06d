"""A real three-node OpenBao cluster with integrated (raft) storage on loopback.

    cluster = RaftCluster(workdir).start()         # init (1 key share), unseal, raft join, seed
    cluster.active()                               # the node that is active now
    cluster.kill(node)  /  cluster.restart(node)   # crash a node; bring it back (it unseals and rejoins)
    cluster.leader_url()                           # for a proxy that follows the active node
    cluster.stop()

Each node is ``bao server -config nodeN.hcl`` (raft storage in its own directory, an
API and a cluster port, a file audit device at path "file" as the dev server has).
The first node is initialised with one key share and unsealed; the others join it
with ``sys/storage/raft/join`` and are unsealed with the same key. The seed is the
dev server's (devstack/vault.py), with KV v2 mounted at ``secret/`` first; with
``previous`` it restores the same role IDs and broker secret ID, so a broker
configured for the dev server works against the cluster unchanged.

The root token and the unseal key are kept in memory only (never logged).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

from .procs import Proc, StackError, find_executable, free_port, start_process, wait_until
from .vault import KV_MOUNT, VaultSeed, seed_vault

HEALTH = "/v1/sys/health"


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only
    return session


@dataclass
class RaftNode:
    name: str
    workdir: Path
    api_port: int
    cluster_port: int
    proc: Proc | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def config(self) -> Path:
        data = self.workdir / self.name
        data.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.name}.hcl"
        path.write_text(f"""
storage "raft" {{
  path    = {json.dumps(str(data))}
  node_id = "{self.name}"
  performance_multiplier = 1  # raft timeouts of 1x (heartbeat/election ~1 s) instead of the default 5x
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.api_port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_disable     = true
}}
audit "file" "file" {{
  options {{
    file_path = {json.dumps(str(self.workdir / "audit.log"))}  # the same on every node: the audit table is replicated
    mode      = "0600"
  }}
}}
api_addr      = "{self.addr}"
cluster_addr  = "https://127.0.0.1:{self.cluster_port}"
disable_mlock = true
ui            = false
""")
        return path

    def start(self, detached: bool = False) -> "RaftNode":
        argv = [find_executable("bao"), "server", f"-config={self.config()}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        self.proc = start_process(f"OpenBao {self.name}", argv, self.log_path, env=env, detached=detached)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def health(self, http: requests.Session, timeout: float = 0.5) -> int | None:
        """sys/health's status: 200 active, 429 standby, 503 sealed, 501 uninitialised; None if down."""
        try:
            return http.get(self.addr + HEALTH, timeout=timeout).status_code
        except requests.RequestException:
            return None


class RaftCluster:
    def __init__(self, workdir: Path | str, size: int = 3, detached: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.detached = detached
        self.nodes = [RaftNode(f"node{i + 1}", self.workdir, free_port(), free_port()) for i in range(size)]
        self.root_token: str | None = None
        self.unseal_key: str | None = None
        self.seed: VaultSeed | None = None
        self.startup_seconds: float | None = None
        self._http = _http()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, policy_dir: Path | None = None, previous: VaultSeed | None = None,
              timeout: float = 60.0) -> "RaftCluster":
        from .broker import PROJECT_DIR

        t0 = time.monotonic()
        try:
            for node in self.nodes:
                node.start(self.detached)
            first = self.nodes[0]
            for node in self.nodes:
                wait_until(lambda node=node: node.health(self._http) is not None, timeout=timeout, proc=node.proc,
                           what=f"OpenBao {node.name} to listen on {node.addr}")
            init = self._http.put(f"{first.addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1},
                                  timeout=30)
            if init.status_code != 200:
                raise StackError(f"raft init failed: HTTP {init.status_code}")
            doc = init.json()
            self.unseal_key, self.root_token = doc["keys_base64"][0], doc["root_token"]
            self._unseal(first)
            wait_until(lambda: first.health(self._http) == 200, timeout=timeout, proc=first.proc,
                       what=f"{first.name} to become active")
            # Autopilot promotes a joined node to voter once it has been healthy this long (default 10 s).
            self._http.post(f"{first.addr}/v1/sys/storage/raft/autopilot/configuration",
                            headers={"X-Vault-Token": self.root_token},
                            json={"server_stabilization_time": "1s"}, timeout=10)
            for node in self.nodes[1:]:
                self._join(node, first)
            self.wait_voters(timeout)
            client = self.client()
            if "secret/" not in client.sys.list_mounted_secrets_engines():
                client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
            self.seed = seed_vault(client, Path(policy_dir or PROJECT_DIR / "policies" / "vault"), previous=previous)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _unseal(self, node: RaftNode) -> None:
        r = self._http.put(f"{node.addr}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10)
        if r.status_code != 200:
            raise StackError(f"unseal of {node.name} failed: HTTP {r.status_code}")

    def _join(self, node: RaftNode, leader: RaftNode | None = None, timeout: float = 30.0) -> None:
        leader = leader or self.active()
        deadline = time.monotonic() + timeout
        while True:
            r = self._http.post(f"{node.addr}/v1/sys/storage/raft/join",
                                json={"leader_api_addr": leader.addr}, timeout=10)
            if r.status_code == 200 and r.json().get("joined"):
                break
            if time.monotonic() > deadline:
                raise StackError(f"{node.name} could not join {leader.name}: HTTP {r.status_code}")
            time.sleep(0.2)
        self._unseal(node)
        wait_until(lambda: node.health(self._http) in (200, 429), timeout=timeout, proc=node.proc,
                   what=f"{node.name} to be an unsealed standby")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                node.proc.stop()
                node.proc = None

    def __enter__(self) -> "RaftCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state -------------------------------------------------------------------------

    def client(self, node: RaftNode | None = None) -> hvac.Client:
        return hvac.Client(url=(node or self.active()).addr, token=self.root_token, timeout=5)

    def active(self, timeout: float = 0.5) -> RaftNode | None:
        for node in self.nodes:
            if node.alive() and node.health(self._http, timeout) == 200:
                return node
        return None

    def leader_url(self) -> str | None:
        """The active node's address, or None while there is none (for FaultProxy)."""
        node = self.active(timeout=0.3)
        return node.addr if node else None

    def peers(self) -> list[dict]:
        try:
            node = self.active()
            r = self._http.get(f"{node.addr}/v1/sys/storage/raft/configuration",
                               headers={"X-Vault-Token": self.root_token}, timeout=2)
            return r.json()["data"]["config"]["servers"]
        except Exception:
            return []

    def wait_voters(self, timeout: float = 60.0) -> None:
        """Wait until every node is unsealed and a voter (a quorum survives losing any one)."""
        wait_until(lambda: len(self.peers()) == len(self.nodes) and all(p.get("voter") for p in self.peers())
                   and all(n.health(self._http) in (200, 429) for n in self.nodes), timeout=timeout,
                   what="every raft node to be unsealed and a voter")

    def wait_active(self, timeout: float = 30.0, not_node: RaftNode | None = None) -> RaftNode:
        """Wait for an active node (other than ``not_node``); returns it."""
        found: list[RaftNode] = []

        def check() -> bool:
            node = self.active()
            if node is not None and node is not not_node:
                found.append(node)
                return True
            return False

        wait_until(check, timeout=timeout, what="a raft node to become active")
        return found[-1]

    # ---- faults --------------------------------------------------------------------------

    def kill(self, node: RaftNode) -> None:
        """Crash the node (SIGKILL its process group): no step-down, no goodbye."""
        import signal

        if node.proc is not None:
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.proc.stop(timeout=2)
            node.proc = None

    def stop_node(self, node: RaftNode) -> None:
        """Stop the node gracefully (SIGTERM: an active node steps down first)."""
        if node.proc is not None:
            node.proc.stop(timeout=10)
            node.proc = None

    def restart(self, node: RaftNode, timeout: float = 30.0) -> None:
        """Start a stopped node again (same data directory), unseal it, wait until it is a standby."""
        node.start(self.detached)
        wait_until(lambda: node.health(self._http) is not None, timeout=timeout, proc=node.proc,
                   what=f"OpenBao {node.name} to listen again")
        self._unseal(node)
        wait_until(lambda: node.health(self._http) in (200, 429), timeout=timeout, proc=node.proc,
                   what=f"{node.name} to be unsealed again")


__all__ = ["RaftCluster", "RaftNode"]
