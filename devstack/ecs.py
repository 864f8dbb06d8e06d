"""One simulated ECS agent per task of the local stack (devstack/ecs_sim.py as a process):
its task metadata endpoint v4 and its task role's credentials, on a loopback port."""

from __future__ import annotations

import json
import os
import secrets
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from .procs import LoopbackServer, start_process

if TYPE_CHECKING:
    from .stack import Stack

SIM_SCRIPT = Path(__file__).resolve().parent / "ecs_sim.py"
TASKS_DIR = "tasks"  # under the stack's workdir: one config (0600) and one log per task

# never inherited from the developer's shell
_DROP_PREFIXES = ("AWS_", "ECS_", "MOTO_")


class TaskMetadataServer(LoopbackServer):
    """The simulated agent of one task. ``env`` is what ECS puts in the container's
    environment for the client (with a loopback full URI for the credentials)."""

    def __init__(self, workdir: Path, config: dict, port: int | None = None, detached: bool = False):
        super().__init__(workdir, port, detached)
        self.config = config
        self.dir = Path(workdir) / TASKS_DIR
        self.config_path = self.dir / f"{config['task_id']}.json"
        self.log_path = self.dir / f"{config['task_id']}.log"
        self.pid_path = self.dir / f"{config['task_id']}.pid"

    @classmethod
    def for_task(cls, stack: "Stack", task_arn: str, detached: bool = False) -> "TaskMetadataServer":
        """The agent of a task of ``stack``: what the task, its definition and its role are."""
        from .stack import task_account, task_cluster, task_id

        account = task_account(task_arn)
        task = stack.describe_task(task_arn)
        ecs = stack.client("ecs", stack.admin_keys_for(account))
        task_def = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        container = task_def["containerDefinitions"][0]
        group = task.get("group") or ""
        started = task.get("createdAt") or datetime.now(timezone.utc)
        docker_id = secrets.token_hex(32)
        role_arn = stack.task_role(task_arn)
        config = {
            "aws_endpoint_url": stack.aws_endpoint_url, "region": task_arn.split(":")[3],
            "admin": stack.admin_keys_for(account).as_dict(),
            "assume_as": stack.stand_in_keys(role_arn.rsplit("/", 1)[1], account).as_dict(),
            "task_arn": task_arn, "task_id": task_id(task_arn), "cluster": task_cluster(task_arn),
            "role_arn": role_arn,
            "family": task_def["family"], "revision": task_def["revision"],
            "launch_type": task.get("launchType") or "EC2",
            "service_name": group[len("service:"):] if group.startswith("service:") else None,
            "container_name": container["name"], "image": container.get("image", ""),
            "image_id": "sha256:" + secrets.token_hex(32),
            "cpu": container.get("cpu", 0), "memory": container.get("memory", 0),
            "docker_id": docker_id, "container_id": str(uuid.uuid4()), "credentials_id": str(uuid.uuid4()),
            "container_arn": f"arn:aws:ecs:{task_arn.split(':')[3]}:{account}:container/"
                             f"{task_cluster(task_arn)}/{task_id(task_arn)}/{uuid.uuid4()}",
            "created_at": started.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "availability_zone": f"{task_arn.split(':')[3]}a",
            "private_ip": f"172.17.0.{2 + secrets.randbelow(250)}",
        }
        return cls(stack.workdir, config, detached=detached)

    @classmethod
    def running(cls, workdir: Path, task_id: str) -> "TaskMetadataServer | None":
        """The detached agent of that task that another process started and left running
        (``as-task``, ``KEEP=1 make demo``), if it still runs: one agent per task."""
        from .procs import cmdline, pid_alive

        directory = Path(workdir) / TASKS_DIR
        try:
            pid = int((directory / f"{task_id}.pid").read_text().strip())
            config = json.loads((directory / f"{task_id}.json").read_text())
        except (OSError, ValueError):
            return None
        argv = cmdline(pid) or []
        if not pid_alive(pid) or str(directory / f"{task_id}.json") not in argv:
            return None
        server = cls(workdir, config, port=int(argv[argv.index("--port") + 1]), detached=True)
        server.adopted_pid = pid
        return server

    adopted_pid: int | None = None  # an agent another process started (never stopped by this one)

    @property
    def metadata_uri(self) -> str:
        """ECS_CONTAINER_METADATA_URI_V4 (the container's metadata; ``/task`` the task's)."""
        return f"{self.url}/v4/{self.config['container_id']}"

    @property
    def credentials_uri(self) -> str:
        """AWS_CONTAINER_CREDENTIALS_FULL_URI: the task role's credentials."""
        return f"{self.url}/v2/credentials/{self.config['credentials_id']}"

    @property
    def env(self) -> dict[str, str]:
        """What the ECS agent puts in the container's environment (EC2 launch type), with
        a loopback AWS_CONTAINER_CREDENTIALS_FULL_URI where ECS has a RELATIVE_URI on
        169.254.170.2 (botocore accepts a full URI on a loopback address)."""
        region = self.config["region"]
        return {"ECS_CONTAINER_METADATA_URI_V4": self.metadata_uri,
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.credentials_uri,
                "AWS_EXECUTION_ENV": "AWS_ECS_EC2", "AWS_REGION": region, "AWS_DEFAULT_REGION": region}

    def start(self) -> "TaskMetadataServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds admin keys
        with os.fdopen(fd, "w") as f:
            json.dump(self.config, f)
        argv = [sys.executable, str(SIM_SCRIPT), "--port", str(self.port), "--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = start_process(f"ECS agent of task {self.config['task_id']}", argv, self.log_path,
                                  env=env, detached=self.detached)
        if self.detached:  # it outlives us: `python -m devstack down` stops it
            self.pid_path.write_text(f"{self.pid}\n")
        return self

    def wait_ready(self, timeout: float = 15.0) -> "TaskMetadataServer":
        session = requests.Session()
        session.trust_env = False  # loopback only
        return self._wait_until_ready(lambda: session.get(self.metadata_uri, timeout=2).status_code == 200,
                                      f"the ECS agent simulator of task {self.config['task_id']}", timeout)

    def stop(self) -> None:
        if self.adopted_pid is not None:
            return  # another process's agent: `python -m devstack down` stops it
        super().stop()
        for path in (self.config_path, self.pid_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
