"""Handing the credentials on: files for an Agent, a token sink, or exec.

Files are written atomically and are never readable by anyone but the owner,
not even for an instant: a temporary file is created in the destination
directory with ``O_CREAT | O_EXCL`` and mode 0600, written, fsync'ed, and
renamed over the destination.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import Mapping, NoReturn, Sequence

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
