"""Facts about a verified AWS caller, read in the caller's own account.

Parse, validate, execute, check (as Teleport's join_iam.go): the claims the session
makes (an EC2 instance ID as session name, an ECS task ID, an `ecs_task_arn`) are
checked offline first, then read in parallel through the account's reader
(chalicelib/methods/aws/readers.py): role tags, the role's trust policy, the
instance (every configured region at once) or the task.
"""

import functools
import threading
import time

from ...aws_calls import answer_part, try_call
from ...concurrency import Ready, raise_first, settle
from .arn import parse_principal_arn
from .ecs import TaskClaims
from .model import AwsFacts, InstanceFacts
from ...stores.trust_history import MAX_SESSION_SECONDS
from .trust import (EC2_SERVICE, ECS_TASKS_SERVICE, lets_others_assume, max_session_seconds, only_service_may_assume,
                    recently_open)

_NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


class ShortCache:
    """Values kept for a few seconds (role tags, trust policies): a change in IAM is
    seen within that time, and a boot storm of one role reads IAM once per window."""

    def __init__(self, seconds, clock=time.monotonic, size=1024):
        self._seconds = seconds
        self._clock = clock
        self._size = size
        self._items = {}
        self._lock = threading.Lock()

    def get(self, key, load):
        if self._seconds <= 0:
            return load()
        ready = self.ready(key)
        if ready is not None:
            return ready.value
        now = self._clock()
        value = load()
        with self._lock:
            if len(self._items) >= self._size:
                self._items.clear()
            self._items[key] = (now + self._seconds, value)
        return value

    def ready(self, key):
        """Ready(value) while `key` is kept, else None."""
        if self._seconds <= 0:
            return None
        with self._lock:
            hit = self._items.get(key)
        return Ready(hit[1]) if hit is not None and hit[0] > self._clock() else None

    def call(self, key, load):
        """`get(key, load)` as a call for `settle`: Ready while `key` is kept (no thread)."""
        return self.ready(key) or (lambda: self.get(key, load))


