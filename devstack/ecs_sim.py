"""A simulated ECS task: its task metadata endpoint (v4) and its task role's credentials.

Inside a real task the ECS agent serves, on 169.254.170.2:
  - ``$ECS_CONTAINER_METADATA_URI_V4``        the container's metadata (JSON)
  - ``$ECS_CONTAINER_METADATA_URI_V4/task``   the task's metadata: ``Cluster``, ``TaskARN``,
                                              ``Family``, ``Revision``, ``DesiredStatus``,
                                              ``KnownStatus``, ``LaunchType``, ``Containers``...
  - ``$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` the task role's credentials, a session the
                                              agent names after the task ID
This process serves the same paths on a loopback port for ONE task of the local stack
(moto's ECS), so a real ``broker login`` given ``ECS_CONTAINER_METADATA_URI_V4`` and
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (botocore's container provider accepts a loopback
full URI) behaves as inside that task. The credentials path holds a random ID, like the
agent's, and is the only thing that guards them (any local process could ask).

The task role's credentials come from sts:AssumeRole in moto (with the keys that stand in
for ECS, see ``Stack.stand_in_keys``, from the 0600 config file), session name = the task ID, refreshed 15 minutes
before they expire. ``KnownStatus``/``DesiredStatus`` are read from moto's DescribeTasks
on each request; once the task is STOPPED the credentials path answers 400 (the agent
drops a stopped task's credentials).

    python devstack/ecs_sim.py --port N --config FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFRESH_BEFORE = 15 * 60
CREDENTIAL_SECONDS = 3600


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Task:
    """What the agent knows about its task, and the task role's credentials."""

    def __init__(self, config: dict):
        import botocore.session
        from botocore.config import Config

        self.config = config
        session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})

        def client(name: str, keys: dict):
            return session.create_client(
                name, region_name=config["region"], endpoint_url=config["aws_endpoint_url"],
                aws_access_key_id=keys["access_key_id"], aws_secret_access_key=keys["secret_access_key"],
                config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}))

        self.ecs = client("ecs", config["admin"])          # the task's account
        self.sts = client("sts", config["assume_as"])      # who stands in for ECS (Stack.stand_in_keys)
        self._lock = threading.Lock()
        self._creds: dict | None = None
        self._expires = 0.0

    def status(self) -> tuple[str, str]:
        """(KnownStatus, DesiredStatus) as moto's ECS has them now."""
        tasks = self.ecs.describe_tasks(cluster=self.config["cluster"], tasks=[self.config["task_arn"]])["tasks"]
        if not tasks:
            return "STOPPED", "STOPPED"
        return tasks[0]["lastStatus"], tasks[0]["desiredStatus"]

    def credentials(self) -> dict:
        with self._lock:
            if self._creds is None or time.time() > self._expires - REFRESH_BEFORE:
                c = self.sts.assume_role(RoleArn=self.config["role_arn"], RoleSessionName=self.config["task_id"],
                                         DurationSeconds=CREDENTIAL_SECONDS)["Credentials"]
                self._creds = {"RoleArn": self.config["role_arn"], "AccessKeyId": c["AccessKeyId"],
                               "SecretAccessKey": c["SecretAccessKey"], "Token": c["SessionToken"],
                               "Expiration": _iso(c["Expiration"])}
                self._expires = c["Expiration"].timestamp()
            return dict(self._creds)

    def container_json(self, known: str, desired: str) -> dict:
        c = self.config
        return {
            "DockerId": c["docker_id"], "Name": c["container_name"],
            "DockerName": f"ecs-{c['family']}-{c['revision']}-{c['container_name']}-{c['docker_id'][:20]}",
            "Image": c["image"], "ImageID": c["image_id"],
            "Labels": {"com.amazonaws.ecs.cluster": c["cluster"],
                       "com.amazonaws.ecs.container-name": c["container_name"],
                       "com.amazonaws.ecs.task-arn": c["task_arn"],
                       "com.amazonaws.ecs.task-definition-family": c["family"],
                       "com.amazonaws.ecs.task-definition-version": str(c["revision"])},
            "DesiredStatus": desired, "KnownStatus": known,
            "Limits": {"CPU": c["cpu"], "Memory": c["memory"]},
            "CreatedAt": c["created_at"], "StartedAt": c["created_at"], "Type": "NORMAL",
            "ContainerARN": c["container_arn"],
            "Networks": [{"NetworkMode": "bridge", "IPv4Addresses": [c["private_ip"]]}],
        }

    def task_json(self) -> dict:
        c = self.config
        known, desired = self.status()
        out = {"Cluster": c["cluster"], "TaskARN": c["task_arn"], "Family": c["family"],
               "Revision": str(c["revision"]), "DesiredStatus": desired, "KnownStatus": known,
               "PullStartedAt": c["created_at"], "PullStoppedAt": c["created_at"],
               "AvailabilityZone": c["availability_zone"], "LaunchType": c["launch_type"],
               "Containers": [self.container_json(known, desired)]}
        if c.get("service_name"):
            out["ServiceName"] = c["service_name"]
        return out


class Handler(BaseHTTPRequestHandler):
    server_version = "ecs-agent-sim"
    task: Task  # set on the class by main()

    def log_message(self, fmt, *args):  # the request line only; never the credentials path's ID
        sys.stderr.write("%s %s\n" % (self.command, self.path.split("/v2/credentials/")[0] or "/"))

    def _send(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        c = self.task.config
        path = self.path.split("?", 1)[0].rstrip("/")
        base = f"/v4/{c['container_id']}"
        try:
            if path == base:
                self._send(200, self.task.container_json(*self.task.status()))
            elif path == base + "/task":
                self._send(200, self.task.task_json())
            elif path == f"/v2/credentials/{c['credentials_id']}":
                known, _ = self.task.status()
                if known == "STOPPED":
                    self._send(400, {"code": "InvalidIdInRequest",
                                     "message": "CredentialsV2Request: Credentials not found",
                                     "HTTPErrorCode": 400})
                else:
                    self._send(200, self.task.credentials())
            else:
                self._send(404, {"code": "NotFound", "message": "no such path"})
        except Exception as e:  # moto down: the agent would answer 500 too
            self._send(500, {"code": "InternalError", "message": type(e).__name__})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True, help="JSON file (mode 0600) written by devstack")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        Handler.task = Task(json.load(f))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"ECS agent simulator for {Handler.task.config['task_arn']} on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
