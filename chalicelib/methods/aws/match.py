"""`[rule.aws]`: the conditions an AWS caller's facts must meet. Pure; shared with the client.

    accounts = ["123456789012"]               exact account IDs (required)
    principal_arns = ["arn:aws:iam::...:role/x"]  globs on the canonical IAM ARN (required)
    require_instance = true                   a verified running EC2 instance
      instance_tags = { k = "glob" }          its tags (read by the broker)
      require_imdsv2 = true                   its metadata service answers IMDSv2 only
    require_task = true                       a verified RUNNING ECS task
      ecs_clusters / ecs_services / task_families = ["glob"]
      task_tags = { k = "glob" }
    role_tags = { k = "glob" }                the caller's IAM role's tags
    allow_shared_role_trust = false           honour instance/task claims of a role that
                                              principals other than EC2/ECS may assume
"""

import re
from dataclasses import dataclass

from ...policy.fields import (RulesError, any_glob, boolean, glob_mismatch, only_keys, string_list, tag_mismatches,
                              tag_table)
from .model import AwsFacts

_ACCOUNT = re.compile(r"^\d{12}$")
_FIELDS = {"accounts", "principal_arns", "require_instance", "instance_tags", "role_tags", "require_imdsv2",
           "require_task", "ecs_clusters", "ecs_services", "task_families", "task_tags", "allow_shared_role_trust"}


@dataclass(frozen=True)
class AwsConditions:
    accounts: tuple
    principal_arns: tuple
    require_instance: bool = False
    instance_tags: tuple = ()  # ((key, value glob), ...)
    role_tags: tuple = ()
    require_imdsv2: bool = False
    require_task: bool = False
    ecs_clusters: tuple = ()
    ecs_services: tuple = ()
    task_families: tuple = ()
    task_tags: tuple = ()
    allow_shared_role_trust: bool = False

    @property
    def needs_reader(self):
        """Does this rule need facts only a reader in the caller's account can give?"""
        return bool(self.require_instance or self.require_task or self.role_tags)


_SECURITY_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}):(role|user)/([\w+=,.@*?-]{1,128})$")


def parse_security_principal(p, where):
    """One entry of [security] principal_arns (this method proves the security team:
    chalicelib/admin_auth.py): an exact IAM role or user ARN (without a path: the broker
    compares the caller's canonical ARN, which has none), or a role ARN whose name, and
    only its name, holds a glob (`*`, `?`) in a literal account:
    `arn:aws:iam::123456789012:role/sec-*`."""
    if not p.startswith("arn:") or p.count(":") < 5:
        raise RulesError(f"{where}: {p!r} is not an IAM ARN (glob)")
    if ":assumed-role/" in p or p.startswith("arn:aws:sts:"):
        raise RulesError(f"{where}: {p!r} must be an IAM role or user ARN "
                         "(arn:aws:iam::ACCOUNT:role/NAME), not an STS session ARN")
    parts = p.split(":", 5)
    if any(c in parts[4] for c in "*?[") or parts[4] == "" or parts[5] in ("*", "role/*", "user/*") \
            or any(c in parts[5].split("/", 1)[0] for c in "*?["):
        raise RulesError(f"{where}: {p!r} is too broad: name the account and the role or user")
    m = _SECURITY_ARN.match(p)
    if not m:
        raise RulesError(f"{where}: {p!r} must be arn:aws:iam::ACCOUNT:role/NAME or "
                         "arn:aws:iam::ACCOUNT:user/NAME, without a path (a glob only in a role's name)")
    kind, name = m.group(3), m.group(4)
    if kind == "user" and any(c in name for c in "*?"):
        raise RulesError(f"{where}: {p!r}: a user ARN must be exact (a glob only in a role's name)")
    if name.strip("*?") == "":
        raise RulesError(f"{where}: {p!r} is too broad: name the account and the role or user")


