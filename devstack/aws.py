"""moto server with SigV4 verification on, its bootstrap admin, and the AWS seed."""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session
import requests
from botocore.config import Config

from .procs import LoopbackServer, StackError, find_executable, start_process

ACCOUNT_ID = "123456789012"  # moto's default account: the broker's own account
SECOND_ACCOUNT_ID = "210987654321"  # a member account: the broker reads it through a reader role
REGION = "us-east-1"
ADMIN_USER = "admin"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{ADMIN_USER}"
BROKER_USER = "secret-zero-broker"
BROKER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{BROKER_USER}"
# The role AWS Organizations creates in a member account for the management account's
# admins. Here the stack's admin assumes it to create the second account's `admin` user.
ORG_ACCESS_ROLE = "OrganizationAccountAccessRole"
# The per-account reader role the broker assumes (policies/aws/README.md).
READER_ROLE = "secret-zero-reader"
READER_EXTERNAL_ID = "secret-zero-local"
READER_POLICY_NAME = "secret-zero-reader"
BROKER_POLICY_NAME = "secret-zero-broker-dev"
# moto checks IAM policy Resource elements only for IAM role actions and
# sts:AssumeRole; for every other service it evaluates the action against the
# resource "*", so a statement scoped to e.g. arn:aws:dynamodb:...:table/x never
# matches there. See MOTO_WORKAROUND_POLICY_NAME below.
MOTO_WORKAROUND_POLICY_NAME = "moto-workaround-unscoped-resources"
AUDIT_TABLE = "secret-zero-audit"
REPLAY_TABLE = "secret-zero-replay"
QUARANTINE_TABLE = "secret-zero-quarantine"
VAULT_SECRET_ID_SECRET = "secret-zero-broker/local/vault-secret-id"
REVOKER_SECRET_ID_SECRET = VAULT_SECRET_ID_SECRET + "-revoker"  # as `broker vault setup` names it
AMI_ID = "ami-12c6146b"  # any ID works with moto; this is moto's example AMI

# The unauthenticated requests moto allows before it starts verifying: exactly the
# bootstrap calls in bootstrap_admin(), nothing left over: 3 for the admin user of the
# broker's account, 3 for OrganizationAccountAccessRole in the second account.
BOOTSTRAP_REQUESTS = 6

_ALLOW_ALL = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def admin_arn(account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account_id}:user/{ADMIN_USER}"


def trust_policy(principal_arn: str = ADMIN_ARN) -> dict:
    """Trust policy letting ``principal_arn`` assume the role (any session name)."""
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal_arn},
                           "Action": "sts:AssumeRole"}]}


def service_trust_policy(service: str) -> dict:
    """Trust policy letting only an AWS service assume the role: ``ec2.amazonaws.com``
    (instance profiles) or ``ecs-tasks.amazonaws.com`` (task roles). moto does not
    enforce trust policies, so the stack's admin can still assume such a role to
    stand in for EC2 or ECS; the broker reads the policy to decide whether a session
    named after an instance or a task could only have been made by that service."""
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service},
                           "Action": "sts:AssumeRole"}]}


def reader_trust_policy(broker_arn: str = BROKER_ARN, external_id: str = READER_EXTERNAL_ID) -> dict:
    """The reader role's trust: the broker's principal, with the external ID."""
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": broker_arn}, "Action": "sts:AssumeRole",
                           "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]}


EC2 = "ec2.amazonaws.com"
ECS_TASKS = "ecs-tasks.amazonaws.com"
ADMIN = "admin"  # trust: the account's admin user


@dataclass(frozen=True)
class DemoRole:
    tags: dict[str, str]
    profile: bool = False  # an instance profile of the same name
    trust: str = ADMIN     # ADMIN, EC2 or ECS_TASKS

    def trust_document(self, account_id: str) -> dict:
        return trust_policy(admin_arn(account_id)) if self.trust == ADMIN else service_trust_policy(self.trust)


