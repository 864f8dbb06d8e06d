"""``python -m devstack up|down|status|as-instance|as-task|as-gce|as-role|as-operator [--dir .stack]``.

``up`` starts OpenBao, moto (SigV4 on), the simulated Google, seeds them and starts the broker under
``chalice local``, all detached (``--vault-namespace team-a``: every Vault object in that namespace), and writes ``DIR/endpoints.json`` (mode 0600:
it holds the root token and keys, which are never printed). ``down`` stops what
``up`` started and removes the state; ``status`` tells what runs.

``as-instance``, ``as-task`` and ``as-gce`` create a machine in the running stack (an EC2
instance, an ECS task, a GCE instance) and print the environment of a process on it as
shell lines (``eval "$(python -m devstack as-instance --tags vault-role=web)"``), or run
the command given after ``--`` in it: ``broker login`` then works exactly as on that
machine. ``as-role`` is a person with an IAM role (the security team), ``as-operator`` the
operator who runs ``broker vault setup``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import requests

from . import gcp, machines
from .aws import ACCOUNT_ID, ECS_CLUSTER, SECOND_ACCOUNT_ID, TASK_FAMILY
from .ecs import TASKS_DIR
from .procs import StackError, cmdline, kill_group, pid_alive
from .stack import Stack, task_account, task_id

STATE_FILE = "endpoints.json"
STATE_FILES = (STATE_FILE, "broker.env", "openbao.log", "moto.log", "broker.log", "google.log",
               "gcp-credentials.json", "openbao-audit.hcl", "openbao-audit.log")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _load(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise SystemExit(f"{state_dir / STATE_FILE} is not valid JSON ({e}); remove it by hand")


def _port(url: str | None) -> str:
    return url.rsplit(":", 1)[1] if url else "?"


def _ours(name: str, pid: int | None, state: dict) -> bool:
    """Is ``pid`` alive and still the process ``up`` started (not a reused pid)?"""
    if not pid or not pid_alive(pid):
        return False
    argv = cmdline(pid) or []
    text = " ".join(argv)
    if name == "vault":
        return "bao" in text and f"127.0.0.1:{_port(state.get('vault_addr'))}" in text
    if name == "moto":
        return ("moto_server" in text or "devstack.moto_isolated" in text) and _port(state.get("aws_endpoint_url")) in argv
    if name == "broker":
        return "chalice" in text and "local" in argv and _port(state.get("broker_url")) in argv
    if name == "google":
        return "google_sim.py" in text and _port(state.get("gcp_compute_url")) in argv
    return False


def _running(state: dict) -> dict[str, int]:
    return {name: pid for name, pid in (state.get("pids") or {}).items() if _ours(name, pid, state)}


def _stop_hint(state_dir: str) -> str:
    """How to stop the stack in STATE_DIR, from a plain shell (the venv need not be active)."""
    if Path(state_dir).resolve() == Path(".stack").resolve():
        return "make stack-down"
    return f".venv/bin/python -m devstack down --dir {state_dir}"


def running_stack(state_dir: Path) -> dict[str, int]:
    """The processes of a stack that runs in ``state_dir`` now (empty: none)."""
    state = _load(state_dir)
    return _running(state) if state is not None else {}


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.dir).resolve()
    state = _load(state_dir)
    if state is not None:
        running = _running(state)
        if running:
            _say(f"The local stack already runs ({', '.join(sorted(running))}); "
                 f"`{_stop_hint(args.dir)}` first.")
            return cmd_status(args)
        _remove_state(state_dir, quiet=True)  # stale state of a stack that died
    _say(f"Starting the local stack (state in {state_dir}) ...")
    try:
        stack = Stack.start(state_dir, with_broker=not args.no_broker, detached=True,
                            vault_namespace=args.vault_namespace, progress=_say)
    except StackError as e:
        _say(f"Failed: {e}")
        _say("Everything that had started was stopped again.")
        return 1
    stack.write_endpoints(state_dir / STATE_FILE)
    stack.write_broker_env(state_dir / "broker.env")
    _say(f"Up in {stack.startup_seconds:.1f}s. Endpoints, keys and tokens: {state_dir / STATE_FILE} (mode 0600).")
    _say(f"Broker environment: {state_dir / 'broker.env'} (mode 0600). Logs: {state_dir}/*.log")
    _say(f"Stop it with: {_stop_hint(args.dir)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.dir).resolve()
    state = _load(state_dir)
    if state is None:
        _say(f"Nothing to stop (no {state_dir / STATE_FILE}).")
        return 0
    running = _running(state)
    for name in ("broker", "vault", "moto", "google"):
        if name in running:
            kill_group(running[name])
            _say(f"Stopped {name} (pid {running[name]}).")
    for task, pid in _task_agents(state_dir).items():
        kill_group(pid)
        running[f"ECS agent of task {task}"] = pid
        _say(f"Stopped the simulated ECS agent of task {task} (pid {pid}).")
    left = {n: p for n, p in running.items() if pid_alive(p)}
    if left:
        _say(f"Still running after SIGKILL: {left}; state kept in {state_dir}.")
        return 1
    _remove_state(state_dir)
    _say("The local stack is down.")
    return 0


def _task_agents(state_dir: Path) -> dict[str, int]:
    """task ID -> pid of the simulated ECS agents that ``as-task`` left running."""
    out = {}
    for pid_file in sorted((state_dir / TASKS_DIR).glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        argv = cmdline(pid) or []
        if pid_alive(pid) and any(a.endswith("ecs_sim.py") for a in argv) and \
                str(state_dir / TASKS_DIR / f"{pid_file.stem}.json") in argv:
            out[pid_file.stem] = pid
    return out


def _remove_state(state_dir: Path, quiet: bool = False) -> None:
    for name in STATE_FILES:
        try:
            (state_dir / name).unlink()
        except FileNotFoundError:
            pass
    shutil.rmtree(state_dir / TASKS_DIR, ignore_errors=True)  # the task agents' configs hold admin keys
    shutil.rmtree(state_dir / "demo", ignore_errors=True)  # KEEP=1 make demo: the machines' Vault tokens
    try:
        state_dir.rmdir()  # only when nothing else is in it
    except OSError:
        pass
    if not quiet:
        _say(f"Removed the state in {state_dir}.")


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.dir).resolve()
    state = _load(state_dir)
    if state is None:
        _say(f"The local stack is not running (no {state_dir / STATE_FILE}).")
        return 3
    running = _running(state)
    pids = state.get("pids") or {}
    for name, label, url, probe in (
        ("vault", "OpenBao", state.get("vault_addr"), "/v1/sys/health"),
        ("moto", "moto server", state.get("aws_endpoint_url"), "/moto-api/"),
        ("google", "Google simulator", state.get("gcp_compute_url"), "/_admin/health"),
        ("broker", "broker (chalice local)", state.get("broker_url"), "/v1/health"),
    ):
        if not url and not pids.get(name):
            _say(f"{label}: not started")
            continue
        if name not in running:
            _say(f"{label}: NOT running (pid {pids.get(name)} gone), was {url}")
            continue
        detail = ""
        try:
            r = requests.get(url + probe, timeout=2)
            detail = f"HTTP {r.status_code}"
            if name == "vault":
                h = r.json()
                detail += ", sealed" if h.get("sealed") else ", unsealed"
        except requests.RequestException as e:
            detail = f"not answering ({type(e).__name__})"
        if name == "vault" and state.get("vault_namespace"):
            detail += f"; the stack's objects in namespace {state['vault_namespace']}"
        _say(f"{label}: running, pid {pids[name]}, {url} ({detail})")
    for task, pid in _task_agents(state_dir).items():
        _say(f"simulated ECS agent of task {task}: running, pid {pid}")
    _say(f"Endpoints and secrets: {state_dir / STATE_FILE}")
    expected = {n for n, p in pids.items() if p}
    return 0 if expected and expected <= set(running) else 1


# -- machines of the running stack ------------------------------------------------------

def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``["k=v,k2=v2", "k3=v3"]`` -> dict."""
    out: dict[str, str] = {}
    for value in values or []:
        for item in filter(None, value.split(",")):
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"{what}: expected KEY=VALUE, got {item!r}")
            out[key] = val
    return out