def parse(raw, where):
    only_keys(raw, _FIELDS, where)
    accounts = string_list(raw, "accounts", where, required=True)
    for account in accounts:
        if not _ACCOUNT.match(account):
            raise RulesError(f"{where}.accounts: {account!r} is not a 12-digit account ID")
    principals = string_list(raw, "principal_arns", where, required=True)
    for p in principals:
        if not p.startswith("arn:"):
            raise RulesError(f"{where}.principal_arns: {p!r} is not an ARN (glob)")
    c = AwsConditions(
        accounts=accounts, principal_arns=principals,
        require_instance=boolean(raw, "require_instance", where),
        instance_tags=tag_table(raw, "instance_tags", where),
        role_tags=tag_table(raw, "role_tags", where),
        require_imdsv2=boolean(raw, "require_imdsv2", where),
        require_task=boolean(raw, "require_task", where),
        ecs_clusters=string_list(raw, "ecs_clusters", where),
        ecs_services=string_list(raw, "ecs_services", where),
        task_families=string_list(raw, "task_families", where),
        task_tags=tag_table(raw, "task_tags", where),
        allow_shared_role_trust=boolean(raw, "allow_shared_role_trust", where),
    )
    for key in ("instance_tags", "require_imdsv2"):
        if getattr(c, key) and not c.require_instance:
            raise RulesError(f"{where}.{key}: needs require_instance = true")
    for key in ("ecs_clusters", "ecs_services", "task_families", "task_tags"):
        if getattr(c, key) and not c.require_task:
            raise RulesError(f"{where}.{key}: needs require_task = true")
    if c.require_instance and c.require_task:
        raise RulesError(f"{where}: require_instance and require_task can't both hold (a caller is one or the other)")
    return c


def mismatches(c, facts):
    reasons = []
    if facts.account not in c.accounts:
        reasons.append(f"account {facts.account} is not one of {', '.join(c.accounts)}")
    if not any_glob(facts.canonical_arn, c.principal_arns):
        reasons.append(f"principal {facts.canonical_arn} matches none of {', '.join(c.principal_arns)}")
    if facts.unreadable_account and c.needs_reader:
        reasons.append(f"account {facts.account} has no reader role configured (BROKER_ACCOUNT_READERS): "
                       "the broker can't read its instances, tasks or role tags")
        return reasons
    instance, task = facts.instance, facts.task
    if facts.claim_trust_error and (instance or task) and not c.allow_shared_role_trust:
        reasons.append(f"the session's claim is refused: {facts.claim_trust_error}")
        instance = task = None
    if c.require_instance:
        if instance is None:
            reasons.append("caller is not a verified running EC2 instance")
        else:
            if c.require_imdsv2 and not instance.imdsv2_required:
                reasons.append(f"instance {instance.instance_id} still answers IMDSv1 (HttpTokens is not required)")
            reasons += tag_mismatches("instance tag", instance.tags, c.instance_tags)
    if c.require_task:
        if task is None:
            reasons.append("caller is not a verified running ECS task")
        else:
            reasons += glob_mismatch("cluster", task.cluster, c.ecs_clusters)
            if c.ecs_services and task.service is None:
                reasons.append("task belongs to no service")
            elif task.service is not None:
                reasons += glob_mismatch("service", task.service, c.ecs_services)
            reasons += glob_mismatch("task family", task.family, c.task_families)
            reasons += tag_mismatches("task tag", task.tags, c.task_tags)
    if c.role_tags:
        if facts.role_name is None:
            reasons.append("caller is not a role, so it has no role tags")
        else:
            reasons += tag_mismatches("role tag", facts.role_tags, c.role_tags)
    return reasons


def used_facts(data, conditions):
    """Keep only the tag keys some rule names (the audit record holds no other tags)."""
    keys = {kind: {k for c in conditions for k, _ in getattr(c, kind)} for kind in
            ("instance_tags", "role_tags", "task_tags")}
    if data.get("instance"):
        data["instance"]["tags"] = {k: v for k, v in data["instance"]["tags"].items() if k in keys["instance_tags"]}
    if data.get("task"):
        data["task"]["tags"] = {k: v for k, v in data["task"]["tags"].items() if k in keys["task_tags"]}
    data["role_tags"] = {k: v for k, v in data.get("role_tags", {}).items() if k in keys["role_tags"]}
    return data


def warnings(c):
    if c.allow_shared_role_trust:
        return ["allow_shared_role_trust = true: any principal allowed to assume the role can name a session "
                "after one of its instances or tasks and be granted as that machine"]
    return []


def literal_clusters(conditions):
    """Cluster names (no glob) the rules name: where a task-shaped session is looked for."""
    return {name for c in conditions for name in c.ecs_clusters if not any(ch in name for ch in "*?[")}


def facts_from_dict(data):
    return AwsFacts.from_dict(data)