# The broker's own account.
DEMO_ROLES: dict[str, DemoRole] = {
    "demo-node": DemoRole({"team": "platform"}, profile=True, trust=EC2),
    "demo-batch": DemoRole({"vault-role": "batch"}),
    "demo-other": DemoRole({}, profile=True, trust=EC2),
    "demo-task": DemoRole({"team": "platform"}, trust=ECS_TASKS),  # no grant by itself: rules match task facts
    "security-team": DemoRole({}),  # the security team: [security] principal_arns in policies/rules.toml
}
# The second account (the reader role is seeded apart: its trust names the broker).
SECOND_ACCOUNT_ROLES: dict[str, DemoRole] = {
    "demo-node": DemoRole({"team": "platform"}, profile=True, trust=EC2),
    "demo-batch": DemoRole({"team": "batch"}),  # deliberately no vault-role tag
    "demo-task": DemoRole({"team": "platform"}, trust=ECS_TASKS),
}

# ECS, in both accounts: a cluster with one registered container instance (an EC2
# host), and a task definition whose task role is demo-task. moto's Fargate path
# fails on awsvpc network interfaces, so tasks use the EC2 launch type.
ECS_CLUSTER = "demo-cluster"
TASK_FAMILY = "demo-web"
TASK_ROLE = "demo-task"
TASK_CONTAINER = "web"
TASK_IMAGE = "public.ecr.aws/docker/library/busybox:1.36"


def _isolated_botocore_session() -> botocore.session.Session:
    """A botocore session that ignores AWS_PROFILE / AWS_DEFAULT_PROFILE, so a
    developer's profile (or a missing one) never changes what talks to moto."""
    return botocore.session.Session(session_vars={"profile": (None, None, None, None)})


_shared_lock = threading.Lock()
_shared_session: botocore.session.Session | None = None


def make_client(endpoint_url: str, name: str, access_key_id: str, secret_access_key: str,
                session_token: str | None = None, region: str = REGION, config: Config | None = None):
    """A botocore client with explicit keys. All clients share one botocore
    session, so each service model is parsed once (a fresh boto3 Session pays
    ~0.1-0.2 s per client for that)."""
    global _shared_session
    with _shared_lock:
        if _shared_session is None:
            _shared_session = _isolated_botocore_session()
        return _shared_session.create_client(
            name, region_name=region, endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            config=config or Config(connect_timeout=2, read_timeout=10))


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def session(self, region: str = REGION) -> boto3.Session:
        return boto3.Session(botocore_session=_isolated_botocore_session(),
                             aws_access_key_id=self.access_key_id,
                             aws_secret_access_key=self.secret_access_key,
                             aws_session_token=self.session_token,
                             region_name=region)

    def as_dict(self) -> dict[str, str]:
        d = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        if self.session_token:
            d["session_token"] = self.session_token
        return d


