"""The broker itself under ``chalice local``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import requests

from .procs import LoopbackServer, StackError, find_executable, start_process

PROJECT_DIR = Path(__file__).resolve().parent.parent
# never inherited from the developer's shell: the broker gets exactly our env
_DROP_PREFIXES = ("AWS_", "BROKER_", "GOOGLE_", "GCE_METADATA_", "CLOUDSDK_")


class ChaliceLocal(LoopbackServer):
    """``chalice local --stage local`` in the project directory."""

    log_name = "broker.log"

    def __init__(self, workdir: Path, env: Mapping[str, str], *, port: int | None = None,
                 project_dir: Path = PROJECT_DIR, detached: bool = False, url_env: tuple[str, ...] = ()):
        super().__init__(workdir, port, detached)
        self.project_dir = Path(project_dir)
        self.broker_env = dict(env)
        self.url_env = url_env  # variables set to this broker's own URL at each start

    def start(self) -> "ChaliceLocal":
        argv = [find_executable("chalice"), "local", "--host", "127.0.0.1",
                "--port", str(self.port), "--stage", "local", "--no-autoreload"]
        for name in self.url_env:  # the port may change when a start loses a port race
            self.broker_env[name] = self.url
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
        env.update(self.broker_env)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "a") as f:
            f.write(f"--- devstack: starting chalice local on {self.url}\n")
        self.proc = start_process("chalice local", argv, self.log_path, env=env,
                                  cwd=self.project_dir, detached=self.detached)
        return self

    def wait_ready(self, timeout: float = 30.0) -> "ChaliceLocal":
        # any HTTP answer counts: 503 means "up, but a backend is down"
        return self._wait_until_ready(lambda: requests.get(f"{self.url}/v1/health", timeout=2) is not None,
                                      f"the broker (chalice local) to answer GET {self.url}/v1/health", timeout)


__all__ = ["ChaliceLocal", "PROJECT_DIR", "StackError"]
