"""The environment of a process on a machine of the local stack: an EC2 instance, an ECS
task, a GCE instance, or a person with an IAM role. The demo and ``python -m devstack
as-instance|as-task|as-gce|as-role|as-operator`` both build it here.

What stands in for the real machine:
  - EC2 instance: its instance profile role's credentials (session name = the instance
    ID, as EC2 makes them) in AWS_ACCESS_KEY_ID/..., IMDS disabled (no 169.254.169.254
    here). The credentials last one hour, as EC2's do; a new call gives new ones.
  - ECS task: the task's simulated ECS agent (devstack/ecs_sim.py):
    ECS_CONTAINER_METADATA_URI_V4 and AWS_CONTAINER_CREDENTIALS_FULL_URI.
  - GCE instance: BROKER_GCP_METADATA_URL, its metadata server on the simulated Google.
Plus what the image would carry: BROKER_URL, BROKER_SERVER_ID, VAULT_ADDR and, for a stack
in a Vault namespace, VAULT_NAMESPACE (the client refuses an answer naming another one).
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Mapping

from .aws import REGION

if TYPE_CHECKING:
    from .stack import Stack

# Variables of the caller's environment that would change what the client finds or
# where it goes: left out of a machine's environment (and unset by the export lines).
CLEARED_PREFIXES = ("AWS_", "BROKER_", "ECS_", "GOOGLE_", "GCE_", "CLOUDSDK_", "VAULT_", "BAO_")
ALWAYS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_EXECUTION_ENV", "AWS_ENDPOINT_URL",
                "ECS_CONTAINER_METADATA_URI", "ECS_CONTAINER_METADATA_URI_V4", "BROKER_GCP_METADATA_URL",
                "BROKER_CLOUD", "GCE_METADATA_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "VAULT_TOKEN")
# ... but not these: trust settings of this machine's network, not identities
KEPT = ("AWS_CA_BUNDLE", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "VAULT_CACERT")


def _cleared(name: str) -> bool:
    return name.startswith(CLEARED_PREFIXES) and name not in KEPT


def client_env(stack: "Stack") -> dict[str, str]:
    """What every machine's image carries to reach the broker, and no credential.
    The shared AWS config files are pointed at /dev/null so a developer's own
    ~/.aws never leaks into the machine."""
    env = {
        "BROKER_SERVER_ID": stack.server_id,
        "VAULT_ADDR": stack.vault_addr,
        "AWS_EC2_METADATA_DISABLED": "true",  # no IMDS on this laptop: the environment stands in for it
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    if stack.vault_namespace:
        env["VAULT_NAMESPACE"] = stack.vault_namespace
    if stack.broker_url:
        env["BROKER_URL"] = stack.broker_url
    return env


def credentials_env(creds: Mapping[str, str], region: str = REGION) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": creds["access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
           "AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if creds.get("session_token"):
        env["AWS_SESSION_TOKEN"] = creds["session_token"]
    return env


def instance_env(stack: "Stack", instance_id: str, account: str | int | None = None) -> dict[str, str]:
    """A process on EC2 instance ``instance_id``: its instance role's session."""
    return {**client_env(stack), **credentials_env(stack.instance_credentials(instance_id, account))}


def task_env(stack: "Stack", task_arn: str) -> dict[str, str]:
    """A process in ECS task ``task_arn``: its (simulated) agent's endpoints."""
    return {**client_env(stack), **stack.task_metadata(task_arn).env}


def gce_env(stack: "Stack", name: str, project: str | None = None, zone: str | None = None) -> dict[str, str]:
    """A process on GCE instance ``name``: its metadata server."""
    kwargs = {k: v for k, v in (("project", project), ("zone", zone)) if v}
    return {**client_env(stack), "BROKER_GCP_METADATA_URL": stack.gcp_metadata_url_for(name, **kwargs)}


def role_env(stack: "Stack", role: str, session: str, account: str | int | None = None) -> dict[str, str]:
    """A person (or a CI job) signed in with an IAM role, e.g. the security team."""
    return {**client_env(stack), **credentials_env(stack.assume(role, session, account))}


def operator_env(stack: "Stack") -> dict[str, str]:
    """The operator who runs ``broker vault setup``: Vault's root token, the AWS admin's
    keys, and moto as the AWS endpoint (botocore reads AWS_ENDPOINT_URL); VAULT_NAMESPACE
    for a stack in a namespace (setup then works inside it)."""
    env = {"VAULT_ADDR": stack.vault_addr, "VAULT_TOKEN": stack.vault_root_token,
           "AWS_ENDPOINT_URL": stack.aws_endpoint_url,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           **credentials_env(stack.admin_keys.as_dict())}
    if stack.vault_namespace:
        env["VAULT_NAMESPACE"] = stack.vault_namespace
    return env


def process_env(machine: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the cleared variables,
    plus the machine's."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not _cleared(k)}
    env.update(machine)
    return env


def export_lines(machine: Mapping[str, str], comments: tuple[str, ...] = ()) -> str:
    """A shell snippet for ``eval "$(...)"``: comments, ``unset`` of what would interfere,
    then ``export K=V`` (quoted) for the machine's environment."""
    unset = sorted((set(ALWAYS_UNSET) | {k for k in os.environ if _cleared(k)}) - set(machine))
    lines = [f"# {c}" for c in comments]
    lines.append("unset " + " ".join(unset))
    lines += [f"export {k}={shlex.quote(v)}" for k, v in machine.items()]
    return "\n".join(lines) + "\n"