def _hand_over(args: argparse.Namespace, env: dict[str, str], comments: list[str]) -> int:
    """Print the environment as shell lines, or run the command in it."""
    if args.cmd:
        try:
            return subprocess.run(args.cmd, env=machines.process_env(env)).returncode
        except FileNotFoundError:
            print(f"devstack: command not found: {args.cmd[0]}", file=sys.stderr)
            return 127
    sys.stdout.write(machines.export_lines(env, tuple(comments)))
    return 0


def _login_hint(tags: dict[str, str]) -> str:
    role = tags.get("vault-role", "ROLE")
    return f"Then: broker login --role {role} --sink /tmp/vault-token   (or --out-dir, --agent-dir, --exec)"


def cmd_as_instance(args: argparse.Namespace) -> int:
    stack = Stack.attach(args.dir)
    account = args.account or ACCOUNT_ID
    tags = _pairs(args.tags, "--tags")
    if args.instance:
        instance_id = args.instance
        tags = {t["Key"]: t["Value"] for t in stack.describe_instance(instance_id, account).get("Tags", [])}
        made = "existing"
    else:
        options = {"HttpTokens": "required", "HttpEndpoint": "enabled"} if args.imdsv2 else None
        instance_id = stack.launch_instance(tags, profile=args.profile, account=account, metadata_options=options)
        made = "new"
    env = machines.instance_env(stack, instance_id, account)
    role = stack.instance_role(instance_id, account)
    return _hand_over(args, env, [
        f"EC2 instance {instance_id} ({made}) in account {account}: role {role} (instance profile), "
        f"tags {_show(tags)}",
        f"Its role's credentials (session {instance_id}, as EC2 names it) last one hour: run this again for new ones.",
        _login_hint(tags)])


