"""``broker vault rotate-broker-secret``: a new secret ID for the broker's own AppRole.

The function (``chalicelib/minter.py``) reads its secret ID from Secrets Manager at its
first Vault login (a cold start), keeps it in memory, logs in again with it shortly
before each token expires (at 80 % of ``token_ttl``), and reads Secrets Manager again
only when Vault refuses a login with the one it holds. So:

- from the moment the new value is stored, new execution environments use it;
- a warm environment keeps the old one for as long as the old one works: waiting does
  not make it switch. Destroying the old one does: its next login (token refresh, or at
  once if its token is revoked) is refused, it reads the secret again and logs in with
  the new one, within the same request (one refused login and one Secrets Manager read);
- tokens already issued with the old secret ID stay valid until they expire.

So no wait is needed for the function to keep working (it switches when refused), and
no wait makes a warm environment switch earlier. The grace period between the two phases
(``--grace``, default 15 min) is a canary window: only new environments use the new value
while the old one still serves the warm fleet. If the new value does not work from the
function itself (its role cannot read the new version, its egress is outside CIDRs the
secret ID is bound to, ...), only cold starts fail, the error alarms fire, and putting
``AWSPREVIOUS`` back undoes the rotation. After the old one is destroyed, every warm
environment has switched within one token refresh interval (80 % of the AppRole's
``token_ttl``: 12 min with ``vault setup``'s 15 min), and the last token obtained with the
old one expires within ``token_ttl`` (the function logs in again rather than renewing).

Phase 1 (store): read the stored secret ID and its accessor; create a new one
response-wrapped (``X-Vault-Wrap-TTL``; the wrapping token's creation path checked with
``sys/wrapping/lookup``; unwrapped here); check that it logs in (the token is revoked at
once; a lookup instead when the role binds secret IDs or tokens to CIDRs, as a login from
here would be refused); store it with ``put_secret_value`` (Secrets Manager keeps the old
value as ``AWSPREVIOUS``); read it back.

Phase 2 (destroy), after the grace period in the same run, or later with ``--finish
OLD_ACCESSOR``: refuse unless the stored secret ID is valid and is not the old one (and,
with ``--finish``, is at least ``--grace`` old); destroy the old one by accessor; check
that Vault no longer knows it.

Only accessors are printed, never a secret ID, wrapping token or Vault token.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from broker.errors import UsageError, VaultError
from broker.vault_setup import Vault, VaultSetupAwsError, mint_secret_id

DEFAULT_GRACE = 15 * 60
CREATED_BY = "broker vault rotate-broker-secret"
_DURATION = re.compile(r"^(\d+)(s|m|h)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}


def parse_grace(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``0``."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise UsageError(f"--grace {text!r}: expected a duration like 0, 90s, 15m or 1h")
    return int(m.group(1)) * _UNITS[m.group(2)]


def describe_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds % 60 else f"{seconds // 60}m"
    return f"{seconds}s"


@dataclass
class Rotation:
    """What the run found and did (accessors only)."""

    secret_name: str
    dry_run: bool
    old_accessor: str | None = None
    new_accessor: str | None = None
    stored_version: str | None = None
    old_destroyed: bool = False
    grace_seconds: int = 0
    finish_command: str | None = None
    other_accessors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"status": "ok", "dry_run": self.dry_run, "secret": self.secret_name,
                "old_accessor": self.old_accessor, "new_accessor": self.new_accessor,
                "stored_version": self.stored_version, "old_destroyed": self.old_destroyed,
                "grace_seconds": self.grace_seconds, "finish_command": self.finish_command,
                "other_accessors": self.other_accessors}


class Rotator:
    """The two phases against one Vault and one Secrets Manager secret.

    ``say`` hears one line per step; ``secret`` is told every secret value handled (so the
    caller can scrub it from any output); ``sleep`` and ``now`` are injectable for tests."""

    def __init__(self, vault: Vault, secrets_client: Any, secret_name: str, *, mount: str = "approle",
                 broker_role: str = "secret-zero-broker", say: Callable[[str], None] = lambda _t: None,
                 secret: Callable[[str], None] = lambda _v: None, sleep: Callable[[float], None] | None = None,
                 now: Callable[[], float] | None = None) -> None:
        self.vault = vault
        self.sm = secrets_client
        self.secret_name = secret_name
        self.mount = mount.strip("/")
        self.role = broker_role
        self.say = say
        self.secret = secret
        self.sleep = sleep or time.sleep
        self.now = now or time.time
        self.base = f"auth/{self.mount}/role/{self.role}"

    # ---- reading ---------------------------------------------------------------------------

    def stored(self) -> tuple[str, str | None]:
        """(the stored secret ID, its version ID)."""
        try:
            answer = self.sm.get_secret_value(SecretId=self.secret_name)
        except Exception as exc:  # noqa: BLE001 - botocore's error classes are per client
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code == "ResourceNotFoundException":
                raise UsageError(f"no secret {self.secret_name} in Secrets Manager: run `broker vault setup` "
                                 "first (it creates and stores the broker's secret ID)") from None
            raise VaultSetupAwsError(f"cannot read the secret {self.secret_name}: {code or type(exc).__name__}") from None
        value = (answer.get("SecretString") or "").strip()
        self.secret(value)
        return value, answer.get("VersionId")

    def lookup(self, secret_id: str) -> dict[str, Any] | None:
        """Vault's view of a secret ID of the broker's role (accessor, times), or None when
        it is not one (unknown, destroyed, expired)."""
        if not secret_id:
            return None
        status, doc = self.vault.call("POST", f"{self.base}/secret-id/lookup", {"secret_id": secret_id})
        if status == 200 and (doc or {}).get("data"):
            return doc["data"]
        if status in (200, 204, 400, 404):
            return None
        raise VaultError(f"Vault refused to look up the broker's secret ID: HTTP {status}", status=status)

    def lookup_accessor(self, accessor: str) -> dict[str, Any] | None:
        status, doc = self.vault.call("POST", f"{self.base}/secret-id-accessor/lookup",
                                      {"secret_id_accessor": accessor})
        if status == 200 and isinstance((doc or {}).get("data"), dict) and "error" not in doc["data"]:
            return doc["data"]
        text = json.dumps(doc or {})
        if status == 404 or "failed to find accessor entry" in text:
            return None
        raise VaultError(f"Vault refused to look up the secret ID accessor {accessor}: HTTP {status}", status=status)

    def accessors(self) -> list[str]:
        status, doc = self.vault.call("LIST", f"{self.base}/secret-id")
        if status == 404:
            return []
        if status != 200:
            raise VaultError(f"Vault refused to list the secret IDs of {self.role}: HTTP {status}", status=status)
        return list(((doc or {}).get("data") or {}).get("keys") or [])

    def _bound_cidrs(self) -> list[str]:
        role = self.vault.read(self.base)
        if role is None:
            raise UsageError(f"no AppRole {self.role} at auth/{self.mount}: run `broker vault setup` first")
        return [c for key in ("secret_id_bound_cidrs", "token_bound_cidrs", "bound_cidr_list")
                for c in (role.get(key) or [])]

    # ---- phase 1 ---------------------------------------------------------------------------

    def rotate(self, *, grace: int, keep_old: bool = False, dry_run: bool = False,
               finish_hint: str = "broker vault rotate-broker-secret --finish {accessor}") -> Rotation:
        result = Rotation(self.secret_name, dry_run, grace_seconds=grace)
        cidrs = self._bound_cidrs()
        old_secret_id, _ = self.stored()
        old = self.lookup(old_secret_id)
        result.old_accessor = old.get("secret_id_accessor") if old else None
        if old:
            self.say(f"the stored secret ID in {self.secret_name}: accessor {result.old_accessor}, "
                     f"created {old.get('creation_time', '?')}, expires {_expiry(old)}")
        else:
            self.say(f"the value stored in {self.secret_name} is not a valid secret ID of {self.role}: "
                     "there is no old one to destroy")
        result.other_accessors = [a for a in self.accessors() if a != result.old_accessor]
        if result.other_accessors:
            self.say(f"other secret IDs of {self.role} (an unfinished rotation?), left alone: accessors "
                     f"{', '.join(result.other_accessors)}; --finish ACCESSOR destroys one")
        check = f"a lookup (the role binds CIDRs {','.join(cidrs)}: a login from here would be refused)" \
            if cidrs else "a login"
        if dry_run:
            self.say(f"would: create a secret ID for {self.role} (response-wrapped), check it with {check}, "
                     f"store it in {self.secret_name}")
            if result.old_accessor:
                then = ("keep the old one; destroy it later with --finish" if keep_old
                        else f"wait {describe_seconds(grace)}, then destroy" if grace else "then destroy")
                self.say(f"would: {then} the old one (accessor {result.old_accessor})")
            return result

        new_secret_id, new_accessor = mint_secret_id(
            self.vault, self.mount, self.role,
            metadata={"created_by": CREATED_BY, "replaces": result.old_accessor or "none"})
        self.secret(new_secret_id)
        result.new_accessor = new_accessor
        self.say(f"created a secret ID for {self.role} (accessor {new_accessor}; response-wrapped, "
                 "creation path checked, unwrapped here)")
        try:
            self._verify(new_secret_id, cidrs)
            self.say(f"checked the new secret ID with {check}")
            result.stored_version = self._store(new_secret_id)
        except BaseException:
            self._destroy(new_accessor, quiet=True)  # useless unstored: take it back
            raise
        back, _ = self.stored()
        if back != new_secret_id:  # stored, but not what the function would read: keep both, stop
            raise VaultSetupAwsError(f"{self.secret_name} does not return the value just stored (version "
                                     f"{result.stored_version}): both secret IDs are kept (new accessor "
                                     f"{new_accessor}, old {result.old_accessor}); check the secret's versions")
        self.say(f"stored it in {self.secret_name} (version {result.stored_version}; the old value is "
                 "AWSPREVIOUS): new execution environments of the function use it from now on")
        if result.old_accessor is None:
            return result
        result.finish_command = finish_hint.format(accessor=result.old_accessor)
        if keep_old:
            self.say(f"kept the old secret ID (accessor {result.old_accessor}); in {describe_seconds(grace)} or "
                     f"later: {result.finish_command}")
            return result
        if grace:
            until = datetime.fromtimestamp(self.now() + grace, timezone.utc).strftime("%H:%M:%SZ")
            self.say(f"waiting {describe_seconds(grace)} (until {until}) before destroying the old one: warm "
                     "environments keep it meanwhile. Interrupt now and the old one stays; destroy it "
                     f"later with: {result.finish_command}")
            try:
                self.sleep(grace)
            except KeyboardInterrupt:
                self.say(f"interrupted: the new secret ID is stored, the old one (accessor {result.old_accessor}) "
                         f"is kept; destroy it with: {result.finish_command}")
                raise
        self._finish(result, old_secret_id=old_secret_id)
        return result

    def _verify(self, secret_id: str, cidrs: list[str]) -> None:
        if cidrs:
            if not self.lookup(secret_id):
                raise VaultError("Vault does not know the new secret ID: not storing it")
            return
        role_id = (self.vault.read(f"{self.base}/role-id") or {}).get("role_id")
        if not role_id:
            raise VaultError(f"cannot read the role ID of {self.role}")
        self.secret(role_id)
        status, doc = self.vault.call("POST", f"auth/{self.mount}/login", {"role_id": role_id, "secret_id": secret_id})
        token = ((doc or {}).get("auth") or {}).get("client_token")
        if status != 200 or not token:
            raise VaultError(f"the new secret ID does not log in (HTTP {status}): not storing it", status=status)
        self.secret(token)
        self.vault.call("POST", "auth/token/revoke-self", {}, token=token)

    def _store(self, secret_id: str) -> str | None:
        try:
            put = self.sm.put_secret_value(SecretId=self.secret_name, SecretString=secret_id)
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            raise VaultSetupAwsError(f"cannot store the new secret ID in {self.secret_name}: "
                                     f"{code or type(exc).__name__}; it was destroyed, the old one is unchanged") from None
        return put.get("VersionId")

    # ---- phase 2 ---------------------------------------------------------------------------

    def finish(self, old_accessor: str, *, grace: int, dry_run: bool = False) -> Rotation:
        result = Rotation(self.secret_name, dry_run, old_accessor=old_accessor, grace_seconds=grace)
        if self.lookup_accessor(old_accessor) is None:
            self.say(f"Vault knows no secret ID of {self.role} with accessor {old_accessor} "
                     "(destroyed already, or expired): nothing to do")
            result.old_destroyed = True
            return result
        stored_secret_id, _ = self.stored()
        stored = self._check_stored(stored_secret_id, old_accessor)
        result.new_accessor = stored.get("secret_id_accessor")
        age = self.now() - _epoch(stored.get("creation_time"))
        if age < grace:
            raise UsageError(f"the stored secret ID (accessor {result.new_accessor}) was created "
                             f"{describe_seconds(max(age, 0))} ago: wait {describe_seconds(grace - age)} more "
                             f"before destroying the old one (or pass --grace with a shorter period)")
        if dry_run:
            self.say(f"would: destroy the old secret ID (accessor {old_accessor}); the stored one "
                     f"(accessor {result.new_accessor}) is valid and {describe_seconds(max(age, 0))} old")
            return result
        self._finish(result, old_secret_id=None)
        return result

    def _check_stored(self, stored_secret_id: str, old_accessor: str) -> dict[str, Any]:
        stored = self.lookup(stored_secret_id)
        if stored is None:
            raise UsageError(f"the value in {self.secret_name} is not a valid secret ID of {self.role}: "
                             "destroying the old one would leave the broker without any; not destroying it "
                             "(`broker vault setup` stores a valid one)")
        if stored.get("secret_id_accessor") == old_accessor:
            raise UsageError(f"accessor {old_accessor} is the secret ID stored in {self.secret_name}, the one the "
                             "broker uses: not destroying it (rotate first)")
        return stored

    def _finish(self, result: Rotation, *, old_secret_id: str | None) -> None:
        # Whatever happened meanwhile (another rotation, a rollback to AWSPREVIOUS), destroy the
        # old one only if what is stored now is valid and another secret ID.
        stored_secret_id, _ = self.stored()
        assert result.old_accessor
        stored = self._check_stored(stored_secret_id, result.old_accessor)
        self._destroy(result.old_accessor)
        if self.lookup_accessor(result.old_accessor) is not None or (old_secret_id and self.lookup(old_secret_id)):
            raise VaultError(f"the old secret ID (accessor {result.old_accessor}) is still known to Vault after "
                             "destroying it")
        result.old_destroyed = True
        self.say(f"destroyed the old secret ID (accessor {result.old_accessor}); the stored one (accessor "
                 f"{stored.get('secret_id_accessor')}) is valid: warm environments switch to it at their next "
                 "login (one refused login, one Secrets Manager read)")

    def _destroy(self, accessor: str, *, quiet: bool = False) -> None:
        status, doc = self.vault.call("POST", f"{self.base}/secret-id-accessor/destroy",
                                      {"secret_id_accessor": accessor})
        if status in (200, 204) or quiet:
            return
        if "failed to find accessor entry" in json.dumps(doc or {}):
            return  # gone already
        raise VaultError(f"Vault refused to destroy the secret ID with accessor {accessor}: HTTP {status}",
                         status=status)


def _expiry(data: dict[str, Any]) -> str:
    expires = data.get("expiration_time") or ""
    return "never" if not expires or expires.startswith("0001-") else expires


def _epoch(text: str | None) -> float:
    """Seconds since the epoch of Vault's RFC 3339 times (nanoseconds, Z or an offset)."""
    if not text:
        return 0.0
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text.strip())
    if not m:
        return 0.0
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}").timestamp()
