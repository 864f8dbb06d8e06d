"""Where the client may write secrets: never in a directory another user controls.

Run as root here, "another user" is a spare uid (12345) that owns a directory or a symlink
(os.chown / os.lchown): what the kernel sees is the same as if that user had made them. Each
refusal is checked for real with the client's own login command: exit 2 before the broker is
asked, nothing written, and a message naming the directory and what is wrong with it.
"""

from __future__ import annotations

import os
import stat

import pytest

from broker import cli
from broker.errors import EXIT_USAGE, HandoffError
from broker.handoffs import write_approle_files, write_secret_file
from tests.test_client_unit import (  # noqa: F401 (fixtures: the same OpenBao and fake broker, clean_env autouse)
    FakeBroker,
    _login_args,
    bao,
    clean_env,
)

OTHER_UID = 12345

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another uid")


@pytest.fixture
def fake_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


def _files(root) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_out_dir_that_everyone_may_write_is_refused(fake_broker, tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # another user could swap secret_id for their own AppRole's
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(shared)))
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    assert f"{shared} is writable by group and others (mode 0777) without the sticky bit" in err
    assert fake_broker.requests == [], "the broker was asked (a proof spent, maybe an issuance)"
    assert _files(tmp_path) == []


def test_out_dir_below_a_group_writable_parent_is_refused(fake_broker, tmp_path, capsys):
    parent = tmp_path / "team"
    parent.mkdir()
    os.chmod(parent, 0o770)  # the group may rename creds/ away and put its own in its place
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(parent / "creds")))
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert f"{parent} is writable by group (mode 0770) without the sticky bit" in err
    assert not (parent / "creds").exists() and fake_broker.requests == []


def test_out_dir_below_a_directory_owned_by_another_user_is_refused(fake_broker, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "creds").mkdir(mode=0o700)  # even a directory of ours inside theirs: they may replace it
    os.chown(theirs, OTHER_UID, OTHER_UID)
    rc = cli.main(_login_args(fake_broker.url, "--agent-dir", str(theirs / "creds")))
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert f"{theirs} is owned by uid {OTHER_UID}, not by this user (uid 0 (root)) or root" in err
    assert _files(tmp_path) == [] and fake_broker.requests == []


def test_sink_through_a_symlinked_directory_planted_by_another_user_is_refused(fake_broker, tmp_path, capsys):
    ours = tmp_path / "ours"           # a safe directory the other user points their link at
    ours.mkdir(mode=0o700)
    sticky = tmp_path / "sticky"       # like /tmp: anyone may create entries, only their own
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "link"
    link.symlink_to(ours)
    os.lchown(link, OTHER_UID, OTHER_UID)
    rc = cli.main(_login_args(fake_broker.url, "--sink", str(link / "token")))
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert f"{link} is a symlink owned by uid {OTHER_UID}" in err
    assert _files(tmp_path) == [] and fake_broker.requests == []


def test_sink_through_our_symlink_to_another_users_directory_is_refused(fake_broker, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    link = tmp_path / "link"
    link.symlink_to(theirs)  # the link is ours; where it leads is not
    rc = cli.main(_login_args(fake_broker.url, "--sink", str(link / "token")))
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert f"{theirs} is owned by uid {OTHER_UID}" in err
    assert _files(tmp_path) == [] and fake_broker.requests == []


def test_a_sticky_world_writable_parent_and_a_root_symlink_are_fine(bao, fake_broker, tmp_path, capsys):
    """/tmp is 1777 with the sticky bit, /var/run a root-owned symlink: both must keep working."""
    sticky = tmp_path / "tmp-like"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "real").mkdir(mode=0o700)
    (tmp_path / "run-like").symlink_to(sticky / "real")
    fake_broker.script = [(200, {}, bao.mint())]
    rc = cli.main(_login_args(fake_broker.url, "--out-dir", str(tmp_path / "run-like" / "creds")))
    assert rc == 0, capsys.readouterr().err
    creds = sticky / "real" / "creds"
    assert sorted(p.name for p in creds.iterdir()) == ["role_id", "secret_id"]
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700


def test_files_are_not_written_if_the_directory_turns_unsafe_after_the_preflight(tmp_path):
    """The write itself checks again, on the descriptors it writes through."""
    target = tmp_path / "creds"
    target.mkdir(mode=0o700)
    os.chmod(target, 0o777)
    with pytest.raises(HandoffError, match=f"refusing to write in {target}: {target} is writable by group and others"):
        write_approle_files(str(target), "role-id-value", "secret-id-value")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(HandoffError, match=f"{theirs} is owned by uid {OTHER_UID}"):
        write_secret_file(str(theirs / "token"), "token-value")
    assert _files(tmp_path) == []


def test_a_symlinked_sink_file_is_replaced_not_followed(tmp_path):
    """The existing protection: the sink's own name, a symlink, is replaced by the file."""
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    sink = tmp_path / "token"
    sink.symlink_to(victim)
    write_secret_file(str(sink), "token-value")
    assert victim.read_text() == "untouched"
    assert not sink.is_symlink() and sink.read_text() == "token-value"
    assert stat.S_IMODE(sink.stat().st_mode) == 0o600
