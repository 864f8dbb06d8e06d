"""The client's GCP path: identity tokens from the simulated Google's metadata servers
(the local stack), a tiny local HTTP server playing the broker, real wrapping tokens
from the stack's OpenBao, and the cloud auto-detection both ways.

The identity token is a bearer credential for the broker: every captured output is
checked not to contain it (nor its signature).
"""

from __future__ import annotations

import json
import os
import socket
import time

import google.auth.jwt
import pytest
import requests

from broker import cli
from broker.api import BrokerClient, RetryPolicy
from broker.errors import EXIT_NO_IDENTITY, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from broker.clouds.gcp import MetadataIdentity, probe_gce
from broker.clouds import GCP_PATH, build_proof_source
from tests.ports import closed_port
from tests.test_client_unit import FakeBroker, error_body

NO_PROXY = {"http": None, "https": None}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No AWS credentials anywhere (no env keys, no files, no IMDS), no stray settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BROKER_", "VAULT_", "BAO_", "GOOGLE_", "GCE_METADATA_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


@pytest.fixture
def metadata_url(stack):
    """The seeded GCE instance's metadata server (web-gce-1 in demo-project)."""
    return stack.gcp_metadata_url_for("web-gce-1")


def issued(stack, role: str = "web") -> tuple[int, dict, dict]:
    """A broker's 200 answer with real wrapping tokens from the stack's OpenBao."""
    vault = stack.vault()
    role_id = vault.read(f"auth/approle/role/{role}/role-id", wrap_ttl="60s")["wrap_info"]
    secret_id = vault.write_data(f"auth/approle/role/{role}/secret-id", wrap_ttl="60s")["wrap_info"]
    pick = lambda w: {k: w[k] for k in ("token", "accessor", "ttl", "creation_time", "creation_path")}
    return 200, {}, {"request_id": "req-gcp-ok", "role": role, "vault_addr": stack.vault_addr,
                     "role_id_wrap": pick(role_id), "secret_id_wrap": pick(secret_id)}


def certs(stack) -> dict:
    return requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY).json()


def sent_tokens(fake: FakeBroker) -> list[str]:
    return [r["body"]["jwt"] for r in fake.requests if "jwt" in r["body"]]


def assert_clean(text: str, tokens) -> None:
    for token in tokens:
        assert token not in text, "the identity token was printed"
        assert token.rsplit(".", 1)[1] not in text, "the identity token's signature was printed"


def login(broker_url: str, *extra: str) -> list[str]:
    return ["login", "--broker-url", broker_url, "--role", "web", "--allow-insecure-vault", *extra]


# ---- the GCP path end to end, with a broker stand-in ----------------------------------------


def test_gcp_login_posts_a_metadata_token_and_hands_off(stack, fake_broker, metadata_url, tmp_path, capsys):
    fake_broker.script = [lambda body: issued(stack)]
    out_dir = tmp_path / "agent"
    rc = cli.main(login(fake_broker.url, "--cloud", "gcp", "--metadata-url", metadata_url,
                        "--out-dir", str(out_dir), "--json"))
    captured = capsys.readouterr()
    assert rc == EXIT_OK, captured.err
    (request,) = fake_broker.requests
    assert request["path"] == "/v1/credentials/gcp"
    assert set(request["body"]) == {"role", "jwt"} and request["body"]["role"] == "web"
    token = request["body"]["jwt"]
    claims = google.auth.jwt.decode(token, certs=certs(stack), audience=fake_broker.url)  # default: the broker URL
    assert claims["google"]["compute_engine"]["instance_name"] == "web-gce-1"
    assert claims["email"] == "demo-node@demo-project.iam.gserviceaccount.com"
    summary = json.loads(captured.out)
    assert (summary["status"], summary["cloud"], summary["handoff"]) == ("ok", "gcp", "out-dir")
    assert (out_dir / "role_id").read_text() == stack.vault_seed.role_ids["web"]
    assert_clean(captured.out + captured.err, [token])
    assert (out_dir / "role_id").read_text() not in captured.out + captured.err