class AwsFactsReader:
    def __init__(self, readers, regions, task_clusters=lambda: (), cache_seconds=5.0, trust_history=None,
                 clock=time.time):
        self._readers = readers  # AccountReaders
        # stores/trust_history (None: no quarantine table, nothing remembered): when each
        # role's trust policy last let others assume it, for claims made under it
        self._history = trust_history
        self._clock = clock
        self._regions = tuple(regions)
        self._cache = ShortCache(cache_seconds)
        self._tasks = TaskClaims(regions, task_clusters)

    def read(self, caller, login):
        arn = parse_principal_arn(caller.principal)
        base = dict(account=arn.account, principal_arn=caller.principal, canonical_arn=arn.canonical_arn,
                    principal_type=arn.kind, role_name=arn.role_name, session_name=arn.session_name)
        task_arn = getattr(login, "ecs_task_arn", None)
        offline_error = self._tasks.check_offline(arn, task_arn)
        if offline_error:
            return AwsFacts(**base, claim_error=offline_error)
        clients = self._readers.for_account(arn.account, arn.partition)
        if clients is None:
            # SECURITY: never read another account's resources for this caller (a same-named
            # role or instance there, or in another partition's account of the same digits,
            # is not the caller's).
            return AwsFacts(**base, unreadable_account=True)

        claim_kind = "ec2" if arn.session_instance_id else ("ecs" if arn.session_task_id or task_arn else None)
        if claim_kind == "ec2":
            claim = functools.partial(self._verify_instance, clients, arn)
        elif claim_kind == "ecs":
            claim = functools.partial(self._tasks.verify, clients, arn, task_arn)
        else:
            claim = Ready((None, None))
        # The claim first: settle runs it in this thread, and it overlaps calls of its own
        # (regions, the profile guess), which only a thread outside the pool may wait on.
        # What the cache holds is at hand (Ready); only real reads go to the pool.
        # One GetRole gives the role's tags and its trust policy (IAM's rate limits are per
        # account and low: one read per role and cache window, not two).
        # A claim also reads when the role's trust policy was last seen letting others assume
        # it (a session made then outlives the policy): beside the other reads, and kept for
        # the cache window like the role's own GetRole (a boot storm of one role reads it
        # once per window; nothing here is fresher than the trust policy it goes with).
        history = (self._cache.call(("trust-history", arn.canonical_arn), lambda: self._history.get(arn.canonical_arn))
                   if claim_kind and self._history else Ready(None))
        claimed, role, sighting = settle(
            claim,
            self._cache.call(("role", clients.account, arn.role_name),
                             lambda: self._read_role(clients, arn)) if arn.role_name else Ready(({}, None, 0, 0)),
            history)
        # IAM's error first
        (role_tags, trust_document, max_session, read_at), (machine, claim_error), sighting = raise_first(
            [role, claimed, sighting])
        trust_error = self._trust(trust_document, arn.role_name, claim_kind) if claim_kind else None
        if trust_error is None and claim_kind and machine is not None:
            trust_error = self._trust_since(arn, sighting, read_at, max_session)
        if claim_error:
            return AwsFacts(**base, role_tags=role_tags, claim_error=claim_error)
        return AwsFacts(**base, role_tags=role_tags,
                        instance=machine if claim_kind == "ec2" else None,
                        task=machine if claim_kind == "ecs" else None,
                        claim_trust_error=trust_error if machine is not None else None)

    # ---- IAM ------------------------------------------------------------------------------

    def _read_role(self, clients, arn):
        """(tags, trust policy document, MaxSessionDuration, when it was read) of the caller's
        role, from one GetRole; ({}, None, ...) when the role was deleted after the session
        began (no tags, no trust). A policy that lets others assume the role is remembered
        (stores/trust_history) whichever caller's read saw it."""
        read_at = self._clock()
        page, missing = try_call("iam", ("NoSuchEntity",), clients.client("iam").get_role, RoleName=arn.role_name)
        if missing:
            return {}, None, MAX_SESSION_SECONDS, read_at
        role = answer_part("iam", page, "Role")
        answer_part("iam", role, "Arn", str)
        document = role.get("AssumeRolePolicyDocument")
        if self._history is not None and lets_others_assume(document):
            self._history.saw_open(arn.canonical_arn, read_at)
        return ({t["Key"]: t["Value"] for t in role.get("Tags", [])}, document, max_session_seconds(role), read_at)

    def _trust_since(self, arn, sighting, read_at, max_session):
        """Why a claim of a role whose trust policy is service-only now must still wait (a
        session made under a more open one may be alive), else None."""
        reason, closed = recently_open(sighting, read_at, self._clock(), max_session)
        if closed is not None:
            self._history.saw_closed(arn.canonical_arn, closed)
        return f"role {arn.role_name} can't vouch for its session name: {reason}" if reason else None

    @staticmethod
    def _trust(document, role_name, claim_kind):
        """None when only EC2 (or ECS) may assume the role, else why the claim can't be trusted."""
        service = EC2_SERVICE if claim_kind == "ec2" else ECS_TASKS_SERVICE
        if document is None:
            return f"role {role_name} no longer exists"
        problem = only_service_may_assume(document, service)
        return f"role {role_name} can't vouch for its session name: {problem}" if problem else None

    # ---- EC2 ------------------------------------------------------------------------------

    def _verify_instance(self, clients, arn):
        """(InstanceFacts, None) when the session's instance claim holds, else (None, reason)."""
        instance_id = arn.session_instance_id
        # An instance profile is named like its role more often than not (the console's
        # convention, and many templates'): with a cold cache, that one is read beside
        # DescribeInstances, so the membership check below costs no step of its own. Only a
        # guess: the check reads the profile the instance really has (a wrong guess costs
        # one read more, and its errors are nobody's).
        (found, find_error), _ = settle(lambda: self._find_instance(clients, instance_id),
                                        self._profile_guess_call(clients, arn.role_name))
        if find_error is not None:
            raise find_error
        if found is None:
            return None, (f"session names instance {instance_id}, which does not exist in account "
                          f"{arn.account} in the regions the broker reads")
        region, owner, raw = found
        if owner != arn.account:
            return None, f"instance {instance_id} belongs to another account"
        state = raw.get("State", {}).get("Name", "unknown")
        if state != "running":
            return None, f"instance {instance_id} is {state}, not running"
        profile_arn = (raw.get("IamInstanceProfile") or {}).get("Arn")
        if not profile_arn:
            return None, f"instance {instance_id} has no instance profile"
        if not self._profile_holds_role(clients, profile_arn, arn):
            return None, f"instance {instance_id}'s instance profile does not hold role {arn.role_name}"
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        options = raw.get("MetadataOptions") or {}
        imdsv2 = options.get("HttpTokens") == "required" or options.get("HttpEndpoint") == "disabled"
        return InstanceFacts(instance_id, region, state, profile_arn, tags, imdsv2), None

    def _find_instance(self, clients, instance_id):
        """(region, owner, instance) from the first region that has it; every region at once."""
        def lookup(region):
            ec2 = clients.client("ec2", region)
            page, missing = try_call("ec2", _NOT_FOUND, ec2.describe_instances, InstanceIds=[instance_id])
            if missing:
                return None
            for reservation in answer_part("ec2", page, "Reservations", list):
                for inst in reservation.get("Instances", []):
                    if inst.get("InstanceId") == instance_id:
                        return region, reservation.get("OwnerId"), inst
            return None

        found = raise_first(settle(*[(lambda r=r: lookup(r)) for r in self._regions]))
        return next((f for f in found if f is not None), None)

    def _profile_guess_call(self, clients, role_name):
        if not role_name:
            return Ready(None)
        return self._cache.call(("profile", clients.account, role_name), lambda: self._profile_roles(clients, role_name))

    def _profile_holds_role(self, clients, profile_arn, arn):
        # arn:aws:iam::ACCOUNT:instance-profile/PATH/NAME
        parts = profile_arn.split(":", 5)
        if len(parts) != 6 or parts[4] != arn.account:
            return False
        name = parts[5].rsplit("/", 1)[-1]
        # Cached for seconds like role tags: a boot storm of one role reads its profile once.
        roles = self._cache.get(("profile", clients.account, name), lambda: self._profile_roles(clients, name))
        return any(r.get("RoleName") == arn.role_name and r.get("Arn", "").split(":")[4:5] == [arn.account]
                   for r in roles)

    @staticmethod
    def _profile_roles(clients, name):
        page, missing = try_call("iam", ("NoSuchEntity",), clients.client("iam").get_instance_profile,
                                 InstanceProfileName=name)
        if missing:
            return ()
        return tuple(answer_part("iam", answer_part("iam", page, "InstanceProfile"), "Roles", list))
