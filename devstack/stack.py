"""The whole local stack: OpenBao + moto (SigV4 on) + seed (+ ``chalice local``)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping

import boto3
import hvac
import requests

from . import aws, gcp
from .aws import ACCOUNT_ID, REGION, SECOND_ACCOUNT_ID, AwsSeed, Keys, MotoServer
from .broker import PROJECT_DIR, ChaliceLocal
from .ecs import TaskMetadataServer
from .procs import StackError, bypass_proxy_for_loopback, stop_all, wait_until
from .vault import ROOT_TOKEN, OpenBaoServer, VaultSeed, namespace_path, seed_vault

SERVER_ID = "secret-zero-broker.local"
STS_ENDPOINTS = "https://sts.amazonaws.com"


class Stack:
    """A running local stack. Build it with :meth:`Stack.start`; always :meth:`stop` it
    (it is a context manager, and in-process stacks also stop at interpreter exit)."""

    def __init__(self, workdir: Path | str, *, detached: bool = False,
                 project_dir: Path | str = PROJECT_DIR, moto_workaround: bool = True,
                 vault_namespace: str | None = None):
        bypass_proxy_for_loopback()  # our own clients talk to 127.0.0.1 only
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.project_dir = Path(project_dir).resolve()
        self.detached = detached
        self.moto_workaround = moto_workaround
        # Every Vault object of the stack (AppRoles, policies, KV) lives in this namespace (None:
        # the root namespace); the broker gets it as BROKER_VAULT_NAMESPACE, machines as VAULT_NAMESPACE.
        self.vault_namespace = namespace_path(vault_namespace)
        self.openbao = OpenBaoServer(self.workdir, detached=detached)
        self.moto = MotoServer(self.workdir, detached=detached)
        self.google = gcp.GoogleSim(self.workdir, detached=detached)
        self.broker: ChaliceLocal | None = None
        self.aws_seed: AwsSeed | None = None
        self.vault_seed: VaultSeed | None = None
        self.gcp_seed: dict | None = None  # the seeded GCE instance's Compute JSON
        self.startup_seconds: float | None = None
        self._attached_broker_url: str | None = None  # Stack.attach: the running broker's URL
        self._clients: dict[tuple, Any] = {}
        self._gcp_minted: dict[tuple, int] = {}  # (instance, audience, format) -> second of the last token
        self.ecs_seed: dict[str, dict[str, str]] = {}  # account -> cluster, task definition, container instance
        self.task_servers: dict[str, TaskMetadataServer] = {}  # task ARN -> its simulated ECS agent
        if not detached:
            atexit.register(self.stop)

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path | str, *, with_broker: bool = False, detached: bool = False,
              project_dir: Path | str = PROJECT_DIR, moto_workaround: bool = True,
              vault_namespace: str | None = None, progress=None) -> "Stack":
        """Start OpenBao and moto, seed both, and with ``with_broker`` start
        ``chalice local``. With ``vault_namespace`` (``team-a``, ``admin/team-a``) OpenBao's
        seed goes into that namespace, created first. On any failure everything started is stopped again.
        ``progress`` (a callable taking one str) hears short friendly lines."""
        say = progress or (lambda _msg: None)
        t0 = time.monotonic()
        stack = cls(workdir, detached=detached, project_dir=project_dir,
                    moto_workaround=moto_workaround, vault_namespace=vault_namespace)
        try:
            stack.openbao.start()
            stack.moto.start()
            stack.google.start()
            with ThreadPoolExecutor(2) as pool:
                fut_aws = pool.submit(stack._start_aws)
                stack.openbao.wait_ready()
                say(f"OpenBao dev server on {stack.openbao.addr}")
                stack._seed_vault()
                where = f" in namespace {stack.vault_namespace}" if stack.vault_namespace else ""
                say(f"OpenBao seeded{where}: approle auth, policies, AppRoles secret-zero-broker/web/batch, "
                    "KV secrets")
                fut_aws.result()
            say(f"moto server on {stack.moto.url} (SigV4 verified; admin user bootstrapped)")
            say("AWS seeded: roles demo-node/demo-batch/demo-other/demo-task/security-team, broker IAM user, "
                "DynamoDB tables")
            say(f"second AWS account {SECOND_ACCOUNT_ID}: reader role {aws.READER_ROLE} (external ID "
                f"{aws.READER_EXTERNAL_ID}), roles demo-node/demo-batch/demo-task, its own admin user")
            say(f"ECS in both accounts: cluster {aws.ECS_CLUSTER} with a container instance, task definition "
                f"{aws.TASK_FAMILY} (task role {aws.TASK_ROLE}); tasks stay RUNNING until stopped")
            if stack.moto_workaround:
                say(f"note: broker IAM user also has policy {aws.MOTO_WORKAROUND_POLICY_NAME!r} "
                    "(moto cannot match resource-scoped statements for DynamoDB/Secrets Manager)")
            stack._store_vault_secret_ids()
            say(f"broker secret ID stored in Secrets Manager as {aws.VAULT_SECRET_ID_SECRET}, the revoking "
                f"identity's as {aws.REVOKER_SECRET_ID_SECRET}")
            stack._start_google()
            say(f"simulated Google on {stack.google.url}: certs, token, Compute, metadata servers; "
                f"GCE instance {gcp.SEED_INSTANCE} ({gcp.PROJECT}/{gcp.ZONE}, vault-role=web)")
            # moto's first EC2 request costs ~1 s (it imports moto.ec2, which
            # parses big JSON files while holding the GIL). Pay it now, while
            # chalice local starts, rather than in the first test that needs EC2.
            with ThreadPoolExecutor(1) as pool:
                warm = pool.submit(lambda: stack.client("ec2").describe_instances())
                if with_broker:
                    stack.start_broker()
                    say(f"broker (chalice local) on {stack.broker_url}")
                warm.result()
        except BaseException:
            stack.stop()
            raise
        stack.startup_seconds = time.monotonic() - t0
        return stack

    @classmethod
    def attach(cls, state_dir: Path | str) -> "Stack":
        """The stack that ``python -m devstack up`` (or ``KEEP=1 make demo``) left running,
        from its ``endpoints.json``: AWS, Google and the broker's URL, to make machines
        there. Nothing is started; Vault is reachable by address and root token only."""
        state_dir = Path(state_dir).resolve()
        try:
            ep = json.loads((state_dir / "endpoints.json").read_text())
        except FileNotFoundError:
            raise StackError(f"no local stack runs with its state in {state_dir} (no endpoints.json): "
                             "start one with `make stack-up` (or `KEEP=1 make demo`)") from None
        stack = cls(state_dir, detached=True, project_dir=ep.get("project_dir", PROJECT_DIR),
                    vault_namespace=ep.get("vault_namespace"))
        port = lambda url: int(url.rsplit(":", 1)[1])  # noqa: E731
        stack.moto.port = port(ep["aws_endpoint_url"])
        stack.google.port = port(ep["gcp_compute_url"])
        stack.openbao.port = port(ep["vault_addr"])
        stack._attached_broker_url = ep.get("broker_url")
        stack.aws_seed = AwsSeed(
            admin=Keys(ep["aws_admin_access_key_id"], ep["aws_admin_secret_access_key"]),
            broker=Keys(ep["broker_aws_access_key_id"], ep["broker_aws_secret_access_key"]),
            broker_policy="",
            second_admin=Keys(ep["second_account_admin_access_key_id"], ep["second_account_admin_secret_access_key"]))
        try:
            requests.get(f"{stack.moto.url}/moto-api/", timeout=2)
        except requests.RequestException:
            raise StackError(f"the local stack of {state_dir} does not answer (moto at {stack.moto.url}): "
                             "is it still running? `python -m devstack status`") from None
        return stack

    def _seed_vault(self, previous: VaultSeed | None = None) -> None:
        if self.vault_namespace:
            self.openbao.create_namespace(self.vault_namespace)
        self.vault_seed = seed_vault(self.vault(), self.project_dir / "policies" / "vault", previous=previous,
                                     namespace=self.vault_namespace)

    def _start_aws(self) -> None:
        self.moto.wait_ready()
        admin = self.moto.bootstrap_admin()
        self.aws_seed = aws.seed_aws(self.moto, admin, self.project_dir,
                                     moto_workaround=self.moto_workaround)
        self.aws_seed.second_admin = aws.seed_second_account(self.moto, admin, self.project_dir,
                                                             moto_workaround=self.moto_workaround)
        # moto advances a task's status on every DescribeTasks (RUNNING -> ... -> STOPPED) unless
        # its state manager says otherwise: a task stays RUNNING until stop_task.
        self.moto.set_transition("ecs::task", {"progression": "manual", "times": 10**12})
        for account in (ACCOUNT_ID, SECOND_ACCOUNT_ID):
            self.ecs_seed[account] = aws.seed_ecs(self.moto, self.aws_seed.admin_for(account), account)

    def _start_google(self) -> None:
        self.google.wait_ready()
        self.gcp_seed = gcp.seed_google(self.google)
        # The broker's own Google identity: workload identity federation from its AWS keys.
        self.google.configure_federation({self.broker_keys.access_key_id: {
            "secret": self.broker_keys.secret_access_key,
            "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/{aws.BROKER_USER}"}})
        _write_private(self.gcp_credentials_path, json.dumps(gcp.adc_config(self.google.url), indent=2) + "\n")

    def stop(self) -> None:
        """Stop every process of the stack (idempotent)."""
        parts = [p for p in (self.broker, self.openbao, self.moto, self.google, *self.task_servers.values())
                 if p is not None]
        try:
            stop_all([p.proc for p in parts])
        finally:
            for part in parts:
                try:
                    part.stop()  # clears part.proc; also the fallback if stop_all failed
                except Exception:  # keep stopping the others
                    pass
        if not self.detached:
            atexit.unregister(self.stop)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- facts -----------------------------------------------------------------

    @property
    def admin_keys(self) -> Keys:
        assert self.aws_seed is not None, "the stack is not seeded"
        return self.aws_seed.admin

    @property
    def broker_keys(self) -> Keys:
        assert self.aws_seed is not None, "the stack is not seeded"
        return self.aws_seed.broker

    @property
    def aws_endpoint_url(self) -> str:
        return self.moto.url

    @property
    def vault_addr(self) -> str:
        return self.openbao.addr

    @property
    def broker_url(self) -> str | None:
        return self.broker.url if self.broker is not None else self._attached_broker_url

    @property
    def server_id(self) -> str:
        """BROKER_SERVER_ID: the X-Vault-AWS-IAM-Server-ID value the broker expects."""
        return SERVER_ID

    @property
    def vault_root_token(self) -> str:
        return ROOT_TOKEN

    @property
    def endpoints(self) -> dict:
        """Everything a test or a developer needs to reach the stack (holds secrets)."""
        return {
            "broker_url": self.broker_url,
            "broker_log": str(self.broker.log_path) if self.broker else str(self.workdir / "broker.log"),
            "vault_addr": self.vault_addr,
            "vault_namespace": self.vault_namespace,  # null: the root namespace
            "vault_root_token": ROOT_TOKEN,
            "vault_unseal_key": self.openbao.unseal_key,
            "vault_log": str(self.openbao.log_path),
            "vault_audit_log": str(self.openbao.audit_log_path),
            "aws_endpoint_url": self.aws_endpoint_url,
            "aws_region": REGION,
            "account_id": ACCOUNT_ID,
            "aws_admin_access_key_id": self.admin_keys.access_key_id,
            "aws_admin_secret_access_key": self.admin_keys.secret_access_key,
            "second_account_id": SECOND_ACCOUNT_ID,
            "second_account_admin_access_key_id": self.admin_keys_for(SECOND_ACCOUNT_ID).access_key_id,
            "second_account_admin_secret_access_key": self.admin_keys_for(SECOND_ACCOUNT_ID).secret_access_key,
            "account_readers": self.account_readers,
            "ecs_cluster": aws.ECS_CLUSTER,
            "ecs_task_definition": aws.TASK_FAMILY,
            "ecs_task_role": aws.TASK_ROLE,
            "broker_aws_access_key_id": self.broker_keys.access_key_id,
            "broker_aws_secret_access_key": self.broker_keys.secret_access_key,
            "moto_log": str(self.moto.log_path),
            "server_id": SERVER_ID,
            "sts_endpoints": STS_ENDPOINTS,
            "audit_table": aws.AUDIT_TABLE,
            "replay_table": aws.REPLAY_TABLE,
            "quarantine_table": aws.QUARANTINE_TABLE,
            "vault_secret_id_secret": aws.VAULT_SECRET_ID_SECRET,
            "workdir": str(self.workdir),
            "project_dir": str(self.project_dir),
            "gcp_certs_url": self.gcp_certs_url,
            "gcp_compute_url": self.google.url,
            "gcp_metadata_url": self.gcp_metadata_url_for(gcp.SEED_INSTANCE),
            "gcp_audience": self.gcp_audience,
            "gcp_admin_url": f"{self.google.url}/_admin",
            "gcp_token_url": f"{self.google.url}/token",
            "gcp_credentials_file": str(self.gcp_credentials_path),
            "gcp_project": gcp.PROJECT,
            "gcp_project_number": gcp.PROJECT_NUMBER,
            "gcp_zone": gcp.ZONE,
            "gcp_instance": gcp.SEED_INSTANCE,
            "google_log": str(self.google.log_path),
            "pids": {"vault": self.openbao.pid, "moto": self.moto.pid, "google": self.google.pid,
                     "broker": self.broker.pid if self.broker else None},
        }

    @property
    def account_readers(self) -> dict[str, dict[str, str]]:
        """BROKER_ACCOUNT_READERS: the reader role of every account but the broker's own."""
        return {SECOND_ACCOUNT_ID: {"role_arn": f"arn:aws:iam::{SECOND_ACCOUNT_ID}:role/{aws.READER_ROLE}",
                                    "external_id": aws.READER_EXTERNAL_ID}}

    def broker_env(self) -> dict[str, str]:
        """The broker's environment (docs/architecture.md), with its own AWS keys."""
        assert self.vault_seed is not None, "the stack is not seeded"
        env = {
            "BROKER_VAULT_ADDR": self.vault_addr,
            "BROKER_VAULT_ROLE_ID": self.vault_seed.broker_role_id,
            "BROKER_VAULT_SECRET_ID_SECRET": aws.VAULT_SECRET_ID_SECRET,
            "BROKER_SERVER_ID": SERVER_ID,
            "BROKER_STS_ENDPOINTS": STS_ENDPOINTS,
            "BROKER_STS_FORWARD_URL": self.aws_endpoint_url,
            "BROKER_AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "BROKER_AWS_REGION": REGION,
            "BROKER_AUDIT_TABLE": aws.AUDIT_TABLE,
            "BROKER_REPLAY_TABLE": aws.REPLAY_TABLE,
            "BROKER_QUARANTINE_TABLE": aws.QUARANTINE_TABLE,
            "BROKER_VAULT_AUDIT_HASH_PATH": "file",  # OpenBao's file audit device (openbao-audit.log)
            "BROKER_REVOKER_ROLE_ID": self.vault_seed.revoker_role_id,
            "BROKER_REVOKER_SECRET_ID_SECRET": aws.REVOKER_SECRET_ID_SECRET,
            "AWS_ACCESS_KEY_ID": self.broker_keys.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.broker_keys.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "BROKER_GCP_AUDIENCE": self.gcp_audience,
            "BROKER_GCP_CERTS_URL": self.gcp_certs_url,
            "BROKER_GCP_COMPUTE_URL": self.google.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.gcp_credentials_path),
            "BROKER_ACCOUNT_READERS": json.dumps(self.account_readers, sort_keys=True),
        }
        if self.vault_namespace:
            env["BROKER_VAULT_NAMESPACE"] = self.vault_namespace
            # Audit devices are objects of the root namespace: sys/audit-hash answers "operation only
            # available in root namespace" to the broker's namespaced identity.
            del env["BROKER_VAULT_AUDIT_HASH_PATH"]
        return env

    # -- AWS (moto) --------------------------------------------------------------

    def admin_session(self) -> boto3.Session:
        return self.admin_keys.session()

    def broker_session(self) -> boto3.Session:
        """Session with the broker IAM user's own (least-privilege) keys."""
        return self.broker_keys.session()

    def client(self, name: str, keys: Keys | Mapping[str, str] | None = None):
        """A (cached) boto3 client for moto; admin keys unless ``keys`` (a
        :class:`Keys` or the dict :meth:`assume` returns) are given."""
        if keys is None:
            keys = self.admin_keys
        if isinstance(keys, Mapping):
            keys = Keys(keys["access_key_id"], keys["secret_access_key"], keys.get("session_token"))
        cache_key = (name, keys.access_key_id, keys.secret_access_key, keys.session_token)
        client = self._clients.get(cache_key)
        if client is None:
            client = self._clients[cache_key] = self.moto.client(keys, name)
        return client

    def admin_keys_for(self, account: str | int | None = None) -> Keys:
        """The admin user's keys of ``account`` (an account ID; None: the broker's own)."""
        assert self.aws_seed is not None, "the stack is not seeded"
        return self.aws_seed.admin_for(_account(account))

    def stand_in_keys(self, role_name: str, account: str | int | None = None) -> Keys:
        """Whose keys assume ``role_name`` when the stack plays the AWS service or person
        that its trust policy names.

        moto 5.2.5 checks a trust policy only when the caller is in the role's own
        account, and then only ``AWS`` principals (a ``Service`` principal makes it fail
        with HTTP 500). So a role that trusts only AWS principals is assumed by its own
        account's admin (moto checks that trust for real), and a role that trusts a
        service (EC2-only, ECS-only) by the admin of the stack's other account, whom
        moto does not check: that stands in for EC2 or ECS. The session's ARN is the
        same either way: ``arn:aws:sts::ROLE_ACCOUNT:assumed-role/ROLE/SESSION``."""
        account = _account(account)
        trust = self.trust_policy_of(role_name, account)
        statements = trust.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        if all(isinstance(st.get("Principal"), dict) and set(st["Principal"]) == {"AWS"} for st in statements):
            return self.admin_keys_for(account)
        return self.admin_keys_for(SECOND_ACCOUNT_ID if account == ACCOUNT_ID else ACCOUNT_ID)

    def assume(self, role_name: str, session_name: str, account: str | int | None = None, *,
               external_id: str | None = None, keys: Keys | Mapping[str, str] | None = None) -> dict[str, str]:
        """sts:AssumeRole of ``role_name`` in ``account`` (default: the broker's own) ->
        access_key_id, secret_access_key, session_token. Without ``keys``, as the stack's
        stand-in for whom the role trusts (:meth:`stand_in_keys`): its admin, or EC2/ECS."""
        kwargs = {"ExternalId": external_id} if external_id is not None else {}
        if keys is None:
            keys = self.stand_in_keys(role_name, account)
        creds = self.client("sts", keys).assume_role(
            RoleArn=f"arn:aws:iam::{_account(account)}:role/{role_name}",
            RoleSessionName=session_name, **kwargs)["Credentials"]
        return {"access_key_id": creds["AccessKeyId"],
                "secret_access_key": creds["SecretAccessKey"],
                "session_token": creds["SessionToken"]}

    def assumed_session(self, role_name: str, session_name: str, account: str | int | None = None) -> boto3.Session:
        c = self.assume(role_name, session_name, account)
        return Keys(c["access_key_id"], c["secret_access_key"], c["session_token"]).session()

    def reader_keys(self, account: str | int = SECOND_ACCOUNT_ID) -> dict[str, str]:
        """What the broker does for a caller of ``account``: assume its reader role with
        its own keys and the external ID."""
        reader = self.account_readers[_account(account)]
        return self.assume(aws.READER_ROLE, "secret-zero-broker", account, external_id=reader["external_id"],
                           keys=self.broker_keys)

    def launch_instance(self, tags: Mapping[str, str] | None = None, profile: str | None = "demo-node",
                        account: str | int | None = None, metadata_options: Mapping[str, Any] | None = None) -> str:
        """Run an EC2 instance in ``account`` with instance profile ``profile`` and ``tags``;
        returns its ID once describe_instances shows it running (moto's run_instances
        itself answers "pending", describe_instances "running"). ``metadata_options``:
        EC2's MetadataOptions, e.g. ``{"HttpTokens": "required"}`` (IMDSv2 only)."""
        ec2 = self.client("ec2", self.admin_keys_for(account))
        kwargs: dict[str, Any] = {}
        if profile:
            kwargs["IamInstanceProfile"] = {"Name": profile}
        if tags:
            kwargs["TagSpecifications"] = [{"ResourceType": "instance",
                                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        if metadata_options:
            kwargs["MetadataOptions"] = dict(metadata_options)
        inst = ec2.run_instances(ImageId=aws.AMI_ID, MinCount=1, MaxCount=1,
                                 InstanceType="t3.micro", **kwargs)["Instances"][0]
        instance_id = inst["InstanceId"]
        wait_until(lambda: self.instance_state(instance_id, account) == "running", timeout=5,
                   what=f"instance {instance_id} to be running")
        return instance_id

    def describe_instance(self, instance_id: str, account: str | int | None = None) -> dict:
        res = self.client("ec2", self.admin_keys_for(account)).describe_instances(
            InstanceIds=[instance_id])["Reservations"]
        return res[0]["Instances"][0]

    def instance_state(self, instance_id: str, account: str | int | None = None) -> str:
        return self.describe_instance(instance_id, account)["State"]["Name"]

    def instance_role(self, instance_id: str, account: str | int | None = None) -> str:
        """The role of the instance's instance profile (whose credentials EC2 gives it)."""
        inst = self.describe_instance(instance_id, account)
        profile = (inst.get("IamInstanceProfile") or {}).get("Arn")
        if not profile:
            raise StackError(f"instance {instance_id} has no instance profile: EC2 gives it no credentials")
        roles = self.client("iam", self.admin_keys_for(account)).get_instance_profile(
            InstanceProfileName=profile.rsplit("/", 1)[1])["InstanceProfile"]["Roles"]
        if not roles:
            raise StackError(f"instance profile {profile} has no role")
        return roles[0]["RoleName"]

    def instance_credentials(self, instance_id: str, account: str | int | None = None) -> dict[str, str]:
        """The credentials EC2 gives the instance: its profile's role, session = the instance ID."""
        return self.assume(self.instance_role(instance_id, account), instance_id, account)

    def stop_instance(self, instance_id: str, account: str | int | None = None) -> None:
        self.client("ec2", self.admin_keys_for(account)).stop_instances(InstanceIds=[instance_id])
        wait_until(lambda: self.instance_state(instance_id, account) == "stopped", timeout=5,
                   what=f"instance {instance_id} to be stopped")

    def terminate_instance(self, instance_id: str, account: str | int | None = None) -> None:
        self.client("ec2", self.admin_keys_for(account)).terminate_instances(InstanceIds=[instance_id])

    # -- trust policies ------------------------------------------------------------

    def seeded_trust_policy(self, role_name: str, account: str | int | None = None) -> dict:
        """The trust policy the stack seeded for ``role_name``."""
        account = _account(account)
        if role_name == aws.READER_ROLE and account != ACCOUNT_ID:
            return aws.reader_trust_policy()
        roles = aws.DEMO_ROLES if account == ACCOUNT_ID else aws.SECOND_ACCOUNT_ROLES
        if role_name not in roles:
            raise StackError(f"the stack seeded no role {role_name!r} in account {account}")
        return roles[role_name].trust_document(account)

    def trust_policy_of(self, role_name: str, account: str | int | None = None) -> dict:
        doc = self.client("iam", self.admin_keys_for(account)).get_role(RoleName=role_name)["Role"][
            "AssumeRolePolicyDocument"]
        return json.loads(doc) if isinstance(doc, str) else doc

    def set_trust_policy(self, role_name: str, document: Mapping[str, Any],
                         account: str | int | None = None) -> None:
        """Replace the role's trust policy (iam:UpdateAssumeRolePolicy). Put it back with
        :meth:`restore_trust_policy`, or use :meth:`changed_trust_policy`."""
        self.client("iam", self.admin_keys_for(account)).update_assume_role_policy(
            RoleName=role_name, PolicyDocument=json.dumps(document))

    def restore_trust_policy(self, role_name: str, account: str | int | None = None) -> None:
        self.set_trust_policy(role_name, self.seeded_trust_policy(role_name, account), account)

    @contextlib.contextmanager
    def changed_trust_policy(self, role_name: str, document: Mapping[str, Any],
                             account: str | int | None = None) -> Iterator[None]:
        """``with stack.changed_trust_policy("demo-node", open_doc): ...``, seeded one back after."""
        self.set_trust_policy(role_name, document, account)
        try:
            yield
        finally:
            self.restore_trust_policy(role_name, account)

    # -- ECS -------------------------------------------------------------------------

    def run_task(self, tags: Mapping[str, str] | None = None, cluster: str = aws.ECS_CLUSTER,
                 task_definition: str = aws.TASK_FAMILY, account: str | int | None = None, *,
                 task_role: str | None = None, group: str | None = None, started_by: str | None = None) -> str:
        """Run one task (EC2 launch type, on the cluster's container instance) in ``account``
        with ``tags``; returns its ARN. It stays RUNNING until :meth:`stop_task`.
        ``task_role``: a role name of that account, as a task role override."""
        account = _account(account)
        kwargs: dict[str, Any] = {}
        if tags:
            kwargs["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if task_role:
            kwargs["overrides"] = {"taskRoleArn": f"arn:aws:iam::{account}:role/{task_role}"}
        if group:
            kwargs["group"] = group
        if started_by:
            kwargs["startedBy"] = started_by
        out = self.client("ecs", self.admin_keys_for(account)).run_task(
            cluster=cluster, taskDefinition=task_definition, launchType="EC2", count=1, **kwargs)
        if out.get("failures") or not out.get("tasks"):
            raise StackError(f"run_task in {cluster} failed: {out.get('failures')}")
        return out["tasks"][0]["taskArn"]

    def describe_task(self, task_arn: str) -> dict:
        """DescribeTasks (with tags) of the task, in its account."""
        account, cluster = task_account(task_arn), task_cluster(task_arn)
        tasks = self.client("ecs", self.admin_keys_for(account)).describe_tasks(
            cluster=cluster, tasks=[task_arn], include=["TAGS"])["tasks"]
        if not tasks:
            raise StackError(f"no task {task_arn}")
        return tasks[0]

    def stop_task(self, task_arn: str, reason: str = "stopped by the local stack") -> None:
        """StopTask: the task is STOPPED at once. Its simulated agent (if any) keeps
        answering, with KnownStatus STOPPED and no more credentials."""
        self.client("ecs", self.admin_keys_for(task_account(task_arn))).stop_task(
            cluster=task_cluster(task_arn), task=task_arn, reason=reason)

    def task_role(self, task_arn: str) -> str:
        """The task role's ARN: the override, else the task definition's."""
        task = self.describe_task(task_arn)
        override = (task.get("overrides") or {}).get("taskRoleArn")
        if override:
            return override
        ecs = self.client("ecs", self.admin_keys_for(task_account(task_arn)))
        role = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"].get(
            "taskRoleArn")
        if not role:
            raise StackError(f"task {task_arn} has no task role")
        return role

    def task_credentials(self, task_arn: str) -> dict[str, str]:
        """The task role's credentials as ECS makes them: session name = the task ID."""
        role_arn = self.task_role(task_arn)
        return self.assume(role_arn.rsplit("/", 1)[1], task_id(task_arn), task_account(task_arn))

    def task_metadata(self, task_arn: str, detached: bool | None = None) -> TaskMetadataServer:
        """The simulated ECS agent of the task (started once, stopped with the stack):
        ``.env`` holds ECS_CONTAINER_METADATA_URI_V4 and AWS_CONTAINER_CREDENTIALS_FULL_URI.
        ``detached`` (default: as the stack): it outlives this process."""
        server = self.task_servers.get(task_arn)
        if server is None or (server.proc is None and server.adopted_pid is None):
            server = TaskMetadataServer.running(self.workdir, task_id(task_arn))
            if server is not None:
                self.task_servers[task_arn] = server
                return server
            server = TaskMetadataServer.for_task(self, task_arn, detached=self.detached if detached is None
                                                 else detached)
            server.start()
            try:
                server.wait_ready()
            except BaseException:
                server.stop()
                raise
            self.task_servers[task_arn] = server
        return server

    # -- GCP (the simulated Google, devstack/google_sim.py) -----------------------

    @property
    def gcp_certs_url(self) -> str:
        return f"{self.google.url}/oauth2/v1/certs"

    @property
    def gcp_credentials_path(self) -> Path:
        """The broker's ADC file (GOOGLE_APPLICATION_CREDENTIALS), mode 0600."""
        return self.workdir / gcp.ADC_FILE

    @property
    def gcp_audience(self) -> str:
        """The audience the broker expects (BROKER_GCP_AUDIENCE): the broker's URL
        while ``chalice local`` runs, else ``https://secret-zero-broker.local``."""
        if self.broker is not None and self.broker.proc is not None:
            return self.broker.broker_env.get("BROKER_GCP_AUDIENCE") or self.broker.url
        return gcp.DEFAULT_AUDIENCE

    def gcp_metadata_url_for(self, name: str, project: str = gcp.PROJECT, zone: str = gcp.ZONE) -> str:
        """Base URL of that instance's metadata server: the client's ``--metadata-url``
        (it appends ``/computeMetadata/v1/...``)."""
        return self.google.metadata_url_for(name, project, zone)

    def gcp_create_instance(self, name: str, labels: Mapping[str, str] | None = None, *,
                            project: str = gcp.PROJECT, zone: str = gcp.ZONE, status: str = "RUNNING",
                            service_account: str | None = gcp.NODE_SA, **extra: Any) -> dict:
        """Create a simulated GCE instance; returns its Compute API JSON (``id``,
        ``creationTimestamp``, ...). ``service_account=None``: no service account.
        ``extra``: ``project_number``, ``scopes``, ``machine_type``."""
        return self.google.admin("POST", "instances", {
            "project": project, "zone": zone, "name": name, "labels": dict(labels or {}), "status": status,
            "service_account": service_account or "", **extra})

    def gcp_instance(self, name: str, project: str = gcp.PROJECT, zone: str = gcp.ZONE) -> dict:
        """The instance as the Compute API shows it."""
        return self.google.admin("GET", f"instances/{project}/{zone}/{name}")

    def gcp_set_status(self, name: str, status: str, project: str = gcp.PROJECT, zone: str = gcp.ZONE) -> dict:
        """PROVISIONING, STAGING, RUNNING, STOPPING, STOPPED, SUSPENDED, TERMINATED, ..."""
        return self.google.admin("POST", f"instances/{project}/{zone}/{name}/status", {"status": status})

    def gcp_set_labels(self, name: str, labels: Mapping[str, str], project: str = gcp.PROJECT,
                       zone: str = gcp.ZONE) -> dict:
        return self.google.admin("POST", f"instances/{project}/{zone}/{name}/labels", {"labels": dict(labels)})

    def gcp_delete_instance(self, name: str, project: str = gcp.PROJECT, zone: str = gcp.ZONE) -> None:
        self.google.admin("DELETE", f"instances/{project}/{zone}/{name}")

    def gcp_recreate_instance(self, name: str, project: str = gcp.PROJECT, zone: str = gcp.ZONE,
                              **changes: Any) -> dict:
        """Delete and create again under the same name: a new ``id`` and a
        ``creationTimestamp`` at least one second later. ``changes``: labels, status, ..."""
        return self.google.admin("POST", f"instances/{project}/{zone}/{name}/recreate", changes)

    def gcp_instance_token(self, name: str, audience: str | None = None, *, project: str = gcp.PROJECT,
                           zone: str = gcp.ZONE, format: str = "full", iat: int | None = None,
                           exp: int | None = None, claims: Mapping[str, Any] | None = None,
                           key: str | None = None, distinct: bool = True) -> str:
        """The instance's identity token, as its metadata server gives it (``format=full``
        by default; the default audience is :attr:`gcp_audience`). With ``iat``, ``exp``,
        ``claims`` (merged over the real ones) or ``key`` ("unpublished", or a kid) it is
        minted through the admin API instead, signed the same way.

        Two tokens minted in the same second for the same audience are byte-identical
        (RS256 is deterministic and ``iat`` counts seconds), as Google's would be. With
        ``distinct`` (default) this call waits for the next second when needed, so that
        it never returns the token of the previous call."""
        audience = audience or self.gcp_audience
        if iat is None and exp is None and not claims and key is None:
            mint_key = (project, zone, name, audience, format)
            last = self._gcp_minted.get(mint_key)
            if distinct and last is not None and int(time.time()) <= last:
                time.sleep(last + 1.01 - time.time())
            r = requests.get(f"{self.gcp_metadata_url_for(name, project, zone)}/computeMetadata/v1/instance/"
                             "service-accounts/default/identity", params={"audience": audience, "format": format},
                             headers={"Metadata-Flavor": "Google"}, timeout=5,
                             proxies={"http": None, "https": None})
            if r.status_code != 200:
                raise StackError(f"metadata server of {project}/{zone}/{name}: HTTP {r.status_code}")
            self._gcp_minted[mint_key] = int(time.time())  # the token's iat is this second or earlier
            return r.text
        body: dict[str, Any] = {"project": project, "zone": zone, "name": name, "audience": audience,
                                "format": format, "claims": dict(claims or {})}
        if iat is not None:
            body["iat"] = iat
        if exp is not None:
            body["exp"] = exp
        if key is not None:
            body["key"] = key
        return self.google.admin("POST", "tokens/instance", body)["token"]

    def gcp_sa_token(self, email: str, audience: str | None = None, *, iat: int | None = None,
                     exp: int | None = None, claims: Mapping[str, Any] | None = None, key: str | None = None) -> str:
        """A service account's ID token (Cloud Run, GKE workload identity): ``email``,
        ``email_verified``, no ``google.compute_engine`` claim."""
        body: dict[str, Any] = {"email": email, "audience": audience or self.gcp_audience,
                                "claims": dict(claims or {})}
        for k, v in (("iat", iat), ("exp", exp), ("key", key)):
            if v is not None:
                body[k] = v
        return self.google.admin("POST", "tokens/service-account", body)["token"]

    def gcp_forge_token(self, header: Mapping[str, Any] | None, claims: Mapping[str, Any],
                        sign: bool | str = True, key: str | None = None) -> str:
        """Any header and claims. The header is {"alg": "RS256", "kid": <the key's kid>,
        "typ": "JWT"} with ``header``'s fields over it (a None value removes a field:
        ``{"kid": None}``). ``sign``: True (RS256 with the current key, or ``key``: a kid
        or "unpublished"), False (no signature: ``header.payload.``) or
        "hs256-public-key" (HMAC-SHA256 keyed with the published certificate's PEM)."""
        body: dict[str, Any] = {"header": dict(header or {}), "claims": dict(claims), "sign": sign}
        if key is not None:
            body["key"] = key
        return self.google.admin("POST", "tokens/forge", body)["token"]

    def gcp_rotate_key(self, keep_old: bool = True) -> str:
        """A new signing key (and kid) signs from now on; the old one stays published
        unless ``keep_old=False``. Returns the new kid."""
        return self.google.admin("POST", "keys/rotate", {"keep_old": keep_old})["kid"]

    def gcp_drop_old_keys(self) -> None:
        """Unpublish every key but the current one."""
        self.google.admin("POST", "keys/drop-old", {})

    def gcp_kids(self) -> list[str]:
        """The published kids, oldest first; the last one signs."""
        return self.google.admin("GET", "keys")["kids"]

    def gcp_certs_fetch_count(self) -> int:
        """How many times the certs endpoints (v1 and v3) were fetched."""
        return self.google.admin("GET", "certs-fetch-count")["count"]

    def gcp_request_counts(self, reset: bool = False) -> dict[str, int]:
        """Requests per endpoint: certs_v1, certs_v3, token, compute, metadata_identity,
        metadata_other (``reset``: return them and start again from zero)."""
        return self.google.admin("DELETE" if reset else "GET", "counts")

    def gcp_outage(self, which: str, down: bool = True) -> None:
        """Make "certs", "compute", "token" or "metadata" answer 503 (``down=False``: back)."""
        self.google.admin("POST", "outage", {"service": which, "down": down})

    def gcp_configure(self, **settings: Any) -> dict:
        """``certs_max_age`` (int), ``readable_projects`` (list), ``keep_old_keys`` (bool),
        ``projects`` ({id: number})."""
        return self.google.admin("POST", "config", settings)

    # -- Vault (OpenBao) ---------------------------------------------------------

    def vault(self, token: str | None = ROOT_TOKEN) -> hvac.Client:
        """An hvac client in the stack's Vault namespace (the root token by default)."""
        return self.openbao.client(token, namespace=self.vault_namespace)

    def vault_headers(self, token: str | None = None) -> dict[str, str]:
        """Headers of a raw HTTP call to OpenBao in the stack's namespace: X-Vault-Namespace
        when there is one, X-Vault-Token with ``token``."""
        headers = {"X-Vault-Namespace": self.vault_namespace} if self.vault_namespace else {}
        if token:
            headers["X-Vault-Token"] = token
        return headers

    def seal_vault(self) -> None:
        self.openbao.seal()

    def unseal_vault(self) -> None:
        self.openbao.unseal()

    def stop_vault(self) -> None:
        """Stop OpenBao ("Vault down"). Its in-memory data is gone."""
        self.openbao.stop()

    def start_vault(self, keep_ids: bool = True) -> dict[str, str]:
        """(Re)start OpenBao on the same port and seed it again.

        A dev server loses everything when it stops. With ``keep_ids`` (default)
        the seed puts the same role IDs, broker secret ID and KV data back, like
        a real Vault coming back; tokens, leases, wrapping tokens and secret IDs
        issued before are still lost. With ``keep_ids=False`` new IDs are made.
        Either way the Secrets Manager secret is updated. Returns the broker
        environment variables that changed (empty with ``keep_ids``); a running
        broker keeps its old environment until :meth:`start_broker`."""
        before = self.broker_env()
        if self.openbao.proc is not None:
            self.openbao.stop()
        self.openbao.start()
        self.openbao.wait_ready()
        self._seed_vault(previous=self.vault_seed if keep_ids else None)
        self._store_vault_secret_ids()
        after = self.broker_env()
        return {k: v for k, v in after.items() if before.get(k) != v}

    def _store_vault_secret_ids(self) -> None:
        aws.put_vault_secret_id(self.moto, self.admin_keys, self.vault_seed.broker_secret_id)
        aws.put_vault_secret_id(self.moto, self.admin_keys, self.vault_seed.revoker_secret_id,
                                aws.REVOKER_SECRET_ID_SECRET, "the broker's revoking identity")

    # -- the broker (chalice local) ----------------------------------------------

    def start_broker(self, env_overrides: Mapping[str, str] | None = None,
                     timeout: float = 30.0) -> ChaliceLocal:
        """Start (or restart, same port) ``chalice local`` with :meth:`broker_env`
        plus ``env_overrides``; waits until GET /v1/health answers."""
        port = None
        if self.broker is not None:
            port = self.broker.port
            self.broker.stop()
        env = self.broker_env()
        env.update(env_overrides or {})
        # BROKER_GCP_AUDIENCE is the broker's own URL, as in production (unless overridden)
        url_env = () if "BROKER_GCP_AUDIENCE" in (env_overrides or {}) else ("BROKER_GCP_AUDIENCE",)
        self.broker = ChaliceLocal(self.workdir, env, port=port, project_dir=self.project_dir,
                                   detached=self.detached, url_env=url_env)
        self.broker.start()
        try:
            self.broker.wait_ready(timeout=timeout)
        except BaseException:
            self.broker.stop()
            raise
        return self.broker

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    # -- files ---------------------------------------------------------------------

    def write_endpoints(self, path: Path | str | None = None) -> Path:
        """Write :attr:`endpoints` as JSON, mode 0600."""
        path = Path(path) if path else self.workdir / "endpoints.json"
        _write_private(path, json.dumps(self.endpoints, indent=2) + "\n")
        return path

    def write_broker_env(self, path: Path | str | None = None) -> Path:
        """Write :meth:`broker_env` as a shell-sourceable file, mode 0600."""
        import shlex
        path = Path(path) if path else self.workdir / "broker.env"
        _write_private(path, "".join(f"{k}={shlex.quote(v)}\n" for k, v in self.broker_env().items()))
        return path


def _account(account: str | int | None) -> str:
    """None: the broker's own account; else an account ID (str or int)."""
    if account is None:
        return ACCOUNT_ID
    account = str(account)
    if account not in (ACCOUNT_ID, SECOND_ACCOUNT_ID):
        raise StackError(f"the local stack has no account {account!r} (accounts: {ACCOUNT_ID}, {SECOND_ACCOUNT_ID})")
    return account


def task_account(task_arn: str) -> str:
    """arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID -> ACCOUNT."""
    return task_arn.split(":")[4]


def task_cluster(task_arn: str) -> str:
    parts = task_arn.split(":", 5)[5].split("/")
    return parts[1] if len(parts) == 3 else aws.ECS_CLUSTER


def task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[1]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["Stack", "StackError", "SERVER_ID", "STS_ENDPOINTS"]