def test_every_attempt_fetches_a_fresh_token(stack, fake_broker, metadata_url):
    fake_broker.script = [
        (503, {"Retry-After": "0"}, error_body("unavailable", "compute API down", "req-1")),
        (401, {}, error_body("proof_replayed", "this token was used before", "req-2")),
        lambda body: issued(stack),
    ]
    logs: list[str] = []
    proof = build_proof_source(cloud="gcp", broker_url=fake_broker.url, server_id=None, sts_url="",
                               sts_region=None, audience=None, metadata_url=metadata_url, timeout=5,
                               add_secret=lambda s: None, log=logs.append)
    client = BrokerClient(fake_broker.url, retry=RetryPolicy(max_attempts=3), sleep=lambda s: None,
                          rng=lambda: 0.0, log=logs.append)
    result = client.request_credentials("web", proof.make, path=proof.path, replay_hint=proof.replay_hint)
    assert result.attempts == 3 and result.request_id == "req-gcp-ok"
    tokens = sent_tokens(fake_broker)
    assert [r["path"] for r in fake_broker.requests] == [GCP_PATH] * 3
    assert len(set(tokens)) == 3
    iats = [google.auth.jwt.decode(t, certs=certs(stack), audience=fake_broker.url)["iat"] for t in tokens]
    assert iats == sorted(set(iats))  # one per second at most: never the same token twice
    assert any("same identity token" in line for line in logs)
    assert_clean("\n".join(logs), tokens)


def test_refused_exit_4_and_the_token_is_never_printed(stack, fake_broker, metadata_url, tmp_path, capsys):
    # a broker (or something in between) that echoes the token back must not get it printed
    fake_broker.script = [lambda body: (403, {}, error_body(
        "not_authorized", f"no rule grants role web to {body['jwt']}", "req-403"))]
    rc = cli.main(login(fake_broker.url, "--cloud", "gcp", "--metadata-url", metadata_url,
                        "--sink", str(tmp_path / "token"), "--json", "--debug"))
    captured = capsys.readouterr()
    assert rc == EXIT_REFUSED
    assert "403 not_authorized" in captured.err and "[redacted]" in captured.err
    assert json.loads(captured.out)["code"] == "not_authorized"
    assert not (tmp_path / "token").exists()
    assert_clean(captured.out + captured.err, sent_tokens(fake_broker))


def test_audience_from_flag_or_environment(stack, fake_broker, metadata_url, tmp_path, monkeypatch, capsys):
    fake_broker.default = (403, {}, error_body("not_authorized", "no", "r"))
    cli.main(login(fake_broker.url, "--cloud", "gcp", "--metadata-url", metadata_url,
                   "--audience", "https://broker.example.com", "--sink", str(tmp_path / "t")))
    monkeypatch.setenv("BROKER_GCP_AUDIENCE", "https://from-env.example")
    monkeypatch.setenv("BROKER_GCP_METADATA_URL", metadata_url)
    monkeypatch.setenv("BROKER_CLOUD", "gcp")
    cli.main(login(fake_broker.url, "--sink", str(tmp_path / "t")))
    auds = [google.auth.jwt.decode(t, certs=certs(stack), verify=False)["aud"] for t in sent_tokens(fake_broker)]
    assert auds == ["https://broker.example.com", "https://from-env.example"]
    assert_clean(capsys.readouterr().err, sent_tokens(fake_broker))


def test_no_identity_token_is_exit_3(stack, fake_broker, tmp_path, capsys):
    gone = stack.gcp_metadata_url_for("no-such-instance")
    closed = f"http://127.0.0.1:{_closed_port()}"
    for url, expected in ((gone, "HTTP 404"), (closed, "did not answer")):
        rc = cli.main(login(fake_broker.url, "--cloud", "gcp", "--metadata-url", url, "--sink", str(tmp_path / "t")))
        assert rc == EXIT_NO_IDENTITY
        assert expected in capsys.readouterr().err
    assert fake_broker.requests == []  # nothing asked for without a proof


def test_metadata_outage_is_retried_then_exit_3(stack, metadata_url):
    sleeps: list[float] = []
    identity = MetadataIdentity("aud", metadata_url=metadata_url, sleep=sleeps.append)
    stack.gcp_outage("metadata", down=True)
    try:
        with pytest.raises(Exception) as err:
            identity.fetch()
    finally:
        stack.gcp_outage("metadata", down=False)
    assert err.value.exit_code == EXIT_NO_IDENTITY and "HTTP 503" in str(err.value)
    assert sleeps == [0.5, 1.0]
    assert identity.fetch().count(".") == 2  # back


