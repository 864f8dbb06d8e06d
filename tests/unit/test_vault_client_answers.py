"""The minter's and the revoker's Vault calls (hvac on the session of chalicelib/vault_client.py)
against a real HTTP server that misbehaves on cue (tests/scripted_http.py). Each Vault answer
maps to the error it mapped to before (hvac's status -> exception table,
hvac.exceptions.VaultError.from_status, names the status in the audit detail); answers are
bounded, redirects are not followed, the namespace is sent. The real OpenBao paths are in
tests/service.

No token or secret ID ever appears in an error, its detail or the test output.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from chalicelib.errors import Unavailable
from chalicelib.minter import VaultMinter
from chalicelib.revoker import VaultRevoker
from tests.scripted_http import Fetches, ScriptedServer, closed_port_url

BROKER_TOKEN = "hvs.BrokerTokenOfTheScriptedVault0123456789"
NEW_TOKEN = "hvs.SecondBrokerTokenOfTheScriptedVault98765"
SECRET_ID = "5ec7e71d-0000-4c1d-9f5e-scriptedsecret"
ROTATED_SECRET_ID = "5ec7e71d-1111-4c1d-9f5e-rotatedsecret0"
ROLE_WRAP = "hvs.RoleIdWrappingTokenScripted0123456789"
SECRET_WRAP = "hvs.SecretIdWrappingTokenScripted012345678"
SECRETS = (BROKER_TOKEN, NEW_TOKEN, SECRET_ID, ROTATED_SECRET_ID, ROLE_WRAP, SECRET_WRAP)

LOGIN = "/v1/auth/approle/login"
ROLE_ID = "/v1/auth/approle/role/web/role-id"
SECRET = "/v1/auth/approle/role/web/secret-id"
UNWRAP = "/v1/sys/wrapping/unwrap"
DESTROY = "/v1/auth/approle/role/web/secret-id-accessor/destroy"


def login_ok(token=BROKER_TOKEN, lease=3600):
    return 200, {"auth": {"client_token": token, "lease_duration": lease, "accessor": "acc-broker"}}


def wrapped(token, path, accessor="acc-wrap", wrapped_accessor=None):
    info = {"token": token, "accessor": accessor, "ttl": 60, "creation_time": "2026-11-27T19:00:00Z",
            "creation_path": path}
    if wrapped_accessor:
        info["wrapped_accessor"] = wrapped_accessor
    return 200, {"wrap_info": info}


def vault_errors(*errors):
    return {"errors": list(errors)}


@pytest.fixture
def vault():
    with ScriptedServer() as server:
        server.on("POST", LOGIN, login_ok())
        server.on("GET", ROLE_ID, wrapped(ROLE_WRAP, "auth/approle/role/web/role-id", "acc-role"))
        server.on("POST", SECRET, wrapped(SECRET_WRAP, "auth/approle/role/web/secret-id", "acc-secret",
                                          wrapped_accessor="acc-secret-id"))
        server.on("POST", UNWRAP, (200, {"data": {}}))
        server.on("POST", DESTROY, (204, b""))
        yield server




def minter_for(url, fetch=None, timeout=2.0, namespace=None):
    settings = SimpleNamespace(vault_addr=url, vault_approle_mount="approle", vault_role_id="role-id-of-the-broker",
                               vault_timeout=timeout, vault_namespace=namespace)
    return VaultMinter(settings, fetch or Fetches(SECRET_ID))


ISSUANCE = SimpleNamespace(wrap_ttl=60, secret_id_ttl=120, secret_id_num_uses=1, bind_source_cidr=True)


def issue(minter):
    return minter.issue("web", ISSUANCE, {"request_id": "req-1", "none": None}, source_ip="10.0.0.7")


def assert_no_secret(error):
    text = f"{error} {error.message} {error.detail}"
    for secret in SECRETS:
        assert secret not in text


# ---- what the minter sends ------------------------------------------------------------------


def test_an_issuance_sends_what_hvac_sent(vault):
    issued = issue(minter_for(vault.url))
    assert (issued.role_id_wrap.token, issued.secret_id_wrap.token, issued.secret_id_accessor) == \
        (ROLE_WRAP, SECRET_WRAP, "acc-secret-id")
    (_, _, login_headers, login_body), = vault.requests_to("POST", LOGIN)
    assert json.loads(login_body) == {"role_id": "role-id-of-the-broker", "secret_id": SECRET_ID}
    assert "x-vault-token" not in login_headers
    (_, _, role_headers, _), = vault.requests_to("GET", ROLE_ID)
    (_, _, secret_headers, secret_body), = vault.requests_to("POST", SECRET)
    for headers in (role_headers, secret_headers):
        assert headers["x-vault-token"] == BROKER_TOKEN and headers["x-vault-wrap-ttl"] == "60s"
        assert headers["x-vault-request"] == "true"
    assert secret_headers["content-type"] == "application/json"
    assert json.loads(secret_body) == {"metadata": json.dumps({"request_id": "req-1"}), "ttl": "120s",
                                       "num_uses": 1, "cidr_list": ["10.0.0.7/32"]}


def test_the_token_is_kept_until_the_refresh_fraction_of_its_lease(vault):
    now = [1000.0]
    minter = VaultMinter(SimpleNamespace(vault_addr=vault.url, vault_approle_mount="approle", vault_role_id="r",
                                         vault_timeout=2.0), Fetches(SECRET_ID), clock=lambda: now[0])
    vault.on("POST", LOGIN, login_ok(lease=100))
    issue(minter)
    now[0] += 79  # 80 % of the lease: still good
    issue(minter)
    assert len(vault.requests_to("POST", LOGIN)) == 1
    now[0] += 2
    issue(minter)
    assert len(vault.requests_to("POST", LOGIN)) == 2
    minter.forget_token()
    minter.log_in()
    assert len(vault.requests_to("POST", LOGIN)) == 3


# ---- each answer maps to the error it mapped to through hvac -------------------------------


@pytest.mark.parametrize("answer, message, detail", [
    ((503, vault_errors("Vault is sealed")), "Vault is sealed", "Vault is sealed (create a secret ID)"),
    ((400, vault_errors("invalid num_uses " + "x" * 400)), "Vault refused the request",
     "Vault refused to create a secret ID: invalid num_uses " + "x" * (200 - len("invalid num_uses "))),
    ((500, vault_errors("internal error")), "Vault failed",
     "Vault failed to create a secret ID: InternalServerError internal error"),
    ((502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}), "Vault failed",
     "Vault failed to create a secret ID: BadGateway "),
    ((429, vault_errors("rate limited")), "Vault failed",
     "Vault failed to create a secret ID: RateLimitExceeded rate limited"),
    ((404, vault_errors()), "Vault failed", "Vault failed to create a secret ID: InvalidPath "),
    ((418, b"teapot"), "Vault failed", "Vault failed to create a secret ID: UnexpectedError "),
    ((200, b"not json at all"), "Vault did not wrap the response", None),
    ((200, ["a", "list"]), "Vault did not wrap the response", None),
    ((204, b""), "Vault did not wrap the response", None),
    (wrapped(SECRET_WRAP, "auth/approle/role/other/secret-id"), "Vault wrapped at an unexpected path",
     "creation_path 'auth/approle/role/other/secret-id', expected 'auth/approle/role/web/secret-id'"),
    ((200, b'{"wrap_info": {"token": "' + b"x" * (2 << 20) + b'"}}'), "Vault answered with an oversized response",
     None),
    ((307, b"", {"Location": "http://127.0.0.1:1/v1/auth/approle/role/web/secret-id"}),
     "Vault redirected the request", None),
])
def test_a_failed_secret_id_creation_maps_as_before_and_the_role_id_is_taken_back(vault, answer, message, detail):
    vault.on("POST", SECRET, answer)
    with pytest.raises(Unavailable) as caught:
        issue(minter_for(vault.url))
    error = caught.value
    assert error.message == message and error.backend == "vault"
    if detail is not None:
        assert error.detail.startswith(detail)
    # the role ID, wrapped meanwhile, is taken back (its wrapping token unwrapped)
    assert [h["x-vault-token"] for _, _, h, _ in vault.requests_to("POST", UNWRAP)] == [ROLE_WRAP]
    assert error.detail.endswith("the role ID wrapping token (accessor acc-role) was revoked")
    assert_no_secret(error)


def test_a_failed_role_id_read_takes_the_secret_id_back(vault):
    vault.on("GET", ROLE_ID, (500, vault_errors("boom")))
    with pytest.raises(Unavailable, match="Vault failed") as caught:
        issue(minter_for(vault.url))
    assert [h["x-vault-token"] for _, _, h, _ in vault.requests_to("POST", UNWRAP)] == [SECRET_WRAP]
    (_, _, _, body), = vault.requests_to("POST", DESTROY)
    assert json.loads(body) == {"secret_id_accessor": "acc-secret-id"}
    assert "the secret ID (accessor acc-secret-id) was destroyed" in caught.value.detail
    assert_no_secret(caught.value)


def test_a_secret_id_whose_unwrap_fails_is_still_destroyed(vault):
    """Taking the secret ID back: the destroy is tried even when the unwrap got no good answer
    (before, `unwrap and destroy` skipped the destroy and left the secret ID live in Vault)."""
    vault.on("GET", ROLE_ID, (500, vault_errors("boom")))
    vault.on("POST", UNWRAP, (500, vault_errors("unwrap failed")))
    with pytest.raises(Unavailable, match="Vault failed") as caught:
        issue(minter_for(vault.url))
    (_, _, _, body), = vault.requests_to("POST", DESTROY)
    assert json.loads(body) == {"secret_id_accessor": "acc-secret-id"}
    assert "the secret ID (accessor acc-secret-id) was destroyed" in caught.value.detail
    assert_no_secret(caught.value)


def test_a_role_id_that_vault_does_not_find_is_not_wrapped(vault):
    vault.on("GET", ROLE_ID, (404, vault_errors()))  # hvac's read() turned a 404 into None
    with pytest.raises(Unavailable, match="Vault did not wrap the response"):
        issue(minter_for(vault.url))


def test_a_403_logs_in_again_once_then_succeeds(vault):
    vault.on("POST", LOGIN, login_ok(BROKER_TOKEN), login_ok(NEW_TOKEN))
    vault.on("GET", ROLE_ID, (403, vault_errors("permission denied")),
             wrapped(ROLE_WRAP, "auth/approle/role/web/role-id", "acc-role"))
    minter = minter_for(vault.url)
    minter.log_in()
    issued = issue(minter)
    assert issued.role_id_wrap.token == ROLE_WRAP
    assert [h["x-vault-token"] for _, _, h, _ in vault.requests_to("GET", ROLE_ID)] == [BROKER_TOKEN, NEW_TOKEN]
    assert len(vault.requests_to("POST", LOGIN)) == 2


def test_a_second_403_is_the_broker_refused(vault):
    vault.on("POST", SECRET, (403, vault_errors("permission denied")))
    with pytest.raises(Unavailable) as caught:
        issue(minter_for(vault.url))
    assert caught.value.message == "Vault refused the broker"
    assert caught.value.detail.startswith(
        "Vault refused to create a secret ID: permission denied (check the broker's Vault policy)")
    assert len(vault.requests_to("POST", SECRET)) == 2


def test_a_400_at_login_fetches_the_secret_id_again_once(vault):
    vault.on("POST", LOGIN, (400, vault_errors("invalid role or secret ID")), login_ok())
    fetches = Fetches(SECRET_ID, ROTATED_SECRET_ID)
    issue(minter_for(vault.url, fetches))
    assert fetches.count == 2
    assert [json.loads(b)["secret_id"] for _, _, _, b in vault.requests_to("POST", LOGIN)] == \
        [SECRET_ID, ROTATED_SECRET_ID]


def test_a_400_at_both_logins_is_a_refusal_without_the_secret_id(vault):
    vault.on("POST", LOGIN, (400, vault_errors("invalid role or secret ID")))
    fetches = Fetches(SECRET_ID)
    with pytest.raises(Unavailable) as caught:
        minter_for(vault.url, fetches).log_in()
    assert (caught.value.message, caught.value.detail) == \
        ("Vault refused the request", "Vault refused to log in: invalid role or secret ID")
    assert fetches.count == 2
    assert_no_secret(caught.value)


@pytest.mark.parametrize("answer, message", [
    ((503, vault_errors("sealed")), "Vault is sealed"),
    ((403, vault_errors("permission denied")), "Vault refused the broker"),
    ((200, b"garbage"), "Vault failed"),
    ((200, {"auth": None}), "Vault failed"),
    ((200, {"auth": {"client_token": ""}}), "Vault failed"),
])
def test_login_failures(vault, answer, message):
    vault.on("POST", LOGIN, answer)
    with pytest.raises(Unavailable) as caught:
        minter_for(vault.url).log_in()
    assert caught.value.message == message
    assert_no_secret(caught.value)


def test_vault_unreachable_names_the_exception_type_only():
    with pytest.raises(Unavailable) as caught:
        minter_for(closed_port_url()).log_in()
    assert caught.value.message == "Vault could not be reached"
    assert caught.value.detail.startswith("Vault unreachable (log in): ")
    assert "Error" in caught.value.detail  # e.g. NewConnectionError
    assert_no_secret(caught.value)


def test_a_vault_that_stalls_is_given_up_after_the_timeout():
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does), never answers
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="could not be reached") as caught:
            minter_for(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5).log_in()
        assert time.monotonic() - started < 3
        assert "Timeout" in caught.value.detail
    finally:
        listener.close()


# ---- destroy, take back, audit hashes, health -----------------------------------------------


def test_destroy_secret_id_status(vault):
    minter = minter_for(vault.url)
    assert minter.destroy_secret_id_status("web", "acc-1") == "destroyed"
    vault.on("POST", DESTROY, (400, vault_errors("failed to find accessor entry for secret_id_accessor: \"acc-1\"")))
    assert minter.destroy_secret_id_status("web", "acc-1") == "gone"
    assert minter.destroy_secret_id("web", "acc-1") is False
    vault.on("POST", DESTROY, (500, vault_errors("storage failure")))
    assert minter.destroy_secret_id_status("web", "acc-1") == \
        "failed: Vault failed to destroy a secret ID: InternalServerError storage failure"


def test_a_destroy_that_failed_is_tried_once_more(vault):
    """A take-back must not leave a secret ID live and unrecorded because Vault failed once
    (the boot storm's injected 503 on the destroy left an orphan)."""
    minter = minter_for(vault.url)
    vault.on("POST", DESTROY, (503, vault_errors("Vault is sealed")), (204, b""))
    assert minter.destroy_secret_id("web", "acc-1") is True
    assert len(vault.requests_to("POST", DESTROY)) == 2
    vault.on("POST", DESTROY, (503, vault_errors("Vault is sealed")))
    assert minter.destroy_secret_id("web", "acc-2") is False
    assert len(vault.requests_to("POST", DESTROY)) == 4  # two more, then it gives up


def test_consume_wrapping_token(vault):
    minter = minter_for(vault.url)
    for status, spent in ((200, True), (204, True), (400, True), (500, False), (403, False)):
        vault.on("POST", UNWRAP, (status, vault_errors("x") if status >= 400 else b""))
        assert minter.consume_wrapping_token(ROLE_WRAP) is spent
    assert minter_for(closed_port_url()).consume_wrapping_token(ROLE_WRAP) is False


def test_take_back_names_what_could_not_be_undone(vault):
    issued = issue(minter_for(vault.url))
    vault.on("POST", UNWRAP, (500, vault_errors("boom")))
    vault.on("POST", DESTROY, (204, b""))
    assert minter_for(vault.url).take_back(issued) == ["wrapping accessor acc-role", "wrapping accessor acc-secret"]


def test_audit_hashes_are_best_effort(vault):
    vault.on("POST", "/v1/sys/audit-hash/file", (200, {"data": {"hash": "hmac-sha256:abc"}}))
    minter = minter_for(vault.url)
    assert minter.audit_hashes("file", {"a": "x", "b": "", "c": "y"}) == {"a": "hmac-sha256:abc",
                                                                        "c": "hmac-sha256:abc"}
    vault.on("POST", "/v1/sys/audit-hash/file", (200, b"garbage"))
    assert minter.audit_hashes("file", {"a": "x"}) == {}
    assert minter_for(closed_port_url()).audit_hashes("file", {"a": "x"}) == {}


@pytest.mark.parametrize("status, expected", [(200, None), (429, None), (473, None), (503, "sealed"),
                                              (501, "not initialised"), (500, "HTTP 500")])
def test_health(vault, status, expected):
    vault.on("GET", "/v1/sys/health?standbyok=True", (status, {}))  # as hvac sends it
    assert minter_for(vault.url).health() == expected


def test_health_of_an_unreachable_vault():
    assert minter_for(closed_port_url()).health().startswith("unreachable (")


# ---- the revoker ----------------------------------------------------------------------------


def revoker_for(url, fetch=None, namespace=None):
    return VaultRevoker(addr=url, mount="approle", role_id="revoker-role", fetch_secret_id=fetch or Fetches(SECRET_ID),
                        timeout=2.0, namespace=namespace)


def test_revoker_answers(vault):
    revoker = revoker_for(vault.url)
    assert revoker.destroy_secret_id("web", "acc-1") == "destroyed"
    vault.on("POST", DESTROY, (400, vault_errors("failed to find accessor entry")))
    assert revoker.destroy_secret_id("web", "acc-1") == "gone"
    vault.on("POST", "/v1/auth/token/revoke-accessor", (204, b""))
    assert revoker.revoke_token("acc-t") == "revoked"
    vault.on("POST", "/v1/auth/token/revoke-accessor", (400, vault_errors("invalid accessor")))
    assert revoker.revoke_token("acc-t") == "gone"
    vault.on("POST", "/v1/auth/token/revoke-accessor", (503, vault_errors("sealed")))
    assert revoker.revoke_token("acc-t") == "failed: Vault is sealed (auth/token/revoke-accessor)"
    (_, _, headers, _), *_ = vault.requests_to("POST", "/v1/auth/token/revoke-accessor")
    assert headers["x-vault-token"] == BROKER_TOKEN


def test_revoker_logs_in_again_on_403_then_says_refused(vault):
    vault.on("POST", "/v1/auth/token/lookup-accessor", (403, vault_errors("permission denied")))
    with pytest.raises(Unavailable) as caught:
        revoker_for(vault.url).lookup("acc-1")
    assert caught.value.message == "Vault refused the revoking identity"
    assert len(vault.requests_to("POST", LOGIN)) == 2


def test_revoker_login_refetches_a_rotated_secret_id_then_refuses(vault):
    vault.on("POST", LOGIN, (400, vault_errors("invalid role or secret ID")))
    fetches = Fetches(SECRET_ID, ROTATED_SECRET_ID)
    with pytest.raises(Unavailable) as caught:
        revoker_for(vault.url, fetches).count_tokens()
    assert caught.value.detail == "revoker login: HTTP 400 invalid role or secret ID"
    assert fetches.count == 2
    assert_no_secret(caught.value)


def test_revoker_scan_reads_a_long_accessor_list(vault):
    keys = [f"accessor-{i:08d}" for i in range(60_000)]  # ~1.3 MB: over the 1 MiB of one Vault answer
    vault.on("LIST", "/v1/auth/token/accessors", (200, {"data": {"keys": keys}}))
    assert revoker_for(vault.url).count_tokens() == 60_000


def test_revoker_unreachable():
    with pytest.raises(Unavailable, match="Vault could not be reached"):
        revoker_for(closed_port_url()).lookup("acc-1")
    assert revoker_for(closed_port_url()).destroy_secret_id("web", "a").startswith(
        "failed: Vault unreachable (auth/approle/login): ")


# ---- the namespace (BROKER_VAULT_NAMESPACE) ---------------------------------------------------


def test_every_call_of_both_identities_names_the_namespace(vault):
    minter = minter_for(vault.url, namespace="team-a")
    issued = issue(minter)
    minter.consume_wrapping_token(issued.role_id_wrap.token)
    minter.destroy_secret_id_status("web", "acc-1")
    minter.health()
    by_minter = len(vault.seen)
    vault.on("POST", "/v1/auth/token/revoke-accessor", (204, b""))
    assert revoker_for(vault.url, namespace="admin/team-a").revoke_token("acc-t") == "revoked"
    assert by_minter >= 6 and len(vault.seen) > by_minter
    # every call but sys/health, the server's own (OpenBao answers it with 400 inside a namespace)
    minter_calls = [(path, h) for _, path, h, _ in vault.seen[:by_minter]]
    assert [h.get("x-vault-namespace") for path, h in minter_calls if "sys/health" in path] == [None]
    assert all(h.get("x-vault-namespace") == "team-a" for path, h in minter_calls if "sys/health" not in path)
    assert all(h.get("x-vault-namespace") == "admin/team-a" for _, _, h, _ in vault.seen[by_minter:])


def test_the_root_namespace_sends_no_namespace_header(vault, monkeypatch):
    monkeypatch.setenv("VAULT_NAMESPACE", "from-the-environment")  # hvac must not pick it up
    monkeypatch.setenv("VAULT_TOKEN", "hvs.TokenOfTheEnvironmentNeverSent0123")
    issue(minter_for(vault.url))
    assert vault.seen and all("x-vault-namespace" not in h for _, _, h, _ in vault.seen)
    (_, _, login_headers, _), = vault.requests_to("POST", LOGIN)
    assert "x-vault-token" not in login_headers


@pytest.mark.parametrize("value, expected", [("team-a", "team-a"), ("/admin/team-a/", "admin/team-a"),
                                             ("root", None), ("", None)])
def test_the_namespace_setting(value, expected):
    from chalicelib.config import Settings

    env = {"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r",
           "BROKER_VAULT_SECRET_ID_SECRET": "s", "BROKER_SERVER_ID": "broker.test", "BROKER_AUDIT_TABLE": "a",
           "BROKER_REPLAY_TABLE": "r", "BROKER_VAULT_NAMESPACE": value}
    assert Settings.from_env(env).vault_namespace == expected


@pytest.mark.parametrize("value", ["team a", "a//b", "../x", "team-a?x=1", "t\u00e9am", "/".join(["n"] * 9)])
def test_a_bad_namespace_stops_the_start_naming_the_variable(value):
    from chalicelib.config import Settings
    from chalicelib.errors import ConfigError

    env = {"BROKER_VAULT_ADDR": "http://127.0.0.1:1", "BROKER_VAULT_ROLE_ID": "r",
           "BROKER_VAULT_SECRET_ID_SECRET": "s", "BROKER_SERVER_ID": "broker.test", "BROKER_AUDIT_TABLE": "a",
           "BROKER_REPLAY_TABLE": "r", "BROKER_VAULT_NAMESPACE": value}
    with pytest.raises(ConfigError, match="BROKER_VAULT_NAMESPACE must be a Vault namespace path"):
        Settings.from_env(env)


def test_close_connections_keeps_the_identities_usable(vault):
    minter = minter_for(vault.url)
    issue(minter)
    minter.close_connections()
    minter.forget_token()
    issue(minter)
    assert len(vault.requests_to("POST", LOGIN)) == 2
