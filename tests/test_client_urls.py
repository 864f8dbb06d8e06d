"""Which URLs the client calls loopback (plain http allowed, no proxy): ``localhost`` and
literal loopback addresses only. A DNS name that merely starts with ``127.`` is not loopback,
and an ``http://`` URL naming it is refused before anything is signed or sent."""

from __future__ import annotations

import pytest

from broker import cli
from broker.errors import EXIT_USAGE, UsageError
from broker.http import check_base_url, is_loopback
from tests.scripted_http import ScriptedServer
from tests.test_client_unit import SERVER_ID, clean_env  # noqa: F401 (clean_env: the same autouse fixture)

SPOOFED = "http://127.0.0.1.attacker.test:{port}"


@pytest.mark.parametrize("url", ["http://localhost:1", "http://LOCALHOST:1", "http://127.0.0.1:1",
                                 "http://127.9.8.7:1", "http://[::1]:1"])
def test_literal_loopback_is_loopback(url):
    assert is_loopback(url)
    assert check_base_url(url, "broker URL") == url


@pytest.mark.parametrize("url", ["http://127.0.0.1.attacker.test:8200", "http://127.attacker.test",
                                 "http://localhost.attacker.test", "http://128.0.0.1", "http://[::2]",
                                 "http://127.1", "http://0x7f000001", "http://2130706433"])
def test_names_and_other_addresses_are_not_loopback(url):
    assert not is_loopback(url)
    with pytest.raises(UsageError, match="is not https"):
        check_base_url(url, "broker URL")


def test_login_refuses_a_broker_url_named_like_loopback(capsys):
    with ScriptedServer() as server:
        port = server.url.rsplit(":", 1)[1]
        rc = cli.main(["login", "--broker-url", SPOOFED.format(port=port), "--role", "web",
                       "--server-id", SERVER_ID, "--vault-addr", server.url, "--sink", "/tmp/never-written"])
        assert server.seen == []
    assert rc == EXIT_USAGE
    err = capsys.readouterr().err
    assert "127.0.0.1.attacker.test" in err and "is not https" in err


def test_login_refuses_a_pinned_vault_addr_named_like_loopback(capsys):
    with ScriptedServer() as server:
        rc = cli.main(["login", "--broker-url", server.url, "--role", "web", "--server-id", SERVER_ID,
                       "--vault-addr", SPOOFED.format(port=8200), "--sink", "/tmp/never-written"])
        assert server.seen == []  # refused before any proof was signed or sent
    assert rc == EXIT_USAGE
    err = capsys.readouterr().err
    assert "127.0.0.1.attacker.test:8200" in err and "is not https" in err