def test_metadata_server_is_never_reached_through_a_proxy(stack, metadata_url, monkeypatch):
    # the real metadata server refuses anything with X-Forwarded-For: never use HTTP_PROXY for it
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("NO_PROXY", "")
    assert MetadataIdentity("aud", metadata_url=metadata_url).fetch().count(".") == 2


# ---- cloud auto-detection ---------------------------------------------------------------


def test_auto_detects_gce_without_aws_credentials(stack, fake_broker, metadata_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BROKER_GCP_METADATA_URL", metadata_url)
    fake_broker.default = (403, {}, error_body("not_authorized", "no", "r"))
    rc = cli.main(login(fake_broker.url, "--sink", str(tmp_path / "t")))  # no --cloud, no --server-id
    assert rc == EXIT_REFUSED
    assert [r["path"] for r in fake_broker.requests] == [GCP_PATH]
    err = capsys.readouterr().err
    assert "cloud: GCP" in err
    assert_clean(err, sent_tokens(fake_broker))


def test_auto_prefers_aws_credentials(stack, fake_broker, metadata_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BROKER_GCP_METADATA_URL", metadata_url)  # a GCE metadata server answers too
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    fake_broker.default = (403, {}, error_body("not_authorized", "no", "r"))
    before = stack.gcp_request_counts()["metadata_other"]
    rc = cli.main(login(fake_broker.url, "--server-id", "broker.test", "--sink", str(tmp_path / "t")))
    assert rc == EXIT_REFUSED
    assert [r["path"] for r in fake_broker.requests] == ["/v1/credentials/aws"]
    assert "cloud: AWS" in capsys.readouterr().err
    assert stack.gcp_request_counts()["metadata_other"] == before  # GCE not even probed
    # AWS detected but no server ID: a usage error, nothing sent
    assert cli.main(login(fake_broker.url, "--sink", str(tmp_path / "t"))) == EXIT_USAGE
    assert len(fake_broker.requests) == 1


def test_auto_with_neither_cloud_is_exit_3_quickly(fake_broker, monkeypatch, tmp_path, capsys):
    with socket.socket() as silent:  # accepts connections, never answers: the probe must not hang
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("BROKER_GCP_METADATA_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        rc = cli.main(login(fake_broker.url, "--server-id", "x", "--sink", str(tmp_path / "t")))
        elapsed = time.monotonic() - start
    assert rc == EXIT_NO_IDENTITY
    err = capsys.readouterr().err
    assert "no cloud identity found" in err and "--cloud" in err
    assert elapsed < 3
    assert fake_broker.requests == []


def test_probe_wants_metadata_flavor(stack, fake_broker, metadata_url):
    assert probe_gce(metadata_url)
    assert not probe_gce(fake_broker.url)                       # answers, but is not a metadata server
    assert not probe_gce(stack.google.url + "/nothing-here")    # 404
    assert not probe_gce(f"http://127.0.0.1:{_closed_port()}")


@pytest.mark.parametrize("extra", [
    ["--cloud", "aws"],                                        # AWS proof needs --server-id
    ["--cloud", "gcp", "--metadata-url", "ftp://metadata"],
    ["--cloud", "gcp", "--metadata-url", "http://user:pw@metadata"],
    ["--cloud", "gcp", "--audience", "a\nb"],
    ["--cloud", "azure"],
])
def test_usage_errors(fake_broker, tmp_path, extra):
    assert cli.main(login(fake_broker.url, *extra, "--sink", str(tmp_path / "t"))) == EXIT_USAGE
    assert fake_broker.requests == []


def test_bad_cloud_from_environment_is_a_usage_error(fake_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_CLOUD", "azure")
    assert cli.main(login(fake_broker.url, "--sink", str(tmp_path / "t"))) == EXIT_USAGE


def _closed_port() -> int:
    return closed_port()


def test_gcp_path_needs_no_botocore(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, broker.cli\n"
        f"rc = broker.cli.main(['login', '--cloud', 'gcp', '--broker-url', 'http://127.0.0.1:9', '--role', 'web',\n"
        f"                      '--metadata-url', 'http://127.0.0.1:{_closed_port()}', '--sink', {str(tmp_path / 't')!r}])\n"
        "assert rc == 3, rc\n"
        "assert not any(m == 'botocore' or m.startswith(('botocore.', 'google.')) for m in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
