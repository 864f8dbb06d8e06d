"""``broker vault setup``: put Vault (or OpenBao) in the state the broker needs. Idempotent.

1. the AppRole auth method at its mount (enabled if missing);
2. the policies of ``policies/vault/``: the broker's own, and one per served role
   (named after the file);
3. the broker's AppRole: its own policy, reusable secret IDs, short tokens, and
   ``token_bound_cidrs``/``secret_id_bound_cidrs`` when ``--broker-cidrs`` is given;
4. one AppRole per role the rules file serves: that role's policy, single-use secret
   IDs (``secret_id_num_uses=1``), ``secret_id_ttl`` the longest the rules ask for,
   and ``token_bound_cidrs`` when ``--token-bound-cidrs`` is given;
5. the revoking identity: AppRole ``secret-zero-revoker`` with its own policy (list,
   look up and revoke tokens by accessor; destroy the served roles' secret IDs), used
   only by the revocation route;
6. the AppRole mount's user lockout turned off: every machine of a role holds the same
   role ID, so failed logins of one machine (a used or revoked secret ID retried by
   its Agent) would lock the whole role out; secret IDs are random and single-use, so
   guessing is not what lockout would defend against (docs/operations.md);
7. the broker's secret ID in Secrets Manager, and the revoking identity's in its own
   secret (``<secret>-revoker``): each kept if it is a valid secret ID of its AppRole,
   else a new one is created response-wrapped, its wrapping token checked (creation
   path), unwrapped here and stored.

Only the fields listed are written; token TTLs of existing served roles are left as
the operator set them (the defaults apply when a role is created). ``--dry-run``
reads everything and prints what would change. Works against HashiCorp Vault and
OpenBao alike (only the common HTTP API is used). Never prints a secret: no secret
ID, wrapping token or Vault token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import UsageError, VaultError

BROKER_ROLE = "secret-zero-broker"
REVOKER_ROLE = "secret-zero-revoker"
BROKER_ROLE_DEFAULTS = {"token_ttl": 900, "token_max_ttl": 3600, "secret_id_num_uses": 0}
REVOKER_WANTED = {"token_policies": [REVOKER_ROLE], "secret_id_num_uses": 0}
SERVED_ROLE_CREATE_DEFAULTS = {"token_ttl": 3600, "token_max_ttl": 86400}
SECRET_ID_WRAP_TTL = "60s"


@dataclass
class Plan:
    """What setup found and did: ``changes`` (applied, or to apply with dry_run) and ``unchanged``."""

    dry_run: bool
    changes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def change(self, text: str) -> None:
        self.changes.append(text)

    def same(self, text: str) -> None:
        self.unchanged.append(text)

    def summary(self) -> dict[str, Any]:
        return {"status": "ok", "dry_run": self.dry_run, "changes": self.changes, "unchanged": self.unchanged}


class Vault:
    """The security team's authenticated Vault calls, through hvac (its token, its namespace:
    ``--vault-namespace``/``VAULT_NAMESPACE`` puts every AppRole and policy setup writes inside
    that namespace). No redirect is followed; answers are bounded (broker/vault.py)."""

    def __init__(self, addr: str, token: str, *, timeout: float = 10.0, namespace: str | None = None,
                 ssl_context: Any = None, ca_cert: str | None = None) -> None:
        if not addr or not addr.startswith(("http://", "https://")):
            raise UsageError(f"the Vault address must be an http(s) URL, got {addr!r}")
        if not token:
            raise UsageError("no Vault token: set VAULT_TOKEN (or BAO_TOKEN) to a token that may manage "
                             "auth methods, policies and AppRoles")
        from broker.vault import VaultClient

        self.addr = addr.rstrip("/")
        self._token = token
        self._namespace = (namespace or "").strip("/") or None
        self._http = VaultClient(self.addr, timeout=timeout, ca_cert=ca_cert, namespace=self._namespace)
        self._client = self._http._client(token)

    @property
    def namespace(self) -> str | None:
        return self._namespace

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             wrap_ttl: str | None = None, token: str | None = None) -> tuple[int, dict[str, Any] | None]:
        """(status, JSON document or None) of one call through hvac's adapter (setup reads and
        writes whole endpoints: sys/auth, policies, AppRole fields; hvac raises nothing here,
        each step reads the status itself)."""
        import requests

        from broker.vault import _Oversized

        client = self._client if token is None else self._http._client(token)
        kwargs: dict[str, Any] = {"raise_exception": False}
        if body is not None:
            kwargs["json"] = body
        if wrap_ttl:
            kwargs["wrap_ttl"] = wrap_ttl
        try:
            response = client.adapter.request(method, f"/v1/{path}", **kwargs)
        except _Oversized:
            raise VaultError(f"Vault at {self.addr} answered {method} {path} with an oversized response") from None
        except requests.exceptions.RequestException as exc:
            raise VaultError(f"cannot reach Vault at {self.addr}: {type(exc).__name__}") from None
        if isinstance(response, dict):  # hvac's JSON adapter: a 200's document
            return 200, response
        try:
            doc = response.json() if response.content else None
        except ValueError:
            doc = None
        return response.status_code, doc if isinstance(doc, dict) else None

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        status, doc = self.call(method, path, body, **kwargs)
        if status not in (200, 204):
            errors = "; ".join(str(e) for e in (doc or {}).get("errors", [])) or f"HTTP {status}"
            raise VaultError(f"Vault refused {method} {path}: {errors[:300]}", status=status)
        return doc or {}

    def read(self, path: str) -> dict[str, Any] | None:
        """``data`` of a GET, or None when Vault says 404."""
        status, doc = self.call("GET", path)
        if status == 404:
            return None
        if status != 200:
            errors = "; ".join(str(e) for e in (doc or {}).get("errors", [])) or f"HTTP {status}"
            raise VaultError(f"Vault refused GET {path}: {errors[:300]}", status=status)
        return (doc or {}).get("data") or {}


# ---- what the rules and the policy directory ask for --------------------------------------------


def served_roles(rules_path: str) -> dict[str, int]:
    """{role: the longest secret_id_ttl (seconds) any rule for it asks for} from the rules file."""
    from broker.policy_engine import load_engine

    ruleset = load_engine().load_rules(rules_path)
    roles: dict[str, int] = {}
    for rule in ruleset.rules:
        ttl = int(rule.issuance.secret_id_ttl)
        roles[rule.role] = max(ttl, roles.get(rule.role, 0))
    if not roles:
        raise UsageError(f"{rules_path} serves no role")
    return roles


def revoker_secret_name(secret_name: str) -> str:
    """Where the revoking identity's secret ID is stored: beside the broker's."""
    return f"{secret_name}-revoker"


def check_policy_dir(policy_dir: Path, roles: dict[str, int], mount: str, broker_role: str) -> dict[str, str]:
    """{policy name: HCL} for the broker, the revoking identity and each served role;
    UsageError when one is missing, or when the broker's policy does not let it mint for
    a served role, or the revoker's does not let it destroy a served role's secret IDs."""
    wanted = [broker_role, REVOKER_ROLE, *sorted(roles)]
    missing = [name for name in wanted if not (policy_dir / f"{name}.hcl").is_file()]
    if missing:
        raise UsageError(f"no policy file for {', '.join(missing)} in {policy_dir} "
                         f"(expected {', '.join(f'{m}.hcl' for m in missing)})")
    policies = {name: (policy_dir / f"{name}.hcl").read_text() for name in wanted}
    broker_policy = policies[broker_role]
    uncovered = [role for role in sorted(roles)
                 if f'"auth/{mount}/role/{role}/secret-id"' not in broker_policy
                 or f'"auth/{mount}/role/{role}/role-id"' not in broker_policy]
    if uncovered:
        raise UsageError(f"{policy_dir / (broker_role + '.hcl')} does not let the broker read the role ID and "
                         f"create secret IDs of {', '.join(uncovered)} (at auth/{mount}/role/...): "
                         "add them, or remove the rules for them")
    revoker_policy = policies[REVOKER_ROLE]
    uncovered = [role for role in sorted(roles)
                 if f'"auth/{mount}/role/{role}/secret-id-accessor/destroy"' not in revoker_policy]
    if uncovered:
        raise UsageError(f"{policy_dir / (REVOKER_ROLE + '.hcl')} does not let the revoking identity destroy the "
                         f"secret IDs of {', '.join(uncovered)} (at auth/{mount}/role/...): add them")
    return policies


# ---- the steps --------------------------------------------------------------------------------------


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = []
    for key, value in wanted.items():
        have = current.get(key)
        if isinstance(value, list):
            have = sorted(have or [])
            value = sorted(value)
        if have != value:
            out.append(key)
    return out


def ensure_approle(vault: Vault, mount: str, plan: Plan) -> None:
    auths = vault.ok("GET", "sys/auth")
    methods = auths.get("data") if isinstance(auths.get("data"), dict) else auths
    current = methods.get(f"{mount}/") if isinstance(methods, dict) else None
    if current is None:
        plan.change(f"enable the approle auth method at {mount}/")
        if not plan.dry_run:
            vault.ok("POST", f"sys/auth/{mount}", {"type": "approle"})
    elif current.get("type") != "approle":
        raise UsageError(f"{mount}/ is a {current.get('type')} auth method, not approle")
    else:
        plan.same(f"approle auth method at {mount}/")


def ensure_no_lockout(vault: Vault, mount: str, plan: Plan) -> None:
    """Turn off the AppRole mount's user lockout (see the module's docstring, step 6)."""
    current = None if (plan.dry_run and _mount_planned(plan, mount)) else vault.read(f"sys/auth/{mount}/tune")
    if current is not None and current.get("user_lockout_disable") is True:
        plan.same(f"user lockout off on {mount}/")
        return
    plan.change(f"turn off user lockout on {mount}/ (machines of a role share its role ID: one machine's failed "
                "logins must not lock out the others)")
    if not plan.dry_run:
        vault.ok("POST", f"sys/auth/{mount}/tune", {"user_lockout_config": {"lockout_disable": True}})


def ensure_policies(vault: Vault, policies: dict[str, str], plan: Plan) -> None:
    for name, text in policies.items():
        current = vault.read(f"sys/policies/acl/{name}")
        if current is not None and current.get("policy") == text:
            plan.same(f"policy {name}")
            continue
        plan.change(f"{'create' if current is None else 'update'} policy {name}")
        if not plan.dry_run:
            vault.ok("POST", f"sys/policies/acl/{name}", {"policy": text})


def ensure_role(vault: Vault, mount: str, name: str, wanted: dict[str, Any], create_defaults: dict[str, Any],
                plan: Plan) -> None:
    path = f"auth/{mount}/role/{name}"
    current = vault.read(path) if not (plan.dry_run and _mount_planned(plan, mount)) else None
    if current is None:
        body = {**create_defaults, **wanted}
        plan.change(f"create AppRole {name} ({_describe(body)})")
        if not plan.dry_run:
            vault.ok("POST", path, body)
        return
    fields = _differs(current, wanted)
    if not fields:
        plan.same(f"AppRole {name}")
        return
    plan.change(f"update AppRole {name}: {_describe({k: wanted[k] for k in fields})}")
    if not plan.dry_run:
        vault.ok("POST", path, {k: wanted[k] for k in fields})


def _mount_planned(plan: Plan, mount: str) -> bool:
    return f"enable the approle auth method at {mount}/" in plan.changes


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(values.items()))


def ensure_broker_secret(vault: Vault, mount: str, broker_role: str, secrets_client: Any, secret_name: str,
                         plan: Plan, whose: str = "the broker's") -> None:
    """Keep the stored secret ID if it is valid for the broker's AppRole; else mint, check,
    unwrap and store a new one."""
    stored = None
    exists = True
    try:
        stored = (secrets_client.get_secret_value(SecretId=secret_name).get("SecretString") or "").strip()
    except Exception as exc:  # noqa: BLE001 - botocore's error classes are per client
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code != "ResourceNotFoundException":
            raise VaultSetupAwsError(f"cannot read the secret {secret_name}: {code or type(exc).__name__}") from None
        exists = False
    if stored and not _mount_planned(plan, mount):
        status, doc = vault.call("POST", f"auth/{mount}/role/{broker_role}/secret-id/lookup", {"secret_id": stored})
        if status == 200 and (doc or {}).get("data"):
            expires = doc["data"].get("expiration_time") or ""
            if not expires or expires.startswith("0001-"):  # Vault's zero time: no expiry
                expires = "never"
            plan.same(f"{whose} secret ID in {secret_name} (valid; expires {expires})")
            return
    why = "missing" if not exists else "empty" if not stored else "not a valid secret ID of the broker's AppRole"
    plan.change(f"create a secret ID for AppRole {broker_role} and store it in {secret_name} ({why})")
    if plan.dry_run:
        return
    secret_id, accessor = mint_secret_id(vault, mount, broker_role)
    try:
        if exists:
            secrets_client.put_secret_value(SecretId=secret_name, SecretString=secret_id)
        else:
            secrets_client.create_secret(Name=secret_name, SecretString=secret_id,
                                         Description=f"secret ID of the Vault AppRole {broker_role} (secret-zero broker)")
    except Exception as exc:  # noqa: BLE001
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        # the new secret ID is useless unstored: take it back
        vault.call("POST", f"auth/{mount}/role/{broker_role}/secret-id-accessor/destroy",
                   {"secret_id_accessor": accessor})
        raise VaultSetupAwsError(f"cannot store the secret ID in {secret_name}: {code or type(exc).__name__}") from None


def mint_secret_id(vault: Vault, mount: str, role: str, metadata: dict[str, str] | None = None) -> tuple[str, str]:
    """A new secret ID of ``role``, response-wrapped in transit: created with X-Vault-Wrap-TTL, the
    wrapping token's creation path checked with sys/wrapping/lookup, then unwrapped here.
    Returns (secret ID, its accessor). ``metadata`` is set on the secret ID (Vault copies it onto
    the tokens it logs in, and logs it in plaintext: no secrets in it)."""
    body: dict[str, Any] = {"metadata": json.dumps(metadata)} if metadata else {}
    wrapped = vault.ok("POST", f"auth/{mount}/role/{role}/secret-id", body, wrap_ttl=SECRET_ID_WRAP_TTL)
    wrap_info = wrapped.get("wrap_info") or {}
    token = wrap_info.get("token")
    expected = f"auth/{mount}/role/{role}/secret-id"
    if not token:
        raise VaultError("Vault did not wrap the new secret ID (is X-Vault-Wrap-TTL allowed?)")
    looked = vault.ok("POST", "sys/wrapping/lookup", {"token": token}).get("data") or {}
    if looked.get("creation_path") != expected:
        raise VaultError(f"the wrapping token of the new secret ID was created at {looked.get('creation_path')!r}, "
                         f"not {expected!r}: not storing it")
    data = vault.ok("POST", "sys/wrapping/unwrap", {}, token=token).get("data") or {}
    secret_id = data.get("secret_id")
    accessor = data.get("secret_id_accessor") or wrap_info.get("wrapped_accessor") or ""
    if not secret_id:
        raise VaultError("unwrapping the new secret ID gave nothing")
    return secret_id, accessor


class VaultSetupAwsError(VaultError):
    """Secrets Manager refused or failed (same exit code as Vault trouble)."""


def setup(
    vault: Vault,
    *,
    roles: dict[str, int],
    policy_dir: Path,
    secrets_client: Any,
    secret_name: str,
    mount: str = "approle",
    broker_role: str = BROKER_ROLE,
    broker_cidrs: list[str] | None = None,
    token_bound_cidrs: list[str] | None = None,
    dry_run: bool = False,
) -> Plan:
    mount = mount.strip("/")
    policies = check_policy_dir(Path(policy_dir), roles, mount, broker_role)
    plan = Plan(dry_run=dry_run)
    ensure_approle(vault, mount, plan)
    ensure_no_lockout(vault, mount, plan)
    ensure_policies(vault, policies, plan)
    broker_wanted: dict[str, Any] = {"token_policies": [broker_role], "secret_id_num_uses": 0}
    if broker_cidrs:
        broker_wanted.update(token_bound_cidrs=list(broker_cidrs), secret_id_bound_cidrs=list(broker_cidrs))
    ensure_role(vault, mount, broker_role, broker_wanted, BROKER_ROLE_DEFAULTS, plan)
    for role, secret_id_ttl in sorted(roles.items()):
        wanted: dict[str, Any] = {"token_policies": [role], "secret_id_num_uses": 1, "secret_id_ttl": secret_id_ttl}
        if token_bound_cidrs:
            wanted["token_bound_cidrs"] = list(token_bound_cidrs)
        ensure_role(vault, mount, role, wanted, SERVED_ROLE_CREATE_DEFAULTS, plan)
    ensure_role(vault, mount, REVOKER_ROLE, dict(REVOKER_WANTED, **({"token_bound_cidrs": list(broker_cidrs),
                                                                     "secret_id_bound_cidrs": list(broker_cidrs)}
                                                                    if broker_cidrs else {})),
                BROKER_ROLE_DEFAULTS, plan)
    ensure_broker_secret(vault, mount, broker_role, secrets_client, secret_name, plan)
    ensure_broker_secret(vault, mount, REVOKER_ROLE, secrets_client, revoker_secret_name(secret_name), plan,
                         whose="the revoking identity's")
    return plan


def vault_token_from_env() -> str | None:
    for name in ("VAULT_TOKEN", "BAO_TOKEN"):
        if os.environ.get(name):
            return os.environ[name]
    token_file = Path.home() / ".vault-token"
    if token_file.is_file():
        return token_file.read_text().strip() or None
    return None
