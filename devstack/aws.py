"""moto server with SigV4 verification on, its bootstrap admin, and the AWS seed."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session
import requests
from botocore.config import Config

from .procs import LoopbackServer, StackError, find_executable, start_process

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
ADMIN_USER = "admin"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{ADMIN_USER}"
BROKER_USER = "secret-zero-broker"
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
AMI_ID = "ami-12c6146b"  # any ID works with moto; this is moto's example AMI

# The unauthenticated requests moto allows before it starts verifying: exactly
# the three bootstrap calls in bootstrap_admin(), nothing left over.
BOOTSTRAP_REQUESTS = 3

_ALLOW_ALL = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def trust_policy(principal_arn: str = ADMIN_ARN) -> dict:
    """Trust policy letting ``principal_arn`` assume the role (any session name)."""
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal_arn},
                           "Action": "sts:AssumeRole"}]}


# role name -> (tags, has an instance profile of the same name)
DEMO_ROLES: dict[str, tuple[dict[str, str], bool]] = {
    "demo-node": ({"team": "platform"}, True),
    "demo-batch": ({"vault-role": "batch"}, False),
    "demo-other": ({}, True),
    "security-team": ({}, False),  # the security team: [security] principal_arns in policies/rules.toml
}


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
        argv = [find_executable("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)
        env["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"  # ~1 s of the first EC2 call; AMI IDs are not validated anyway
        env["PYTHONUNBUFFERED"] = "1"
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

    def bootstrap_admin(self) -> Keys:
        """Create the ``admin`` user within the unauthenticated budget, then prove
        that the budget is spent: a request signed with a wrong secret must fail."""
        anon = Keys("AKIABOOTSTRAPBOOTSTR", "bootstrap")
        # no retries: a retried request would use up an unauthenticated slot
        iam = self.client(anon, "iam", retries={"max_attempts": 1, "mode": "standard"})
        try:
            iam.create_user(UserName=ADMIN_USER)                          # 1
            iam.put_user_policy(UserName=ADMIN_USER, PolicyName="allow-all",  # 2
                                PolicyDocument=json.dumps(_ALLOW_ALL))
            key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]  # 3
        except botocore.exceptions.ClientError as e:
            raise StackError(f"moto bootstrap failed (was this server fresh?): {e}") from e
        admin = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        self.check_signatures_verified(admin)
        return admin

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


def broker_policy_text(project_dir: Path) -> str:
    return (Path(project_dir) / ".chalice" / "policy-dev.json").read_text()


def moto_workaround_policy(policy_text: str) -> dict | None:
    """The statements of the broker policy whose Resource is not ``*``, with
    Resource ``*`` (same actions). moto compares non-IAM actions against the
    resource ``*`` only, so without this the scoped DynamoDB and Secrets Manager
    statements would deny calls the broker needs (checked with moto 5.2.5)."""
    doc = json.loads(policy_text)
    stmts = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
    out = []
    for st in stmts:
        if st.get("Effect") != "Allow" or st.get("Resource") in ("*", ["*"]) or "Resource" not in st:
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if all(a.startswith("logs:") for a in actions):
            continue  # nothing local writes CloudWatch logs
        out.append({"Sid": (st.get("Sid") or "Stmt") + "MotoUnscoped", "Effect": "Allow",
                    "Action": actions, "Resource": "*"})
    if not out:
        return None
    return {"Version": "2012-10-17", "Statement": out}


def seed_aws(moto: MotoServer, admin: Keys, project_dir: Path, *, moto_workaround: bool = True) -> AwsSeed:
    iam = moto.client(admin, "iam")
    for role, (tags, with_profile) in DEMO_ROLES.items():
        kwargs = {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust_policy()),
                        Description="secret-zero local stack demo role", **kwargs)
        if with_profile:
            iam.create_instance_profile(InstanceProfileName=role)
            iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)

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


def put_vault_secret_id(moto: MotoServer, admin: Keys, secret_id: str) -> None:
    """Create or update the Secrets Manager secret holding the broker's secret ID."""
    sm = moto.client(admin, "secretsmanager")
    try:
        sm.put_secret_value(SecretId=VAULT_SECRET_ID_SECRET, SecretString=secret_id)
    except sm.exceptions.ResourceNotFoundException:
        sm.create_secret(Name=VAULT_SECRET_ID_SECRET, SecretString=secret_id,
                         Description="secret ID of the broker's own AppRole (local stack)")
