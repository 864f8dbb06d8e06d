"""`make demo` beside a running `make stack-up`: the demo refuses (it would start a second
stack in the same .stack/ and rewrite the running one's files), and every warning a
command of the demo prints fails the demo."""

import json
import subprocess
import sys
import time

import pytest

from devstack import demo


@pytest.fixture
def fake_moto(tmp_path):
    """A live process whose command line is what `devstack up` records for moto."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "devstack.moto_isolated", "45999"])
    time.sleep(0.2)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_demo_refuses_while_a_stack_runs_in_its_directory(tmp_path, monkeypatch, capsys, fake_moto):
    (tmp_path / "endpoints.json").write_text(json.dumps(
        {"aws_endpoint_url": "http://127.0.0.1:45999", "pids": {"moto": fake_moto}}))
    monkeypatch.setattr(demo, "STATE_DIR", tmp_path)
    monkeypatch.setattr(demo.Stack, "start", lambda *a, **k: pytest.fail("a second stack was started"))
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "already runs" in err and "make stack-down" in err
    assert json.loads((tmp_path / "endpoints.json").read_text())["pids"] == {"moto": fake_moto}


def test_a_warning_a_command_prints_is_kept_as_a_failure(monkeypatch, capsys):
    monkeypatch.setattr(demo, "WARNINGS", [])
    demo.relay("broker: ok: fine\nbroker: warning: could not register the token with the broker: HTTP 400")
    assert demo.WARNINGS == ["broker: warning: could not register the token with the broker: HTTP 400"]
    assert "could not register" in capsys.readouterr().out