class MotoServer(LoopbackServer):
    """``moto_server`` on a loopback port, SigV4 verification after the bootstrap."""

    log_name = "moto.log"

    def start(self) -> "MotoServer":
        # moto_server, with its DynamoDB transactions isolated from concurrent writes (devstack/moto_isolated.py)
        argv = [sys.executable, "-m", "devstack.moto_isolated", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)
        env["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"  # ~1 s of the first EC2 call; AMI IDs are not validated anyway
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parent.parent)  # devstack.moto_isolated, from any directory
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = start_process("moto server", argv, self.log_path, env=env, detached=self.detached)
        return self

    def wait_ready(self, timeout: float = 20.0) -> "MotoServer":
        # /moto-api/ is not an AWS action: it does not use the no-auth budget
        return self._wait_until_ready(lambda: requests.get(f"{self.url}/moto-api/", timeout=1).status_code == 200,
                                      f"moto server to answer on {self.url}", timeout)

    def client(self, keys: Keys, name: str, **config):
        cfg = Config(connect_timeout=2, read_timeout=10, **config)
        return make_client(self.url, name, keys.access_key_id, keys.secret_access_key,
                           keys.session_token, config=cfg)

    # -- bootstrap ---------------------------------------------------------

    def set_transition(self, model_name: str, transition: dict) -> None:
        """moto's state manager (``/moto-api/``, not an AWS action): how a model's
        status advances, e.g. ``{"progression": "manual", "times": N}``."""
        r = requests.post(f"{self.url}/moto-api/state-manager/set-transition",
                          json={"model_name": model_name, "transition": transition}, timeout=5)
        if r.status_code != 201:
            raise StackError(f"moto state manager refused {model_name}: HTTP {r.status_code}")

    def bootstrap_admin(self) -> Keys:
        """Within the unauthenticated budget: the ``admin`` user of the broker's account,
        and in the second account the role OrganizationAccountAccessRole (allow-all),
        which that admin assumes later to make the second account's own ``admin``
        (:meth:`second_account_admin`). Then prove that the budget is spent: a request
        signed with a wrong secret must fail.

        Why the role: moto takes the account of a request from its access key, and an
        assumed role's permissions from that role in its account. Once verification is
        on, nothing could be created in an account that has no principal yet."""
        anon = Keys("AKIABOOTSTRAPBOOTSTR", "bootstrap")
        # no retries: a retried request would use up an unauthenticated slot
        no_retry = {"retries": {"max_attempts": 1, "mode": "standard"}}
        iam = self.client(anon, "iam", **no_retry)
        try:
            iam.create_user(UserName=ADMIN_USER)                          # 1
            iam.put_user_policy(UserName=ADMIN_USER, PolicyName="allow-all",  # 2
                                PolicyDocument=json.dumps(_ALLOW_ALL))
            key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]  # 3
            admin = Keys(key["AccessKeyId"], key["SecretAccessKey"])
            creds = self.client(admin, "sts", **no_retry).assume_role(     # 4: keys of the second account
                RoleArn=f"arn:aws:iam::{SECOND_ACCOUNT_ID}:role/{ORG_ACCESS_ROLE}",
                RoleSessionName="stack-bootstrap")["Credentials"]
            iam2 = self.client(Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]),
                               "iam", **no_retry)
            iam2.create_role(RoleName=ORG_ACCESS_ROLE,                     # 5
                             AssumeRolePolicyDocument=json.dumps(trust_policy(f"arn:aws:iam::{ACCOUNT_ID}:root")),
                             Description="as AWS Organizations creates it in a member account")
            iam2.put_role_policy(RoleName=ORG_ACCESS_ROLE, PolicyName="AdministratorAccess",  # 6
                                 PolicyDocument=json.dumps(_ALLOW_ALL))
        except botocore.exceptions.ClientError as e:
            raise StackError(f"moto bootstrap failed (was this server fresh?): {e}") from e
        self.check_signatures_verified(admin)
        return admin

    def second_account_admin(self, admin: Keys) -> Keys:
        """The second account's ``admin`` user (allow-all) and an access key, made with
        verification on: the first account's admin assumes OrganizationAccountAccessRole."""
        creds = self.client(admin, "sts").assume_role(
            RoleArn=f"arn:aws:iam::{SECOND_ACCOUNT_ID}:role/{ORG_ACCESS_ROLE}",
            RoleSessionName="stack-seed")["Credentials"]
        iam = self.client(Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]), "iam")
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="allow-all", PolicyDocument=json.dumps(_ALLOW_ALL))
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def check_signatures_verified(self, admin: Keys) -> None:
        """A GetCallerIdentity signed with a wrong secret must get 403
        SignatureDoesNotMatch. Should moto still accept it unverified, burn the
        rest of the budget with such requests, then fail if it still passes."""
        forged = Keys(admin.access_key_id, "not-the-secret-" + admin.secret_access_key[:4])
        sts = self.client(forged, "sts", retries={"max_attempts": 1, "mode": "standard"})
        for _ in range(BOOTSTRAP_REQUESTS + 1):
            try:
                sts.get_caller_identity()
            except botocore.exceptions.ClientError as e:
                err = e.response.get("Error", {})
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 403 and err.get("Code") == "SignatureDoesNotMatch":
                    return
                raise StackError(f"moto answered a forged request with {status} {err}") from e
        raise StackError("moto accepts requests signed with a wrong secret: SigV4 verification is off")


@dataclass
class AwsSeed:
    admin: Keys
    broker: Keys
    broker_policy: str  # the exact JSON attached to the broker user
    second_admin: Keys | None = None  # the second account's admin user

    def admin_for(self, account_id: str) -> Keys:
        if account_id == ACCOUNT_ID:
            return self.admin
        if account_id == SECOND_ACCOUNT_ID and self.second_admin is not None:
            return self.second_admin
        raise StackError(f"the local stack has no account {account_id!r} "
                         f"(accounts: {ACCOUNT_ID}, {SECOND_ACCOUNT_ID})")


