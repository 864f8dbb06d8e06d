"""`[rule.gcp]`: the conditions a GCP caller's facts must meet. Pure; shared with the client.

    projects = ["glob"]               the instance's or service account's project (required)
    service_accounts = ["glob"]       the token's service account email
    require_instance = true           a verified live GCE instance
      zones / regions / instance_names = ["glob"]
      labels = { k = "glob" }         its labels (read by the broker from the Compute API)
"""

from dataclasses import dataclass

from ...policy.fields import RulesError, any_glob, boolean, glob_mismatch, only_keys, string_list, tag_mismatches, \
    tag_table
from .model import GcpFacts

_FIELDS = {"projects", "service_accounts", "require_instance", "zones", "regions", "instance_names", "labels"}


@dataclass(frozen=True)
class GcpConditions:
    projects: tuple  # globs on the project ID
    service_accounts: tuple = ()  # globs on the token's service account email
    require_instance: bool = False
    zones: tuple = ()
    regions: tuple = ()
    instance_names: tuple = ()
    labels: tuple = ()  # ((key, value glob), ...)


def parse(raw, where):
    only_keys(raw, _FIELDS, where)
    c = GcpConditions(
        projects=string_list(raw, "projects", where, required=True),
        service_accounts=string_list(raw, "service_accounts", where),
        require_instance=boolean(raw, "require_instance", where),
        zones=string_list(raw, "zones", where),
        regions=string_list(raw, "regions", where),
        instance_names=string_list(raw, "instance_names", where),
        labels=tag_table(raw, "labels", where),
    )
    for key in ("zones", "regions", "instance_names", "labels"):
        if getattr(c, key) and not c.require_instance:
            raise RulesError(f"{where}.{key}: needs require_instance = true")
    return c


def mismatches(c, facts):
    reasons = []
    if facts.project_id is None or not any_glob(facts.project_id, c.projects):
        reasons.append(f"project {facts.project_id} matches none of {', '.join(c.projects)}")
    reasons += glob_mismatch("service account", facts.email, c.service_accounts)
    instance = facts.instance
    if c.require_instance and instance is None:
        reasons.append("caller is not a verified running GCE instance")
    if instance is not None:
        reasons += glob_mismatch("zone", instance.zone, c.zones)
        reasons += glob_mismatch("region", instance.region, c.regions)
        reasons += glob_mismatch("instance name", instance.name, c.instance_names)
    if c.labels:
        reasons += tag_mismatches("label", instance.labels if instance else {}, c.labels)
    return reasons


def used_facts(data, conditions):
    """Keep only the label keys some rule names."""
    keys = {k for c in conditions for k, _ in c.labels}
    if data.get("instance"):
        data["instance"]["labels"] = {k: v for k, v in data["instance"]["labels"].items() if k in keys}
    return data


def warnings(c):
    return []


def facts_from_dict(data):
    return GcpFacts.from_dict(data)