def cmd_as_task(args: argparse.Namespace) -> int:
    stack = Stack.attach(args.dir)
    tags = _pairs(args.tags, "--tags")
    if args.task_arn:
        arn = args.task_arn
        tags = {t["key"]: t["value"] for t in stack.describe_task(arn).get("tags", [])}
        made = "existing"
    else:
        arn = stack.run_task(tags, cluster=args.cluster, task_definition=args.task_definition,
                             account=args.account or ACCOUNT_ID, task_role=args.task_role)
        made = "new"
    agent = stack.task_metadata(arn, detached=not args.cmd)
    env = machines.task_env(stack, arn)
    comments = [f"ECS task {arn} ({made}) in account {task_account(arn)}: task role "
                f"{stack.task_role(arn).rsplit('/', 1)[1]}, tags {_show(tags)}",
                f"Its simulated ECS agent (pid {agent.pid or agent.adopted_pid}) serves the task metadata endpoint v4 and the task role's "
                f"credentials (session {task_id(arn)}, as ECS names it) until `python -m devstack down`.",
                _login_hint(tags)]
    if not args.cmd or made == "existing":  # (a command in an existing task: like ECS Exec)
        return _hand_over(args, env, comments)
    try:  # the command is the new task's essential container: the task stops when it exits
        return _hand_over(args, env, comments)
    finally:
        agent.stop()
        stack.stop_task(arn, reason="Essential container in task exited")


def cmd_as_gce(args: argparse.Namespace) -> int:
    import secrets

    stack = Stack.attach(args.dir)
    labels = _pairs(args.labels, "--labels")
    if args.instance:
        name = args.instance
        labels = stack.gcp_instance(name, args.project, args.zone).get("labels", {})
        made = "existing"
    else:
        name = args.name or f"dev-{secrets.token_hex(3)}"
        stack.gcp_create_instance(name, labels, project=args.project, zone=args.zone,
                                  service_account=args.service_account)
        made = "new"
    env = machines.gce_env(stack, name, args.project, args.zone)
    return _hand_over(args, env, [
        f"GCE instance {name} ({made}) in project {args.project}, zone {args.zone}: service account "
        f"{args.service_account}, labels {_show(labels)}",
        "Its metadata server (on the simulated Google) gives it identity tokens for any audience.",
        _login_hint(labels)])


def cmd_as_role(args: argparse.Namespace) -> int:
    stack = Stack.attach(args.dir)
    env = machines.role_env(stack, args.role, args.session, args.account or ACCOUNT_ID)
    return _hand_over(args, env, [
        f"IAM role {args.role} of account {args.account or ACCOUNT_ID}, session {args.session} (one hour)",
        "Then e.g.: broker audit search --since 1h"])


def cmd_as_operator(args: argparse.Namespace) -> int:
    stack = Stack.attach(args.dir)
    env = machines.operator_env(stack)
    return _hand_over(args, env, [
        "The operator: OpenBao's root token, the AWS admin's keys, moto as the AWS endpoint",
        f"Then e.g.: broker vault setup --dry-run --secret secret-zero-broker/local/vault-secret-id "
        f"--aws-endpoint-url {stack.aws_endpoint_url}"])


