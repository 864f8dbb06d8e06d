"""Wrapping tokens of another Vault namespace, tried against a real OpenBao with a child namespace.

OpenBao (2.7) looks a wrapping token up, and unwraps it, in the namespace it was minted in,
whatever X-Vault-Namespace says: a token minted in ``child`` at ``auth/approle/role/web/role-id``
passes the creation-path check of a client that uses the root namespace. Such a token names its
namespace (a ``.<namespace ID>`` suffix); the client refuses it before anything is looked up or
unwrapped (exit 6, the incident reported), and accepts it when that namespace is the one given.
"""

from __future__ import annotations

import json

import pytest
import requests

from broker import cli
from broker.errors import EXIT_INTERCEPTION
from broker.vault_trust import token_namespace_id
from tests.test_client_unit import (  # noqa: F401 (fixtures: a real OpenBao dev server, clean_env autouse)
    FakeBroker,
    _login_args,
    assert_no_secrets,
    bao,
    clean_env,
)


@pytest.fixture
def fake_broker():
    broker = FakeBroker()
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def child(bao):
    """A child namespace of the pinned OpenBao with its own AppRole mount and a role ``web``."""
    def call(method, path, namespace=None, wrap_ttl=None, **body):
        headers = {"X-Vault-Token": "root"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        if wrap_ttl:
            headers["X-Vault-Wrap-TTL"] = wrap_ttl
        r = requests.request(method, f"{bao.addr}/v1/{path}", json=body or None, headers=headers, timeout=10)
        assert r.status_code in (200, 204), f"{method} {path}: HTTP {r.status_code}"
        return r.json() if r.content else {}

    namespace = call("POST", "sys/namespaces/child")["data"]
    call("POST", "sys/auth/approle", namespace="child", type="approle")
    call("POST", "auth/approle/role/web", namespace="child", secret_id_num_uses=1, secret_id_ttl="5m")

    def mint():
        def shape(w):
            return {k: w[k] for k in ("token", "accessor", "ttl", "creation_time", "creation_path")}

        role = call("GET", "auth/approle/role/web/role-id", namespace="child", wrap_ttl="60s")["wrap_info"]
        secret = call("POST", "auth/approle/role/web/secret-id", namespace="child", wrap_ttl="60s")["wrap_info"]
        return {"request_id": f"req-{secret['accessor'][:8]}", "role": "web", "vault_addr": bao.addr,
                "role_id_wrap": shape(role), "secret_id_wrap": shape(secret)}

    return {"id": namespace["id"], "mint": mint}


def _live(bao, token: str) -> bool:
    return requests.post(f"{bao.addr}/v1/sys/wrapping/lookup", json={"token": token}, timeout=10).status_code == 200


def test_the_fact_the_check_rests_on(bao, child):
    """A child namespace's token carries its namespace ID, a root token none; and the lookup from the
    root namespace finds the child's token at the namespace-relative path (what made it pass)."""
    answer = child["mint"]()
    token = answer["role_id_wrap"]["token"]
    assert token_namespace_id(token) == child["id"]
    assert token_namespace_id(bao.mint()["role_id_wrap"]["token"]) is None
    lookup = requests.post(f"{bao.addr}/v1/sys/wrapping/lookup", json={"token": token}, timeout=10)
    assert lookup.status_code == 200 and lookup.json()["data"]["creation_path"] == "auth/approle/role/web/role-id"


@pytest.mark.parametrize("handoff", ["--out-dir", "--agent-dir"])
def test_tokens_of_a_child_namespace_are_refused_by_a_root_namespace_client(bao, child, fake_broker, tmp_path,
                                                                            capsys, handoff):
    answer = child["mint"]()
    fake_broker.script = [(200, {}, answer),
                          (200, {}, {"request_id": "req-incident", "secret_id": "destroyed"})]  # the incident
    creds = tmp_path / "creds"
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, handoff, str(creds), "--json"))
    captured = capsys.readouterr()
    assert rc == EXIT_INTERCEPTION, captured.err
    assert f"minted in the Vault namespace with ID {child['id']!r}, not in the root namespace" in captured.err
    assert answer["role_id_wrap"]["accessor"] in captured.err
    assert not creds.exists(), "the other namespace's credentials were handed on"
    # Refused before any unwrap: both tokens are still live.
    assert _live(bao, answer["role_id_wrap"]["token"]) and _live(bao, answer["secret_id_wrap"]["token"])
    incidents = [r for r in fake_broker.requests if r["path"] == "/v1/incidents"]
    assert len(incidents) == 1 and incidents[0]["body"]["request_id"] == answer["request_id"]
    summary = json.loads(captured.out)
    assert summary["exit_code"] == EXIT_INTERCEPTION
    assert_no_secrets(captured.out + captured.err, [answer["role_id_wrap"]["token"], answer["secret_id_wrap"]["token"]])


