"""``python -m devstack up|down|status [--dir .stack]``.

``up`` starts OpenBao, moto (SigV4 on), the simulated Google, seeds them and starts the broker under
``chalice local``, all detached, and writes ``DIR/endpoints.json`` (mode 0600:
it holds the root token and keys, which are never printed). ``down`` stops what
``up`` started and removes the state; ``status`` tells what runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

from .procs import StackError, cmdline, kill_group, pid_alive
from .stack import Stack

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
        return "moto_server" in text and _port(state.get("aws_endpoint_url")) in argv
    if name == "broker":
        return "chalice" in text and "local" in argv and _port(state.get("broker_url")) in argv
    if name == "google":
        return "google_sim.py" in text and _port(state.get("gcp_compute_url")) in argv
    return False


def _running(state: dict) -> dict[str, int]:
    return {name: pid for name, pid in (state.get("pids") or {}).items() if _ours(name, pid, state)}


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.dir).resolve()
    state = _load(state_dir)
    if state is not None:
        running = _running(state)
        if running:
            _say(f"The local stack already runs ({', '.join(sorted(running))}); "
                 f"`python -m devstack down --dir {args.dir}` first.")
            return cmd_status(args)
        _remove_state(state_dir, quiet=True)  # stale state of a stack that died
    _say(f"Starting the local stack (state in {state_dir}) ...")
    try:
        stack = Stack.start(state_dir, with_broker=not args.no_broker, detached=True, progress=_say)
    except StackError as e:
        _say(f"Failed: {e}")
        _say("Everything that had started was stopped again.")
        return 1
    stack.write_endpoints(state_dir / STATE_FILE)
    stack.write_broker_env(state_dir / "broker.env")
    _say(f"Up in {stack.startup_seconds:.1f}s. Endpoints, keys and tokens: {state_dir / STATE_FILE} (mode 0600).")
    _say(f"Broker environment: {state_dir / 'broker.env'} (mode 0600). Logs: {state_dir}/*.log")
    _say(f"Stop it with: python -m devstack down --dir {args.dir}")
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
    left = {n: p for n, p in running.items() if pid_alive(p)}
    if left:
        _say(f"Still running after SIGKILL: {left}; state kept in {state_dir}.")
        return 1
    _remove_state(state_dir)
    _say("The local stack is down.")
    return 0


def _remove_state(state_dir: Path, quiet: bool = False) -> None:
    for name in STATE_FILES:
        try:
            (state_dir / name).unlink()
        except FileNotFoundError:
            pass
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
        _say(f"{label}: running, pid {pids[name]}, {url} ({detail})")
    _say(f"Endpoints and secrets: {state_dir / STATE_FILE}")
    expected = {n for n, p in pids.items() if p}
    return 0 if expected and expected <= set(running) else 1


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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
