"""Loopback is a literal address (or localhost), never a name that starts like one: a
name such as 127.0.0.1.attacker.test resolves wherever its owner likes, so plain http
to it would send proofs and tokens across the network in clear."""

import pytest

from broker.errors import UsageError
from broker.http import check_base_url, is_loopback


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.1.2.3", "http://[::1]:8200",
                                 "http://localhost:8200", "http://LOCALHOST"])
def test_literal_loopback_addresses_are_loopback(url):
    assert is_loopback(url)
    assert check_base_url(url, "broker URL") == url


@pytest.mark.parametrize("url", ["http://127.0.0.1.attacker.test:8000", "http://127.attacker.test",
                                 "http://localhost.attacker.test", "http://10.0.0.1", "http://[::2]",
                                 "http://0x7f000001", "http://2130706433"])
def test_names_and_other_addresses_are_not(url):
    assert not is_loopback(url)
    with pytest.raises(UsageError, match="is not https"):
        check_base_url(url, "broker URL")


def test_a_vault_address_named_like_loopback_is_refused_by_the_client(tmp_path):
    """The real client refuses both URLs before it signs anything (exit 2)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    base = {"--broker-url": "http://127.0.0.1:9", "--role": "web", "--server-id": "x", "--out-dir": str(tmp_path)}
    for flag, value in (("--broker-url", "http://127.0.0.1.attacker.test:9"),
                        ("--vault-addr", "http://127.0.0.1.attacker.test:8200")):
        args = [part for k, v in dict(base, **{flag: value}).items() for part in (k, v)]
        proc = subprocess.run([sys.executable, "-m", "broker", "login", *args], cwd=str(root),
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, (flag, proc.stderr)
        assert "127.0.0.1.attacker.test" in proc.stderr and "not https" in proc.stderr, proc.stderr
