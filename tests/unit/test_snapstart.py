"""chalicelib/snapstart.py with a fake `snapshot_restore_py` (the real one exists only in
Lambda's Python runtimes): what registration hands the runtime, and what the hooks reset."""

import random
import sys
import types

import pytest

from chalicelib import snapstart


@pytest.fixture
def fake_runtime(monkeypatch):
    """A `snapshot_restore_py` that records what is registered, as the runtime's does."""
    module = types.ModuleType("snapshot_restore_py")
    module.registered = []
    module.register_after_restore = lambda fn, *args, **kwargs: module.registered.append((fn, args, kwargs))
    module.register_before_snapshot = lambda fn, *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    monkeypatch.setattr(snapstart, "_registered", False)
    monkeypatch.setattr(snapstart, "_after_restore", [snapstart.reseed_random])
    return module


def restore(module):
    """What the runtime does after a restore: call what was registered."""
    for fn, args, kwargs in module.registered:
        fn(*args, **kwargs)


def test_without_the_runtime_module_nothing_is_registered(monkeypatch):
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails
    monkeypatch.setattr(snapstart, "_registered", False)
    assert snapstart.register_with_runtime() is False


def test_registered_once_however_often_asked(fake_runtime):
    assert snapstart.register_with_runtime() is True
    assert snapstart.register_with_runtime() is True
    assert len(fake_runtime.registered) == 1


def test_random_is_reseeded_after_a_restore(fake_runtime):
    snapstart.register_with_runtime()
    random.seed(1234)  # the state the snapshot holds
    snapshot = random.getstate()
    first_copy = [random.random() for _ in range(4)]
    random.setstate(snapshot)  # a second copy restored from the same snapshot...
    restore(fake_runtime)  # ...with the hook run
    second_copy = [random.random() for _ in range(4)]
    assert second_copy != first_copy


def test_hooks_run_in_order_and_one_failure_does_not_stop_the_rest(fake_runtime, caplog):
    ran = []

    def first():
        ran.append("first")

    def broken():
        raise RuntimeError("token=s.should-not-matter")

    def last():
        ran.append("last")

    for hook in (first, broken, last):
        snapstart.after_restore(hook)
    snapstart.register_with_runtime()
    restore(fake_runtime)
    assert ran == ["first", "last"]
    assert "broken failed: RuntimeError" in caplog.text
    assert "should-not-matter" not in caplog.text  # the exception's text is not logged


def test_forget_removes_a_hook(fake_runtime):
    ran = []
    hook = snapstart.after_restore(lambda: ran.append(1))
    snapstart.forget(hook)
    snapstart.register_with_runtime()
    restore(fake_runtime)
    assert ran == []
