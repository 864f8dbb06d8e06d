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

Files are written only where no other user can replace them: the destination directory and
every parent up to ``/`` must be owned by the effective user or root and not writable by group
or others unless sticky (``/tmp`` is fine as a parent), and a symlink on the way must be owned
by the effective user or root. The files are created relative to a descriptor of the
directory, opened one component at a time with ``O_DIRECTORY | O_NOFOLLOW`` and each
component checked on that descriptor, so nothing swapped in after the checks redirects them.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence

from broker.errors import HandoffError

FILE_MODE = 0o600
DIR_MODE = 0o700


class UnsafeDirectory(Exception):
    """A destination directory other users control; the message says which and why."""


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _why_unsafe(st: os.stat_result, shown: str) -> Optional[str]:
    """Why a directory with these ``st`` bits lets someone else replace what is written in it, or None.

    It must be owned by this (effective) user or root, and not writable by its group or others
    unless it has the sticky bit (like /tmp: then nobody else may rename or delete our files)."""
    euid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown} is not a directory"
    if st.st_uid not in (euid, 0):
        return (f"{shown} is owned by {_owner_name(st.st_uid)}, not by this user ({_owner_name(euid)}) or root: "
                "its owner could replace the files written below it")
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit]
    if writable and not st.st_mode & stat.S_ISVTX:
        return (f"{shown} is writable by {' and '.join(writable)} (mode {stat.S_IMODE(st.st_mode):04o}) without "
                "the sticky bit: another user could replace the files written below it")
    return None