def _show(pairs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items()) or "(none)"


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=".stack", help="state directory of the running stack (default: .stack)")
    p.add_argument("cmd", nargs="*", metavar="-- CMD", help="run CMD in the machine's environment instead of "
                   "printing it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("up", cmd_up, "start the local stack, detached"),
                            ("down", cmd_down, "stop it and remove its state"),
                            ("status", cmd_status, "tell what runs")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", default=".stack", help="state directory (default: .stack)")
        p.set_defaults(func=fn)
        if name == "up":
            p.add_argument("--no-broker", action="store_true",
                           help="OpenBao + moto + seed only, no chalice local")
            p.add_argument("--vault-namespace", metavar="NS", default=None,
                           help="put every Vault object of the stack in this namespace (created; e.g. team-a "
                                "or admin/team-a), named in endpoints.json as vault_namespace (default: root)")
    accounts = (ACCOUNT_ID, SECOND_ACCOUNT_ID)

    p = sub.add_parser("as-instance", help="an EC2 instance of the running stack: its environment, or CMD in it")
    p.add_argument("--tags", action="append", metavar="K=V[,K=V]", help="the instance's tags")
    p.add_argument("--profile", default="demo-node", help="instance profile (default: demo-node)")
    p.add_argument("--account", choices=accounts, help=f"AWS account (default: {ACCOUNT_ID}, the broker's)")
    p.add_argument("--imdsv2", action="store_true", help="launch it with IMDSv2 required (HttpTokens=required)")
    p.add_argument("--instance", metavar="ID", help="an existing instance instead of a new one")
    _add_machine_args(p)
    p.set_defaults(func=cmd_as_instance)

    p = sub.add_parser("as-task", help="an ECS task of the running stack: its environment, or CMD in it")
    p.add_argument("--tags", action="append", metavar="K=V[,K=V]", help="the task's tags")
    p.add_argument("--account", choices=accounts, help=f"AWS account (default: {ACCOUNT_ID}, the broker's)")
    p.add_argument("--cluster", default=ECS_CLUSTER, help=f"default: {ECS_CLUSTER}")
    p.add_argument("--task-definition", default=TASK_FAMILY, help=f"default: {TASK_FAMILY}")
    p.add_argument("--task-role", metavar="ROLE", help="a task role override (a role name of the account)")
    p.add_argument("--task-arn", metavar="ARN", help="an existing task instead of a new one")
    _add_machine_args(p)
    p.set_defaults(func=cmd_as_task)

    p = sub.add_parser("as-gce", help="a GCE instance of the running stack: its environment, or CMD in it")
    p.add_argument("--labels", action="append", metavar="K=V[,K=V]", help="the instance's labels")
    p.add_argument("--name", help="instance name (default: dev-<random>)")
    p.add_argument("--project", default=gcp.PROJECT, help=f"default: {gcp.PROJECT}")
    p.add_argument("--zone", default=gcp.ZONE, help=f"default: {gcp.ZONE}")
    p.add_argument("--service-account", default=gcp.NODE_SA, help=f"default: {gcp.NODE_SA}")
    p.add_argument("--instance", metavar="NAME", help="an existing instance instead of a new one")
    _add_machine_args(p)
    p.set_defaults(func=cmd_as_gce)

    p = sub.add_parser("as-role", help="a person signed in with an IAM role (e.g. security-team)")
    p.add_argument("role")
    p.add_argument("--session", default="developer", help="session name (default: developer)")
    p.add_argument("--account", choices=accounts, help=f"AWS account (default: {ACCOUNT_ID})")
    _add_machine_args(p)
    p.set_defaults(func=cmd_as_role)

    p = sub.add_parser("as-operator", help="the operator of broker vault setup (root token, AWS admin)")
    _add_machine_args(p)
    p.set_defaults(func=cmd_as_operator)

    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:  # everything after -- is the command, never parsed here
        cmd = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if getattr(args, "cmd", None):
        parser.error(f"unexpected arguments {args.cmd}: put the command after --")
    if hasattr(args, "cmd"):
        args.cmd = cmd
    elif cmd:
        parser.error(f"{args.command} takes no command")
    try:
        return args.func(args)
    except StackError as e:
        print(f"devstack: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