def broker_policy_text(project_dir: Path) -> str:
    return (Path(project_dir) / ".chalice" / "policy-dev.json").read_text()


def reader_policy_text(project_dir: Path) -> str:
    return (Path(project_dir) / "policies" / "aws" / "reader-policy.json").read_text()


def _statements(doc: dict) -> list[dict]:
    stmts = doc["Statement"]
    return stmts if isinstance(stmts, list) else [stmts]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def moto_workaround_policy(policy_text: str) -> dict | None:
    """The statements of the broker policy whose Resource is not ``*``, with
    Resource ``*`` (same actions). moto compares non-IAM actions against the
    resource ``*`` only, so without this the scoped DynamoDB and Secrets Manager
    statements would deny calls the broker needs (checked with moto 5.2.5). moto also
    checks ``dynamodb:TransactWriteItems``/``TransactGetItems``, names IAM does not have:
    they are added where the item actions they carry are granted.
    sts:AssumeRole keeps its scope: moto checks it against the role ARN."""
    out = []
    for st in _statements(json.loads(policy_text)):
        if st.get("Effect") != "Allow" or st.get("Resource") in ("*", ["*"]) or "Resource" not in st:
            continue
        actions = [a for a in _as_list(st["Action"]) if a != "sts:AssumeRole"]
        # IAM has no TransactWriteItems/TransactGetItems actions (AWS checks each item's own
        # action), but moto checks those names: grant them where the item actions are.
        if set(actions) & TRANSACT_WRITE_ITEM_ACTIONS:
            actions.append("dynamodb:TransactWriteItems")
        if "dynamodb:GetItem" in actions:
            actions.append("dynamodb:TransactGetItems")
        if not actions or all(a.startswith("logs:") for a in actions):
            continue  # nothing local writes CloudWatch logs
        out.append({"Sid": (st.get("Sid") or "Stmt") + "MotoUnscoped", "Effect": "Allow",
                    "Action": actions, "Resource": "*"})
    if not out:
        return None
    return {"Version": "2012-10-17", "Statement": out}


TRANSACT_WRITE_ITEM_ACTIONS = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                               "dynamodb:ConditionCheckItem"}


def seed_roles(iam, roles: dict[str, DemoRole], account_id: str) -> None:
    for role, spec in roles.items():
        kwargs = {"Tags": [{"Key": k, "Value": v} for k, v in spec.tags.items()]} if spec.tags else {}
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(spec.trust_document(account_id)),
                        Description="secret-zero local stack demo role", **kwargs)
        if spec.profile:
            iam.create_instance_profile(InstanceProfileName=role)
            iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)


def seed_aws(moto: MotoServer, admin: Keys, project_dir: Path, *, moto_workaround: bool = True) -> AwsSeed:
    iam = moto.client(admin, "iam")
    seed_roles(iam, DEMO_ROLES, ACCOUNT_ID)

    policy = broker_policy_text(project_dir)
    iam.create_user(UserName=BROKER_USER)
    iam.put_user_policy(UserName=BROKER_USER, PolicyName=BROKER_POLICY_NAME, PolicyDocument=policy)
    extra = moto_workaround_policy(policy) if moto_workaround else None
    if extra:
        iam.put_user_policy(UserName=BROKER_USER, PolicyName=MOTO_WORKAROUND_POLICY_NAME,
                            PolicyDocument=json.dumps(extra))
    key = iam.create_access_key(UserName=BROKER_USER)["AccessKey"]

    ddb = moto.client(admin, "dynamodb")
    from chalicelib.audit_schema import table_definitions  # the deployed tables' definitions

    definitions = table_definitions()
    for table, kind in ((AUDIT_TABLE, "audit"), (REPLAY_TABLE, "replay"), (QUARANTINE_TABLE, "quarantine")):
        ddb.create_table(TableName=table, **definitions[kind])
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "expires_at"})

    return AwsSeed(admin=admin, broker=Keys(key["AccessKeyId"], key["SecretAccessKey"]),
                   broker_policy=policy)