def _resolve(path: str) -> str:
    """``path`` with every symlink resolved (``..`` taken after a symlink, as the kernel does), checking on the
    way that each directory walked through is safe (:func:`_why_unsafe`) and that each symlink met is owned by
    this user or root (anyone else's symlink chooses where the secret goes). Components that do not exist
    yet are kept as they are. Raises UnsafeDirectory."""
    euid = os.geteuid()
    todo = [p for p in os.path.join(os.getcwd(), path).split("/") if p]
    resolved, hops = "/", 0
    why = _why_unsafe(os.lstat("/"), "/")
    if why:
        raise UnsafeDirectory(why)
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return os.path.join(candidate, *todo)
        except OSError as exc:
            raise UnsafeDirectory(f"cannot inspect {candidate}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise UnsafeDirectory(f"too many levels of symbolic links at {candidate}")
            if st.st_uid not in (euid, 0):
                raise UnsafeDirectory(f"{candidate} is a symlink owned by {_owner_name(st.st_uid)}, not by this user "
                                      f"({_owner_name(euid)}) or root: its owner chooses where the files would go")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = "/"
            todo = [p for p in target.split("/") if p] + todo
            continue
        if todo:  # a directory walked through (the last component is the caller's business)
            why = _why_unsafe(st, candidate)
            if why:
                raise UnsafeDirectory(why)
        resolved = candidate
    return resolved


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_safe_dir(directory: str, *, create: bool = False) -> int:
    """A file descriptor of ``directory`` (symlinks resolved by :func:`_resolve`), opened one component at a
    time from ``/`` with ``O_DIRECTORY|O_NOFOLLOW``, each component checked on its descriptor
    (:func:`_why_unsafe`): nothing swapped in after the checks can redirect the files written relative to it.
    With ``create``, missing components are created with mode 0700. Raises UnsafeDirectory."""
    real = _resolve(directory)
    fd = os.open("/", _DIR_FLAGS)
    shown = "/"
    try:
        why = _why_unsafe(os.fstat(fd), shown)
        if why:
            raise UnsafeDirectory(why)
        for name in [p for p in real.split("/") if p]:
            shown = os.path.join(shown, name)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise UnsafeDirectory(f"directory {shown} does not exist") from None
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise UnsafeDirectory(f"cannot create directory {shown}: {exc.strerror}") from None
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeDirectory(f"{shown} became a symlink while it was checked") from None
                if exc.errno == errno.ENOTDIR:
                    raise UnsafeDirectory(f"{shown} is not a directory") from None
                raise UnsafeDirectory(f"cannot open directory {shown}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            why = _why_unsafe(os.fstat(fd), shown)
            if why:
                raise UnsafeDirectory(why)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_safe_dir(directory: str) -> Optional[str]:
    """Why files must not be written in ``directory`` or in what would be created below it, or None.
    Checks the directory's nearest existing ancestor (and its parents), creating nothing."""
    try:
        real = _resolve(directory)
        base = real
        while not os.path.lexists(base):
            base = os.path.dirname(base)
        fd = open_safe_dir(base)
    except UnsafeDirectory as exc:
        return str(exc)
    try:
        if not os.access(base, os.W_OK | os.X_OK):
            return f"{base} is not writable"
    finally:
        os.close(fd)
    return None


def preflight_out_dir(out_dir: str, flag: str = "--out-dir") -> str | None:
    """Why ``out_dir`` cannot receive the files (checked before anything is issued), or None."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"{flag} {out_dir} exists and is not a directory"
    why = check_safe_dir(out_dir)
    return f"{flag} {out_dir}: {why}" if why else None


def preflight_sink(path: str) -> str | None:
    """Why the sink file cannot be written (checked before anything is issued), or None."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"--sink {path} is a directory"
    if not os.path.isdir(directory):
        return f"--sink {path}: directory {directory} does not exist"
    why = check_safe_dir(directory)
    return f"--sink {path}: {why}" if why else None


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


def write_secret_file(path: str, content: str, *, dir_fd: Optional[int] = None) -> None:
    """Atomically replace ``path`` with ``content``, mode 0600. The file is created relative to a
    descriptor of its directory (``dir_fd``, else one opened by :func:`open_safe_dir`), never through a
    path another user could redirect; ``path``'s last component is replaced, never followed."""
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    if dir_fd is None:
        try:
            fd = open_safe_dir(directory)
        except UnsafeDirectory as exc:
            raise HandoffError(f"refusing to write {path}: {exc}") from None
        try:
            return write_secret_file(path, content, dir_fd=fd)
        finally:
            os.close(fd)
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise HandoffError(f"{path} is a directory")
    except FileNotFoundError:
        pass
    tmp = f".{name}.tmp-{secrets.token_hex(6)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, FILE_MODE, dir_fd=dir_fd)
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
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise HandoffError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


def write_approle_files(out_dir: str, role_id: str, secret_id: str) -> tuple[str, str]:
    """``OUT_DIR/role_id`` and ``OUT_DIR/secret_id`` (no trailing newline), mode 0600.

    The directory (and any missing parent) is created with mode 0700 if it does not exist; it and
    every parent must be safe (:func:`open_safe_dir`).
    """
    try:
        dir_fd = open_safe_dir(out_dir, create=True)
    except UnsafeDirectory as exc:
        raise HandoffError(f"refusing to write in {out_dir}: {exc}") from None
    try:
        role_path = os.path.join(out_dir, "role_id")
        secret_path = os.path.join(out_dir, "secret_id")
        write_secret_file(role_path, role_id, dir_fd=dir_fd)
        write_secret_file(secret_path, secret_id, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return role_path, secret_path


def write_namespace_file(out_dir: str, namespace: Optional[str]) -> Optional[str]:
    """``OUT_DIR/vault_namespace`` holding the namespace path (no newline), mode 0600 like its
    neighbours; with no namespace, no such file (one left by an earlier login is removed)."""
    path = os.path.join(out_dir, "vault_namespace")
    if not namespace:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return None
    write_secret_file(path, namespace)
    return path


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
    vault_namespace: Optional[str] = None  # None: the root namespace


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
        # The Agent must log in (and unwrap) in the namespace the broker minted in: its auto_auth
        # `namespace`. Named in the summary, and in DIR/vault_namespace beside the role ID (not a
        # secret; written only for a namespace, and removed when there is none).
        namespace_path = write_namespace_file(self.directory, material.vault_namespace)
        ttl = material.secret_id_wrap_ttl
        summary.update(handoff=self.name, role_id_file=os.path.abspath(role_path),
                       secret_id_file=os.path.abspath(secret_path), secret_id_wrap_ttl=ttl,
                       vault_namespace_file=os.path.abspath(namespace_path) if namespace_path else None)
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
