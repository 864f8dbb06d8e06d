"""Handing the credentials on: files for an Agent, a token sink, or exec.

One strategy per hand-off (``--agent-dir``, ``--out-dir``, ``--sink``, ``--exec``), each
with a ``preflight`` (run before anything is issued: a secret ID minted for a hand-off
that cannot happen is waste, and one more audit record to explain) and a ``deliver``.
``stage`` says how far the login command takes the credentials first: ``wrapped``
(the secret ID stays wrapped), ``unwrapped`` (role ID and secret ID) or ``token``
(an AppRole login's Vault token).

Files are written atomically and are never readable by anyone but the owner,
not even for an instant: a temporary file is created in the destination
directory with ``O_CREAT | O_EXCL`` and mode 0600, written, fsync'ed, and
renamed over the destination.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence

from broker.errors import HandoffError

FILE_MODE = 0o600
DIR_MODE = 0o700


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def preflight_out_dir(out_dir: str, flag: str = "--out-dir") -> str | None:
    """Why ``out_dir`` cannot receive the files (checked before anything is issued), or None."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"{flag} {out_dir} exists and is not a directory"
    base = _nearest_existing(out_dir)
    if not os.path.isdir(base):
        return f"{flag} {out_dir}: {base} is not a directory"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{flag} {out_dir}: {base} is not writable"
    return None


def preflight_sink(path: str) -> str | None:
    """Why the sink file cannot be written (checked before anything is issued), or None."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"--sink {path} is a directory"
    if not os.path.isdir(directory):
        return f"--sink {path}: directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"--sink {path}: directory {directory} is not writable"
    return None


def preflight_command(command: Sequence[str]) -> str | None:
    """Why ``command`` cannot be exec'd (checked before anything is issued), or None."""
    if not command:
        return "no command to exec after '--'"
    program = command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            return f"--exec: {program} is not an executable file"
    elif shutil.which(program) is None:
        return f"--exec: command not found in PATH: {program}"
    return None


def write_secret_file(path: str, content: str) -> None:
    """Atomically replace ``path`` with ``content``, mode 0600."""
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    if os.path.isdir(path):
        raise HandoffError(f"{path} is a directory")
    if not os.path.isdir(directory):
        raise HandoffError(f"directory {directory} does not exist")
    tmp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, FILE_MODE)
    except OSError as exc:
        raise HandoffError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have removed bits; never adds any
            data = content.encode("utf-8")
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise HandoffError(f"cannot write {path}: {exc.strerror or exc}") from None
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_approle_files(out_dir: str, role_id: str, secret_id: str) -> tuple[str, str]:
    """``OUT_DIR/role_id`` and ``OUT_DIR/secret_id`` (no trailing newline), mode 0600.

    The directory is created with mode 0700 if it does not exist.
    """
    try:
        os.makedirs(out_dir, mode=DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise HandoffError(f"cannot create directory {out_dir}: {exc.strerror}") from None
    role_path = os.path.join(out_dir, "role_id")
    secret_path = os.path.join(out_dir, "secret_id")
    write_secret_file(role_path, role_id)
    write_secret_file(secret_path, secret_id)
    return role_path, secret_path


def write_sink(path: str, token: str) -> str:
    """Write a Vault token to ``path`` like an Agent file sink (mode 0600, atomic)."""
    write_secret_file(path, token)
    return os.path.abspath(path)


def exec_with_token(
    command: Sequence[str],
    *,
    token: str,
    vault_addr: str,
    extra_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> NoReturn:
    """Replace this process with ``command``, ``VAULT_TOKEN`` and ``VAULT_ADDR`` set.

    ``os.execvpe`` keeps the PID, so signals reach the command and its exit code
    is the container's.
    """
    if not command:
        raise HandoffError("no command to exec after '--'")
    env = dict(os.environ if base_env is None else base_env)
    env.update(extra_env or {})
    env["VAULT_TOKEN"] = token
    env["VAULT_ADDR"] = vault_addr
    program = command[0]
    if os.sep not in program and shutil.which(program, path=env.get("PATH")) is None:
        raise HandoffError(f"command not found: {program}")
    try:
        os.execvpe(program, list(command), env)
    except OSError as exc:
        raise HandoffError(f"cannot exec {program}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable")  # pragma: no cover


# ---- the strategies --------------------------------------------------------------------------


@dataclass
class Material:
    """What the login command hands over. Every field but the accessors is secret."""

    role_id: str = field(repr=False)
    secret_id: str = field(repr=False)      # the wrapping token for the ``wrapped`` stage
    vault_addr: str
    token: Optional[str] = field(default=None, repr=False)
    secret_id_wrap_ttl: Optional[int] = None


Say = Callable[[str], None]


@dataclass
class AgentDir:
    """``--agent-dir DIR``: the role ID and, still wrapped, the secret ID for an Agent."""

    directory: str
    stage = "wrapped"
    name = "agent-dir"

    def preflight(self) -> Optional[str]:
        return preflight_out_dir(self.directory, "--agent-dir")

    def deliver(self, material: Material, summary: Dict[str, Any], say: Say) -> None:
        role_path, secret_path = write_approle_files(self.directory, material.role_id, material.secret_id)
        ttl = material.secret_id_wrap_ttl
        summary.update(handoff=self.name, role_id_file=os.path.abspath(role_path),
                       secret_id_file=os.path.abspath(secret_path), secret_id_wrap_ttl=ttl)
        say(f"wrapping tokens checked; wrote {role_path} and the secret ID's wrapping token to {secret_path}: "
            f"start the Agent now, it must unwrap it within {f'{ttl} s' if ttl else 'the wrap TTL'}")


@dataclass
class OutDir:
    """``--out-dir DIR``: the role ID and the secret ID, unwrapped."""

    directory: str
    stage = "unwrapped"
    name = "out-dir"

    def preflight(self) -> Optional[str]:
        return preflight_out_dir(self.directory)

    def deliver(self, material: Material, summary: Dict[str, Any], say: Say) -> None:
        role_path, secret_path = write_approle_files(self.directory, material.role_id, material.secret_id)
        summary.update(handoff=self.name, role_id_file=os.path.abspath(role_path),
                       secret_id_file=os.path.abspath(secret_path))
        say(f"wrote {role_path} and {secret_path}")


@dataclass
class Sink:
    """``--sink FILE``: a Vault token in a file, like an Agent's file sink."""

    path: str
    stage = "token"
    name = "sink"

    def preflight(self) -> Optional[str]:
        return preflight_sink(self.path)

    def deliver(self, material: Material, summary: Dict[str, Any], say: Say) -> None:
        path = write_sink(self.path, material.token or "")
        summary.update(handoff=self.name, sink=path)
        say(f"wrote the token to {path}")


@dataclass
class Exec:
    """``--exec -- CMD ARGS...``: replace this process with CMD, VAULT_TOKEN and VAULT_ADDR set."""

    command: List[str]
    extra_env: Dict[str, str] = field(default_factory=dict)
    before_exec: Callable[[Dict[str, Any]], None] = lambda summary: None
    stage = "token"
    name = "exec"

    def preflight(self) -> Optional[str]:
        return preflight_command(self.command)

    def deliver(self, material: Material, summary: Dict[str, Any], say: Say) -> None:
        summary.update(handoff=self.name, command=self.command[0])
        say(f"exec {self.command[0]}")
        self.before_exec(summary)  # the --json summary goes out before this process is replaced
        exec_with_token(self.command, token=material.token or "", vault_addr=material.vault_addr,
                        extra_env=self.extra_env)


Handoff = Any  # AgentDir | OutDir | Sink | Exec
