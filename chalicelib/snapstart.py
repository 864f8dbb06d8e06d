"""Lambda SnapStart: what must not outlive a snapshot, refreshed after each restore.

With SnapStart, Lambda runs the function's init (app.py at import: the service built,
clients made, Vault logged in) once, when a version is published, snapshots the
process's memory, and starts every later execution environment from that snapshot.
Whatever init left in memory is then shared by every restored copy and may be days
old. After a restore (the runtime's `snapshot_restore_py` hooks):

- `random` is reseeded: every copy would otherwise draw the same sequence (the
  admission's conflict backoff jitter). `os.urandom`, `secrets` and `uuid.uuid4` (the
  request IDs) read the kernel's generator, which Lambda reseeds: nothing to do;
- pooled HTTP connections are dropped (botocore's pools, the broker's own pools of
  Vault and the STS forward, chalicelib/http_client.py, and the GCP method's requests
  session): their sockets were open when the snapshot was taken and are dead or,
  worse, shared;
- the Vault tokens are forgotten: they may have expired while the snapshot waited, and
  their lifetimes are counted on `time.monotonic`, which does not count that wait. The
  next request logs in again (one Vault round trip);
- the rules in force are re-read at the next request when they come from a remote
  source (same monotonic clock).

botocore's own credentials refresh on the wall clock (the SnapStart runtime hands them
out through its container credentials endpoint); the reader roles' credentials expire on
the wall clock too (chalicelib/methods/aws/readers.py).

`snapshot_restore_py` exists only in Lambda's Python runtimes (3.12 and later): outside
them `register_with_runtime` does nothing and says so. The hooks are plain functions,
tested with a fake module (tests/unit/test_snapstart.py).
"""

import logging
import random
import threading

_after_restore = []
_lock = threading.Lock()
_registered = False


def after_restore(hook):
    """Run `hook()` after every restore (in the order of registration). Returns `hook`,
    so it works as a decorator."""
    with _lock:
        _after_restore.append(hook)
    return hook


def forget(hook):
    """No longer run `hook` (a rebuilt service replaces the old one's hooks)."""
    with _lock:
        if hook in _after_restore:
            _after_restore.remove(hook)


def run_after_restore(log=None):
    """The registered hooks, in order. One failing hook doesn't stop the others: each is
    logged (by name) and the rest still run; the restored environment then serves anyway
    and the next request rebuilds what the failed hook left (a login, a connection)."""
    with _lock:
        hooks = list(_after_restore)
    failed = []
    for hook in hooks:
        try:
            hook()
        except Exception as e:  # a restore hook must never kill the restore
            failed.append(getattr(hook, "__name__", repr(hook)))
            if log is not None:
                log.warning("snapstart: after-restore hook %s failed: %s", failed[-1], type(e).__name__)
    return failed


def reseed_random():
    """Every restored copy starts from the same `random` state: give each its own."""
    random.seed()


after_restore(reseed_random)


def register_with_runtime(log=None):
    """Hand `run_after_restore` to the Lambda runtime's `snapshot_restore_py`, once.
    True when registered; False outside a SnapStart-capable runtime (the module is absent)."""
    global _registered
    with _lock:
        if _registered:
            return True
        try:
            from snapshot_restore_py import register_after_restore
        except ImportError:
            return False
        register_after_restore(run_after_restore, log or logging.getLogger(__name__))
        _registered = True
        return True