def seed_second_account(moto: MotoServer, admin: Keys, project_dir: Path, *,
                        moto_workaround: bool = True) -> Keys:
    """The second account: its admin user, the reader role the broker assumes, and
    the demo roles. Returns the admin's keys."""
    admin2 = moto.second_account_admin(admin)
    iam = moto.client(admin2, "iam")
    iam.create_role(RoleName=READER_ROLE, AssumeRolePolicyDocument=json.dumps(reader_trust_policy()),
                    Description="lets the secret-zero broker read callers' instances, roles and tasks")
    reader_policy = reader_policy_text(project_dir)
    iam.put_role_policy(RoleName=READER_ROLE, PolicyName=READER_POLICY_NAME, PolicyDocument=reader_policy)
    extra = moto_workaround_policy(reader_policy) if moto_workaround else None
    if extra:
        iam.put_role_policy(RoleName=READER_ROLE, PolicyName=MOTO_WORKAROUND_POLICY_NAME,
                            PolicyDocument=json.dumps(extra))
    seed_roles(iam, SECOND_ACCOUNT_ROLES, SECOND_ACCOUNT_ID)
    return admin2


def ec2_identity_document(instance: dict, account_id: str) -> dict:
    """The instance identity document of a described instance (what the ECS agent
    sends to RegisterContainerInstance), built by moto's own helper."""
    from types import SimpleNamespace

    from moto.ec2.utils import generate_instance_identity_document

    doc = generate_instance_identity_document(SimpleNamespace(
        id=instance["InstanceId"], placement=instance["Placement"],
        private_ip_address=instance.get("PrivateIpAddress"), instance_type=instance["InstanceType"],
        image_id=instance["ImageId"], kernel_id=instance.get("KernelId"), ramdisk_id=instance.get("RamdiskId"),
        architecture=instance.get("Architecture")))
    doc["accountId"] = account_id  # moto's helper writes a fixed one
    return doc


def seed_ecs(moto: MotoServer, admin: Keys, account_id: str) -> dict[str, str]:
    """demo-cluster, the demo-web task definition (task role demo-task) and one
    container instance (an EC2 host registered in the cluster), so that anyone with
    the account's admin keys can run_task there with the EC2 launch type."""
    ecs, ec2 = moto.client(admin, "ecs"), moto.client(admin, "ec2")
    cluster = ecs.create_cluster(clusterName=ECS_CLUSTER)["cluster"]["clusterArn"]
    task_def = ecs.register_task_definition(
        family=TASK_FAMILY, taskRoleArn=f"arn:aws:iam::{account_id}:role/{TASK_ROLE}", networkMode="bridge",
        requiresCompatibilities=["EC2"],
        containerDefinitions=[{"name": TASK_CONTAINER, "image": TASK_IMAGE, "cpu": 16, "memory": 32,
                               "essential": True}])["taskDefinition"]["taskDefinitionArn"]
    host = ec2.run_instances(ImageId=AMI_ID, MinCount=1, MaxCount=1, InstanceType="m5.large", TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"{ECS_CLUSTER}-host"}]}])["Instances"][0]
    container_instance = ecs.register_container_instance(
        cluster=ECS_CLUSTER, instanceIdentityDocument=json.dumps(ec2_identity_document(host, account_id))
    )["containerInstance"]["containerInstanceArn"]
    return {"cluster_arn": cluster, "task_definition_arn": task_def, "container_instance_arn": container_instance,
            "host_instance_id": host["InstanceId"]}


def put_vault_secret_id(moto: MotoServer, admin: Keys, secret_id: str, name: str = VAULT_SECRET_ID_SECRET,
                        whose: str = "the broker's own AppRole") -> None:
    """Create or update the Secrets Manager secret holding the broker's secret ID (or, with
    ``name``, the revoking identity's)."""
    sm = moto.client(admin, "secretsmanager")
    try:
        sm.put_secret_value(SecretId=name, SecretString=secret_id)
    except sm.exceptions.ResourceNotFoundException:
        sm.create_secret(Name=name, SecretString=secret_id, Description=f"secret ID of {whose} (local stack)")
