"""The minter's Vault calls (chalicelib/minter.py through hvac, chalicelib/vault_client.py)
against the suite's real OpenBao: what it mints works, and OpenBao's own refusals, seal and
revoked tokens map to the broker's errors. The same mapping against answers OpenBao can't be
made to give on cue: tests/unit/test_vault_client_answers.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import hvac
import pytest

from chalicelib.errors import Unavailable
from chalicelib.minter import VaultMinter
from tests.scripted_http import Fetches

ISSUANCE = SimpleNamespace(wrap_ttl=60, secret_id_ttl=120, secret_id_num_uses=1, bind_source_cidr=False)




def minter_for(stack, fetch=None):
    settings = SimpleNamespace(vault_addr=stack.vault_addr, vault_approle_mount="approle",
                               vault_role_id=stack.vault_seed.broker_role_id, vault_timeout=5.0,
                               vault_namespace=stack.vault_namespace)
    return VaultMinter(settings, fetch or Fetches(stack.vault_seed.broker_secret_id))


def test_what_the_minter_issues_logs_in(stack):
    issued = minter_for(stack).issue("web", ISSUANCE, {"request_id": "direct-1"})
    assert issued.role_id_wrap.creation_path == "auth/approle/role/web/role-id"
    assert issued.secret_id_wrap.creation_path == "auth/approle/role/web/secret-id"
    role_id = hvac.Client(url=stack.vault_addr, token=issued.role_id_wrap.token).sys.unwrap()["data"]["role_id"]
    unwrapped = hvac.Client(url=stack.vault_addr, token=issued.secret_id_wrap.token).sys.unwrap()["data"]
    assert unwrapped["secret_id_accessor"] == issued.secret_id_accessor
    login = hvac.Client(url=stack.vault_addr).auth.approle.login(role_id=role_id, secret_id=unwrapped["secret_id"])
    assert login["auth"]["metadata"]["request_id"] == "direct-1"


def test_a_role_the_broker_may_not_mint_for_is_refused_and_nothing_is_left(stack):
    minter = minter_for(stack)
    with pytest.raises(Unavailable) as caught:
        minter.issue("no-such-role", ISSUANCE, {"request_id": "direct-2"})
    assert caught.value.message in ("Vault refused the broker", "Vault refused the request")
    assert "could NOT" not in caught.value.detail


def test_an_unknown_accessor_is_gone(stack):
    minter = minter_for(stack)
    assert minter.destroy_secret_id_status("web", "00000000-0000-0000-0000-000000000000") == "gone"
    issued = minter.issue("web", ISSUANCE, {"request_id": "direct-3"})
    assert minter.destroy_secret_id_status("web", issued.secret_id_accessor) == "destroyed"
    assert minter.destroy_secret_id_status("web", issued.secret_id_accessor) == "gone"


def test_take_back_spends_both_wrapping_tokens_and_destroys_the_secret_id(stack):
    minter = minter_for(stack)
    issued = minter.issue("web", ISSUANCE, {"request_id": "direct-5"})
    assert minter.take_back(issued) == []
    for wrap in (issued.role_id_wrap, issued.secret_id_wrap):
        with pytest.raises(hvac.exceptions.VaultError):
            hvac.Client(url=stack.vault_addr, token=wrap.token).sys.unwrap()
    assert minter.destroy_secret_id_status("web", issued.secret_id_accessor) == "gone"


def test_a_revoked_broker_token_is_replaced_by_a_new_login(stack):
    fetch = Fetches(stack.vault_seed.broker_secret_id)
    minter = minter_for(stack, fetch)
    minter.log_in()
    stack.vault().auth.token.revoke(minter._token)  # as an operator would, behind the broker's back
    issued = minter.issue("web", ISSUANCE, {"request_id": "direct-4"})
    assert issued.secret_id_accessor
    assert fetch.count == 1  # the secret ID itself still works: no refetch


def test_a_rotated_secret_id_is_fetched_again_once(stack):
    fetch = Fetches("00000000-dead-beef-0000-rotatedaway0", stack.vault_seed.broker_secret_id)
    minter = minter_for(stack, fetch)
    minter.log_in()
    assert fetch.count == 2


def test_a_wrong_secret_id_is_a_named_refusal(stack):
    with pytest.raises(Unavailable) as caught:
        minter_for(stack, Fetches("00000000-dead-beef-0000-wrongsecret0")).log_in()
    assert caught.value.message == "Vault refused the request"
    assert caught.value.detail.startswith("Vault refused to log in: ")
    assert "wrongsecret" not in caught.value.detail


def test_sealed(sealed_vault):
    minter = minter_for(sealed_vault)
    assert minter.health() == "sealed"
    with pytest.raises(Unavailable, match="Vault is sealed"):
        minter.log_in()
