"""An answer larger than the client's 1 MiB cap, once the request (and its proof) was sent, is
unusable: the login stops with exit 5 and does not retry with a fresh proof (each attempt could
be one more issuance). Counted on a real server on loopback."""

from __future__ import annotations

import pytest

from broker import cli
from broker.api import BrokerClient, RetryPolicy
from broker.errors import EXIT_UNAVAILABLE, UnavailableError
from tests.scripted_http import ScriptedServer
from tests.test_client_unit import SERVER_ID, clean_env  # noqa: F401 (clean_env: the same autouse fixture)

LOGIN = "/v1/credentials/aws"
TEN_MB = b"x" * (10 << 20)


@pytest.mark.parametrize("status", [200, 503])
def test_oversized_answer_is_not_retried(status):
    with ScriptedServer() as server:
        server.on("POST", LOGIN, (status, TEN_MB))
        client = BrokerClient(server.url, sleep=lambda s: None, retry=RetryPolicy(max_attempts=6, max_wait=60))
        with pytest.raises(UnavailableError, match="unusable.*larger than 1048576 bytes"):
            client.request_credentials("web", lambda: {"iam_http_request_method": "POST"})
        assert len(server.requests_to("POST", LOGIN)) == 1


def test_login_with_an_oversized_answer_exits_5_after_one_request(tmp_path, capsys):
    with ScriptedServer() as server:
        server.on("POST", LOGIN, (200, TEN_MB))
        rc = cli.main(["login", "--broker-url", server.url, "--role", "web", "--server-id", SERVER_ID,
                       "--vault-addr", server.url, "--out-dir", str(tmp_path / "creds")])
        assert len(server.requests_to("POST", LOGIN)) == 1
    assert rc == EXIT_UNAVAILABLE
    assert "unusable" in capsys.readouterr().err
    assert not (tmp_path / "creds").exists()