def test_a_client_given_the_namespace_takes_its_tokens_and_refuses_the_roots(bao, child, fake_broker, tmp_path,
                                                                             capsys):
    answer = child["mint"]()
    fake_broker.script = [(200, {}, answer)]
    creds = tmp_path / "creds"
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, "--vault-namespace", "child",
                              "--out-dir", str(creds)))
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in creds.iterdir()) == ["role_id", "secret_id"]

    root_answer = bao.mint()
    fake_broker.script = [(200, {}, root_answer)]
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, "--vault-namespace", "child",
                              "--out-dir", str(tmp_path / "other")))
    err = capsys.readouterr().err
    assert rc == EXIT_INTERCEPTION
    assert "minted in the root namespace, not in the namespace 'child'" in err
    assert _live(bao, root_answer["role_id_wrap"]["token"])
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("named, pinned", [("child", None), (None, "child"), ("other", "child")])
def test_an_answer_naming_another_namespace_is_refused_like_another_address(bao, child, fake_broker, tmp_path,
                                                                            capsys, named, pinned):
    """The broker's answer names the namespace it minted in (vault_namespace): another than the client's
    is refused before anything is looked up or unwrapped (exit 6), as another Vault address is."""
    answer = {**(child["mint"]() if pinned else bao.mint()), "vault_namespace": named}
    fake_broker.script = [(200, {}, answer)]
    creds = tmp_path / "creds"
    flags = ["--vault-namespace", pinned] if pinned else []
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, *flags, "--agent-dir", str(creds), "--json"))
    captured = capsys.readouterr()
    assert rc == EXIT_INTERCEPTION, captured.err
    assert "the broker's answer names the Vault namespace" in captured.err
    assert json.loads(captured.out)["error"] == "UntrustedVaultError"
    assert not creds.exists()
    assert _live(bao, answer["role_id_wrap"]["token"]) and _live(bao, answer["secret_id_wrap"]["token"])
    assert_no_secrets(captured.out + captured.err, [answer["role_id_wrap"]["token"], answer["secret_id_wrap"]["token"]])


def test_the_agent_hand_off_names_the_namespace(bao, child, fake_broker, tmp_path, capsys):
    answer = {**child["mint"](), "vault_namespace": "child"}
    fake_broker.script = [(200, {}, answer)]
    agent = tmp_path / "agent"
    rc = cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, "--vault-namespace", "child",
                              "--agent-dir", str(agent), "--json"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (agent / "vault_namespace").read_text() == "child"
    summary = json.loads(captured.out)
    assert summary["vault_namespace"] == "child"
    assert summary["vault_namespace_file"] == str(agent / "vault_namespace")

    fake_broker.script = [(200, {}, {**bao.mint(), "vault_namespace": None})]  # root: no file left behind
    assert cli.main(_login_args(fake_broker.url, "--vault-addr", bao.addr, "--agent-dir", str(agent))) == 0
    assert not (agent / "vault_namespace").exists()
