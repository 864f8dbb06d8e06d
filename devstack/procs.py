"""Child processes of the local stack: free ports, start, wait, stop.

Every server runs in its own session and process group (``start_new_session``),
so stopping it kills the whole group and a Ctrl-C in the terminal does not race
with our own teardown. In-test processes additionally get ``PR_SET_PDEATHSIG``
(Linux), so they die with the Python process that started them even when it is
killed without running any cleanup; detached processes (``devstack up``) don't.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A part of the local stack could not be started or seeded."""


def find_executable(name: str) -> str:
    """``name`` next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"cannot find the {name!r} executable next to {sys.executable} or on PATH")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A loopback port such that ``port .. port+span-1`` are all free right now."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span - 1 < 65536 and all(_port_free(port + i) for i in range(1, span)):
            return port
    raise StackError(f"no {span} consecutive free loopback ports found")


def bypass_proxy_for_loopback(env: dict | None = None) -> None:
    """Make sure HTTP clients never send loopback traffic through an HTTP(S)_PROXY
    of the developer's environment (``os.environ`` when ``env`` is None)."""
    env = os.environ if env is None else env
    if not any(env.get(k) for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                     "ALL_PROXY", "all_proxy")):
        return
    for key in ("NO_PROXY", "no_proxy"):
        parts = [p for p in env.get(key, "").split(",") if p.strip()]
        for host in ("127.0.0.1", "localhost"):
            if host not in parts:
                parts.append(host)
        env[key] = ",".join(parts)


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # not Linux: atexit and the fixtures still clean up
        pass


class Proc:
    """One server process (its own process group) with its log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, argv: Sequence[str]):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.argv = list(argv)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def terminate(self) -> None:
        """SIGTERM the group without waiting (see :func:`stop_all`)."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            kill_group(self.popen.pid, timeout=timeout, wait=self.popen.wait)
        else:
            # the leader is gone; make sure nothing else of its group is left
            _signal_group(self.popen.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    detached: bool = False,
) -> Proc:
    """Start ``argv`` in a new session, stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env if env is not None else os.environ)
    bypass_proxy_for_loopback(env)
    log = open(log_path, "ab")
    os.chmod(log_path, 0o600)  # the OpenBao log holds the unseal key
    preexec: Callable[[], None] | None = None
    if not detached and threading.current_thread() is threading.main_thread():
        # PDEATHSIG fires when the *thread* that forked exits: only use it from
        # the main thread, which lives as long as the process.
        preexec = _pdeathsig
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
        )
    finally:
        log.close()
    return Proc(name, popen, log_path, argv)


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists"; treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def kill_group(pgid: int, timeout: float = 5.0, wait: Callable[..., object] | None = None) -> None:
    """SIGTERM the process group ``pgid``, SIGKILL it after ``timeout`` s."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wait is not None:
            try:
                wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                continue
        elif not pid_alive(pgid):
            break
        time.sleep(0.05)
    # the leader is gone (or stuck): kill whatever is left of the group
    _signal_group(pgid, signal.SIGKILL)


def stop_all(procs: Sequence[Proc | None], timeout: float = 5.0) -> None:
    """Stop several processes at once: SIGTERM all, then wait/SIGKILL each."""
    live = [p for p in procs if p is not None]
    for p in live:
        p.terminate()
    for p in live:
        p.stop(timeout=timeout)


def cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="replace")
    except OSError as e:
        if e.errno == errno.ENOENT:
            return "(no log written)"
        return f"(cannot read log: {e})"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


def lost_port_race(proc: Proc | None) -> bool:
    """Did ``proc`` exit because its port was taken after :func:`free_port` chose it?"""
    return (proc is not None and not proc.alive()
            and "address already in use" in proc.log_tail(60).lower())


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    proc: Proc | None = None,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail early (with the log) when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            if check():
                return
        except Exception as e:  # connection refused etc. while starting
            last_exc = e
        if proc is not None and not proc.alive():
            raise StackError(
                f"{proc.name} exited with status {proc.popen.returncode} before {what}; "
                f"its log {proc.log_path} ends with:\n{proc.log_tail()}"
            )
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            log = f"; its log {proc.log_path} ends with:\n{proc.log_tail()}" if proc else ""
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{log}")
        time.sleep(interval)


class LoopbackServer:
    """A stack server process on a loopback port: its URL, pid, stop, and a wait for
    readiness that moves to another free port when a concurrent start took this one."""

    log_name = "server.log"

    def __init__(self, workdir, port=None, detached=False):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self._auto_port = port is None
        self.detached = detached
        self.log_path = self.workdir / self.log_name
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        raise NotImplementedError

    def _wait_until_ready(self, probe, what, timeout):
        for attempt in range(3):
            try:
                wait_until(probe, timeout=timeout, proc=self.proc, what=what)
                return self
            except StackError:
                if attempt == 2 or not (self._auto_port and lost_port_race(self.proc)):
                    raise
                self.port = free_port()
                self.start()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
