"""The local stack is real: moto verifies signatures and IAM policies, OpenBao
seals, AppRole secret IDs are single-use, the broker's Vault identity works."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import hvac
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from devstack import ACCOUNT_ID, SERVER_ID
from devstack.aws import MOTO_WORKAROUND_POLICY_NAME, VAULT_SECRET_ID_SECRET
from devstack.procs import pid_alive

PROJECT = Path(__file__).resolve().parent.parent
GCI_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def _signed_gci(creds: dict, secret: str | None = None) -> dict:
    """Headers of a GetCallerIdentity signed for https://sts.amazonaws.com/, as a
    client builds its proof (server-ID header signed)."""
    req = AWSRequest(method="POST", url="https://sts.amazonaws.com/", data=GCI_BODY, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Vault-AWS-IAM-Server-ID": SERVER_ID})
    SigV4Auth(Credentials(creds["access_key_id"], secret or creds["secret_access_key"],
                          creds.get("session_token")), "sts", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def _forward(stack, headers: dict) -> requests.Response:
    """What the broker does with BROKER_STS_FORWARD_URL: same bytes, signed Host kept."""
    return requests.post(stack.aws_endpoint_url + "/", data=GCI_BODY,
                         headers={**headers, "Host": "sts.amazonaws.com"}, timeout=5)


def test_moto_verifies_sigv4_and_returns_assumed_role_arn(stack):
    creds = stack.assume("demo-node", "i-0123456789abcdef0")

    forged = _forward(stack, _signed_gci(creds, secret="x" * 40))
    assert forged.status_code == 403
    assert "SignatureDoesNotMatch" in forged.text

    ok = _forward(stack, _signed_gci(creds))
    assert ok.status_code == 200, ok.text
    arn = re.search(r"<Arn>(.*?)</Arn>", ok.text).group(1)
    assert arn == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-node/i-0123456789abcdef0"

    # and through boto3, with the admin keys but a wrong secret
    bad = dict(access_key_id=stack.admin_keys.access_key_id, secret_access_key="wrong")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("sts", bad).get_caller_identity()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_broker_iam_user_is_least_privilege(stack):
    iam = stack.client("iam")
    attached = json.loads(json.dumps(iam.get_user_policy(
        UserName="secret-zero-broker", PolicyName="secret-zero-broker-dev")["PolicyDocument"]))
    assert attached == json.loads((PROJECT / ".chalice" / "policy-dev.json").read_text())
    names = iam.list_user_policies(UserName="secret-zero-broker")["PolicyNames"]
    assert sorted(names) == sorted(["secret-zero-broker-dev", MOTO_WORKAROUND_POLICY_NAME])

    ddb = stack.client("dynamodb")
    for table in ("secret-zero-audit", "secret-zero-replay"):
        ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}

    broker = stack.broker_keys
    stack.client("ec2", broker).describe_instances()
    stack.client("iam", broker).get_instance_profile(InstanceProfileName="demo-node")
    stack.client("dynamodb", broker).describe_table(TableName="secret-zero-audit")
    secret_id = stack.client("secretsmanager", broker).get_secret_value(
        SecretId=VAULT_SECRET_ID_SECRET)["SecretString"]
    assert secret_id == stack.vault_seed.broker_secret_id
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("iam", broker).create_user(UserName="mallory")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stack.client("sts", broker).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/demo-node", RoleSessionName="mallory")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_launch_instance_running_with_profile_and_tags(stack):
    iid = stack.launch_instance({"vault-role": "web"})
    inst = stack.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"
    assert inst["IamInstanceProfile"]["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/demo-node"
    assert {"Key": "vault-role", "Value": "web"} in inst["Tags"]
    stack.stop_instance(iid)
    assert stack.instance_state(iid) == "stopped"


def test_openbao_seals_and_unseals(stack):
    stack.seal_vault()
    try:
        assert stack.vault().sys.is_sealed()
        assert requests.get(stack.vault_addr + "/v1/sys/health", timeout=2).status_code == 503
    finally:
        stack.unseal_vault()
    assert not stack.vault().sys.is_sealed()
    assert stack.vault().secrets.kv.v2.read_secret_version(
        path="web/config", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["api_url"]


def test_web_secret_ids_are_single_use(stack):
    root = stack.vault()
    web = root.auth.approle.read_role("web")["data"]
    assert (web["secret_id_num_uses"], web["secret_id_ttl"], web["token_ttl"]) == (1, 300, 3600)
    assert web["token_policies"] == ["web"]
    own = root.auth.approle.read_role("secret-zero-broker")["data"]
    assert (own["secret_id_num_uses"], own["token_ttl"], own["token_max_ttl"]) == (0, 3600, 14400)
    role_id = root.auth.approle.read_role_id("web")["data"]["role_id"]
    secret_id = root.write_data("auth/approle/role/web/secret-id")["data"]["secret_id"]
    client = hvac.Client(url=stack.vault_addr)
    login = client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=True)
    assert login["auth"]["token_policies"] == ["default", "web"]
    assert client.secrets.kv.v2.read_secret_version(
        path="web/config", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["db_password"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path="batch/config", mount_point="secret",
                                                 raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.VaultError):
        hvac.Client(url=stack.vault_addr).auth.approle.login(role_id=role_id, secret_id=secret_id)


def test_broker_approle_survives_vault_restart(stack):
    def broker_login() -> hvac.Client:
        env = stack.broker_env()
        sid = stack.client("secretsmanager", stack.broker_keys).get_secret_value(
            SecretId=env["BROKER_VAULT_SECRET_ID_SECRET"])["SecretString"]
        c = hvac.Client(url=env["BROKER_VAULT_ADDR"])
        c.auth.approle.login(role_id=env["BROKER_VAULT_ROLE_ID"], secret_id=sid, use_token=True)
        return c

    wrapped = broker_login().write_data("auth/approle/role/web/secret-id", wrap_ttl="60s")
    assert wrapped["wrap_info"]["creation_path"] == "auth/approle/role/web/secret-id"

    stack.stop_vault()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(stack.vault_addr + "/v1/sys/health", timeout=1)
    finally:
        changed = stack.start_vault()
    assert changed == {}  # same port, same role ID, same secret ID
    c = broker_login()
    with pytest.raises(hvac.exceptions.Forbidden):  # its policy: wrapped only
        c.write_data("auth/approle/role/web/secret-id")
    with pytest.raises(hvac.exceptions.Forbidden):
        c.secrets.kv.v2.read_secret_version(path="web/config", mount_point="secret",
                                            raise_on_deleted_version=True)


def test_chalice_local_runner(stack, tmp_path, monkeypatch):
    """The runner behind ``local_broker``, on a stub app (the real one is tested elsewhere)."""
    project = tmp_path / "proj"
    shutil.copytree(PROJECT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployed", "deployments"))
    (project / "app.py").write_text(
        "import hashlib, os\nfrom chalice import Chalice, Response\n"
        "app = Chalice(app_name='secret-zero-broker')\n"
        "@app.route('/v1/health')\n"
        "def health():\n"  # digests only: the environment holds the broker's keys
        "    env = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in os.environ.items()\n"
        "           if k.startswith(('AWS_', 'BROKER_', 'GOOGLE_'))}\n"
        "    return Response(status_code=503, body=env)\n")
    monkeypatch.setenv("AWS_PROFILE", "someone-elses")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stale")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "someone-elses")
    from devstack.broker import ChaliceLocal

    broker = ChaliceLocal(tmp_path, stack.broker_env(), project_dir=project).start()
    try:
        broker.wait_ready(timeout=20)
        r = requests.get(broker.url + "/v1/health", timeout=5)
        assert r.status_code == 503
        env = r.json()
        for k, v in stack.broker_env().items():
            assert env[k] == hashlib.sha256(v.encode()).hexdigest(), k
        assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
        assert "GOOGLE_CLOUD_PROJECT" not in env
        pid = broker.pid
    finally:
        broker.stop()
    assert not pid_alive(pid)


def test_cli_up_status_down(tmp_path):
    state = tmp_path / "state"
    run = lambda *a: subprocess.run([sys.executable, "-m", "devstack", *a, "--dir", str(state)],
                                    cwd=PROJECT, capture_output=True, text=True, timeout=60)
    up = run("up", "--no-broker")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "OpenBao dev server on http://127.0.0.1:" in up.stdout
        endpoints = json.loads((state / "endpoints.json").read_text())
        assert (state / "endpoints.json").stat().st_mode & 0o077 == 0
        for secret in (endpoints["aws_admin_secret_access_key"], endpoints["vault_unseal_key"]):
            assert secret not in up.stdout + up.stderr
        status = run("status")
        assert status.returncode == 0 and "OpenBao: running" in status.stdout, status.stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in endpoints["pids"].values():
        assert pid is None or not pid_alive(pid)
    assert not state.exists()
    assert run("down").returncode == 0  # idempotent


# ---- the simulated Google -----------------------------------------------------------------

GCP_PROJECT, GCP_ZONE = "demo-project", "us-central1-a"
IDENTITY = "/computeMetadata/v1/instance/service-accounts/default/identity"
NO_PROXY = {"http": None, "https": None}


def _jwt_parts(token: str) -> tuple[dict, dict]:
    import base64
    header, payload = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2])
    return header, payload


def _compute(stack, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{stack.google.url}/compute/v1/{path}", headers=headers, timeout=5, proxies=NO_PROXY)


@pytest.fixture
def google_adc(stack, monkeypatch):
    """The broker's Google credentials as the broker process has them: the ADC file
    (workload identity federation from its AWS keys) and its AWS keys in the env."""
    env = stack.broker_env()
    for key in [k for k in list(__import__("os").environ) if k.startswith(("AWS_", "GOOGLE_"))]:
        monkeypatch.delenv(key)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.setenv(key, env[key])
    return env


def _authorized_session(env):
    """ADC as the broker should load it. Not ``google.auth.default(scopes=...)``: with an
    external_account file *and* scopes, google-auth looks the pool's project up at
    cloudresourcemanager.googleapis.com (the real one) before anything else."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    creds, _ = google.auth.default()
    assert type(creds).__module__ == "google.auth.aws"
    creds = google.auth.credentials.with_scopes_if_required(
        creds, ["https://www.googleapis.com/auth/compute.readonly"])
    return AuthorizedSession(creds)


@pytest.mark.parametrize("value, path", [(None, None), ("", None), ("root", None), ("/team-a/", "team-a"),
                                         ("admin/team-a", "admin/team-a")])
def test_a_namespace_is_a_path_or_the_root(value, path):
    from devstack.vault import namespace_path

    assert namespace_path(value) == path


@pytest.mark.parametrize("value", ["team a", "a//b", "root/x", "sys", "x;rm -rf ~", "a" * 65])
def test_a_namespace_that_is_no_path_is_refused_before_anything_starts(value, tmp_path):
    from devstack import Stack
    from devstack.procs import StackError

    with pytest.raises(StackError, match="not a Vault namespace path"):
        Stack(tmp_path / "s", vault_namespace=value)


def test_make_passes_vault_namespace_to_stack_up_and_the_demo():
    for target in ("stack-up", "demo"):
        # --no-print-directory: under `make test` the nested make would add "Leaving directory" lines
        dry = subprocess.run(["make", "--no-print-directory", "-n", target, "VAULT_NAMESPACE=team-a"], cwd=PROJECT,
                             capture_output=True, text=True, check=True).stdout
        assert "--vault-namespace 'team-a'" in dry.splitlines()[-1]
        dry = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=PROJECT, capture_output=True,
                             text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k != "VAULT_NAMESPACE"}).stdout
        assert "--vault-namespace" not in dry


def test_gcp_seed_and_endpoints(stack):
    env, ep = stack.broker_env(), stack.endpoints
    # the broker's own URL while chalice local runs (the local_broker fixture), else a fixed name
    expected = stack.broker_url if stack.broker is not None and stack.broker.proc else "https://secret-zero-broker.local"
    assert env["BROKER_GCP_AUDIENCE"] == ep["gcp_audience"] == stack.gcp_audience == expected
    assert env["BROKER_GCP_CERTS_URL"] == ep["gcp_certs_url"] == stack.google.url + "/oauth2/v1/certs"
    assert env["BROKER_GCP_COMPUTE_URL"] == ep["gcp_compute_url"] == stack.google.url
    adc = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
    assert adc == Path(ep["gcp_credentials_file"]) and adc.stat().st_mode & 0o077 == 0
    assert json.loads(adc.read_text())["type"] == "external_account"
    assert ep["gcp_metadata_url"] == stack.gcp_metadata_url_for("web-gce-1")
    seeded = stack.gcp_instance("web-gce-1")
    assert (seeded["status"], seeded["labels"]) == ("RUNNING", {"vault-role": "web"})
    assert seeded["serviceAccounts"][0]["email"] == "demo-node@demo-project.iam.gserviceaccount.com"


def test_gcp_metadata_server_behaves_like_googles(stack):
    import google.auth.jwt

    base = stack.gcp_metadata_url_for("web-gce-1")
    get = lambda path, headers=None, **params: requests.get(base + path, params=params, headers=headers or {},
                                                            timeout=5, proxies=NO_PROXY)
    flavor = {"Metadata-Flavor": "Google"}
    probe = get("/computeMetadata/v1/", flavor)
    assert probe.status_code == 200 and probe.headers["Metadata-Flavor"] == "Google"
    assert get(IDENTITY, audience="x").status_code == 403                      # no Metadata-Flavor
    assert get(IDENTITY, {"Metadata-Flavor": "google"}, audience="x").status_code == 403
    assert get(IDENTITY, {**flavor, "X-Forwarded-For": "10.0.0.1"}, audience="x").status_code == 403
    missing_aud = get(IDENTITY, flavor, format="full")
    assert missing_aud.status_code == 400 and "audience" in missing_aud.text
    assert get("/computeMetadata/v1/instance/id", flavor).text == stack.gcp_instance("web-gce-1")["id"]

    r = get(IDENTITY, flavor, audience="https://broker.example", format="full")
    assert r.status_code == 200 and r.headers["Metadata-Flavor"] == "Google"
    header, _ = _jwt_parts(r.text)
    certs = requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY).json()
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "JWT"} and header["kid"] in certs
    claims = google.auth.jwt.decode(r.text, certs=certs, audience="https://broker.example")
    gce = claims.pop("google")["compute_engine"]
    inst = stack.gcp_instance("web-gce-1")
    assert gce == {"instance_creation_timestamp": gce["instance_creation_timestamp"], "instance_id": inst["id"],
                   "instance_name": "web-gce-1", "project_id": GCP_PROJECT, "project_number": 123456789000,
                   "zone": GCP_ZONE}
    assert isinstance(gce["instance_creation_timestamp"], int)
    assert claims["iss"] == "https://accounts.google.com" and claims["email_verified"] is True
    assert claims["email"] == "demo-node@demo-project.iam.gserviceaccount.com"
    assert claims["sub"] == claims["azp"] and claims["sub"].isdigit() and claims["exp"] - claims["iat"] == 3600
    with pytest.raises(ValueError):
        google.auth.jwt.decode(r.text, certs=certs, audience="https://someone-else.example")
    standard = get(IDENTITY, flavor, audience="https://broker.example")
    assert set(_jwt_parts(standard.text)[1]) == {"aud", "azp", "exp", "iat", "iss", "sub"}


def test_gcp_compute_api_behaves_like_googles(stack, google_adc):
    path = f"projects/{GCP_PROJECT}/zones/{GCP_ZONE}/instances/web-gce-1"
    anon = _compute(stack, path)
    assert anon.status_code == 401 and anon.headers["WWW-Authenticate"].startswith("Bearer")
    assert anon.json()["error"]["errors"][0]["reason"] == "required"
    bogus = _compute(stack, path, "ya29.not-a-token")
    assert bogus.status_code == 401 and bogus.json()["error"]["status"] == "UNAUTHENTICATED"

    session = _authorized_session(google_adc)  # google-auth: STS exchange of a signed GetCallerIdentity
    base = google_adc["BROKER_GCP_COMPUTE_URL"] + "/compute/v1/"
    inst = session.get(base + path, timeout=5).json()
    assert inst["kind"] == "compute#instance" and inst["name"] == "web-gce-1" and inst["status"] == "RUNNING"
    assert isinstance(inst["id"], str) and inst["id"].isdigit() and int(inst["id"]) < 2**64
    assert inst["zone"] == f"https://www.googleapis.com/compute/v1/projects/{GCP_PROJECT}/zones/{GCP_ZONE}"
    assert inst["selfLink"] == f"https://www.googleapis.com/compute/v1/{path}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-07:00", inst["creationTimestamp"])

    forbidden = session.get(base + f"projects/other-project/zones/{GCP_ZONE}/instances/web-gce-1", timeout=5)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["errors"][0]["reason"] == "forbidden"
    missing = session.get(base + f"projects/{GCP_PROJECT}/zones/{GCP_ZONE}/instances/nope", timeout=5)
    msg = f"The resource 'projects/{GCP_PROJECT}/zones/{GCP_ZONE}/instances/nope' was not found"
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": 404, "message": msg, "errors": [
        {"message": msg, "domain": "global", "reason": "notFound"}]}}


def test_gcp_token_endpoints_refuse_wrong_credentials(stack, google_adc, monkeypatch):
    import google.auth.exceptions
    import google.oauth2.credentials
    from google.auth.transport.requests import Request

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # the STS exchange is checked
    with pytest.raises(google.auth.exceptions.OAuthError, match="SignatureDoesNotMatch"):
        _authorized_session(google_adc).get(stack.google.url + "/compute/v1/projects/x/zones/y/instances/z")

    oauth = stack.google.oauth_client  # the refresh_token grant (authorized_user credentials)
    def refresh(**override):
        kw = dict(oauth, token_uri=stack.google.url + "/token", token=None)
        kw.update(override)
        creds = google.oauth2.credentials.Credentials(**kw)
        creds.refresh(Request())
        return creds
    assert refresh().token.startswith("ya29.")
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        refresh(refresh_token="1//wrong")
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_client"):
        refresh(client_secret="wrong")


def test_gcp_instance_lifecycle(stack):
    made = stack.gcp_create_instance("lifecycle-1", status="STAGING")
    assert "labels" not in made and made["status"] == "STAGING"   # Google leaves empty fields out
    token = stack.gcp_instance_token("lifecycle-1", audience="aud")
    assert stack.gcp_set_status("lifecycle-1", "TERMINATED")["status"] == "TERMINATED"
    assert stack.gcp_set_labels("lifecycle-1", {"vault-role": "web"})["labels"] == {"vault-role": "web"}
    again = stack.gcp_recreate_instance("lifecycle-1")
    assert again["id"] != made["id"] and again["labels"] == {"vault-role": "web"}
    from datetime import datetime
    t = lambda inst: datetime.fromisoformat(inst["creationTimestamp"]).timestamp()
    assert int(t(again)) > _jwt_parts(token)[1]["google"]["compute_engine"]["instance_creation_timestamp"]
    assert int(t(again)) >= int(t(made)) + 1
    stack.gcp_delete_instance("lifecycle-1")
    r = requests.get(stack.gcp_metadata_url_for("lifecycle-1") + "/computeMetadata/v1/",
                     headers={"Metadata-Flavor": "Google"}, timeout=5, proxies=NO_PROXY)
    assert r.status_code == 404
    with pytest.raises(Exception, match="404"):
        stack.gcp_instance("lifecycle-1")


def test_gcp_keys_rotate_and_certs_are_counted(stack):
    import google.auth.jwt

    before = stack.gcp_certs_fetch_count()
    r = requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY)
    assert stack.gcp_certs_fetch_count() == before + 1
    assert re.fullmatch(r"public, max-age=\d+, must-revalidate, no-transform", r.headers["Cache-Control"])
    assert r.headers["Expires"].endswith("GMT")
    old_kid = stack.gcp_kids()[-1]
    new_kid = stack.gcp_rotate_key()
    token = stack.gcp_sa_token("svc@demo-project.iam.gserviceaccount.com", audience="aud")
    assert _jwt_parts(token)[0]["kid"] == new_kid
    certs = requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY).json()
    assert {old_kid, new_kid} <= set(certs)
    claims = google.auth.jwt.decode(token, certs=certs, audience="aud")
    assert "google" not in claims and claims["email_verified"] is True
    stack.gcp_drop_old_keys()
    assert stack.gcp_kids() == [new_kid]
    assert set(requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY).json()) == {new_kid}


def test_gcp_forged_tokens_and_outages(stack):
    import hashlib
    import hmac

    claims = {"iss": "https://evil.example", "aud": "aud", "iat": 1, "exp": 2}
    unsigned = stack.gcp_forge_token({"alg": "none", "kid": None}, claims, sign=False)
    assert unsigned.endswith(".") and _jwt_parts(unsigned) == ({"alg": "none", "typ": "JWT"}, claims)
    jku = stack.gcp_forge_token({"jku": "http://127.0.0.1:1/keys"}, claims)
    assert _jwt_parts(jku)[0] == {"alg": "RS256", "kid": stack.gcp_kids()[-1], "typ": "JWT",
                                  "jku": "http://127.0.0.1:1/keys"}
    hs = stack.gcp_forge_token({"alg": "HS256"}, claims, sign="hs256-public-key")
    pem = requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY).json()[stack.gcp_kids()[-1]]
    mac = hmac.new(pem.encode(), hs.rsplit(".", 1)[0].encode(), hashlib.sha256).digest()
    assert hs.rsplit(".", 1)[1] == __import__("base64").urlsafe_b64encode(mac).rstrip(b"=").decode()
    foreign = stack.gcp_forge_token(None, claims, key="unpublished")
    assert _jwt_parts(foreign)[0]["kid"] not in stack.gcp_kids()

    for which, probe in (("certs", lambda: requests.get(stack.gcp_certs_url, timeout=5, proxies=NO_PROXY)),
                         ("compute", lambda: _compute(stack, "projects/demo-project/zones/us-central1-a/instances/x"))):
        stack.gcp_outage(which, down=True)
        try:
            assert probe().status_code == 503
        finally:
            stack.gcp_outage(which, down=False)
        assert probe().status_code != 503


def test_gcp_instance_tokens_are_distinct_per_call(stack):
    first = stack.gcp_instance_token("web-gce-1", audience="aud-distinct")
    second = stack.gcp_instance_token("web-gce-1", audience="aud-distinct")
    assert first != second
    assert _jwt_parts(second)[1]["iat"] > _jwt_parts(first)[1]["iat"]


# ---- the second AWS account, trust policies, ECS (issue 10) ---------------------------------

SECOND = "210987654321"


def _client_error(call) -> dict:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response


def test_second_account_is_separate(stack):
    ep = stack.endpoints
    assert ep["second_account_id"] == SECOND
    admin2 = {"access_key_id": ep["second_account_admin_access_key_id"],
              "secret_access_key": ep["second_account_admin_secret_access_key"]}
    assert stack.client("sts", admin2).get_caller_identity()["Arn"] == f"arn:aws:iam::{SECOND}:user/admin"
    forged = _client_error(lambda: stack.client("sts", dict(admin2, secret_access_key="x" * 40)).get_caller_identity())
    assert forged["Error"]["Code"] == "SignatureDoesNotMatch"   # verified there too

    iam1, iam2 = stack.client("iam"), stack.client("iam", admin2)
    reader = iam2.get_role(RoleName="secret-zero-reader")["Role"]
    assert reader["Arn"] == f"arn:aws:iam::{SECOND}:role/secret-zero-reader"
    assert _client_error(lambda: iam1.get_role(RoleName="secret-zero-reader"))["Error"]["Code"] == "NoSuchEntity"
    # same role names, different roles: each account's own tags
    assert iam1.get_role(RoleName="demo-batch")["Role"]["Tags"] == [{"Key": "vault-role", "Value": "batch"}]
    assert "vault-role" not in {t["Key"] for t in iam2.get_role(RoleName="demo-batch")["Role"].get("Tags", [])}
    assert iam2.get_instance_profile(InstanceProfileName="demo-node")["InstanceProfile"]["Roles"][0]["Arn"] == \
        f"arn:aws:iam::{SECOND}:role/demo-node"

    iid = stack.launch_instance({"vault-role": "web"}, account=SECOND)
    inst = stack.describe_instance(iid, account=SECOND)
    assert inst["IamInstanceProfile"]["Arn"] == f"arn:aws:iam::{SECOND}:instance-profile/demo-node"
    assert {"Key": "vault-role", "Value": "web"} in inst["Tags"]
    seen_from_first = [i["InstanceId"] for r in stack.client("ec2").describe_instances()["Reservations"]
                       for i in r["Instances"]]
    assert iid not in seen_from_first
    creds = stack.instance_credentials(iid, account=SECOND)
    assert stack.client("sts", creds).get_caller_identity()["Arn"] == \
        f"arn:aws:sts::{SECOND}:assumed-role/demo-node/{iid}"


def test_reader_role_assumable_by_the_broker_with_the_external_id(stack):
    readers = json.loads(stack.broker_env()["BROKER_ACCOUNT_READERS"])
    assert readers == {SECOND: {"role_arn": f"arn:aws:iam::{SECOND}:role/secret-zero-reader",
                                "external_id": "secret-zero-local"}}
    trust = stack.trust_policy_of("secret-zero-reader", SECOND)
    assert trust["Statement"] == [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                   "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/secret-zero-broker"},
                                   "Condition": {"StringEquals": {"sts:ExternalId": "secret-zero-local"}}}]
    policy = stack.client("iam", stack.admin_keys_for(SECOND)).get_role_policy(
        RoleName="secret-zero-reader", PolicyName="secret-zero-reader")["PolicyDocument"]
    assert policy == json.loads((PROJECT / "policies" / "aws" / "reader-policy.json").read_text())

    # what the broker does: its own keys, the reader role of the caller's account, the external ID
    reader = stack.client("sts", stack.broker_keys).assume_role(
        RoleArn=readers[SECOND]["role_arn"], RoleSessionName="secret-zero-broker",
        ExternalId=readers[SECOND]["external_id"])["Credentials"]
    reader = {"access_key_id": reader["AccessKeyId"], "secret_access_key": reader["SecretAccessKey"],
              "session_token": reader["SessionToken"]}
    assert stack.client("sts", reader).get_caller_identity()["Arn"] == \
        f"arn:aws:sts::{SECOND}:assumed-role/secret-zero-reader/secret-zero-broker"
    # it reads the second account's facts, and only those the reader policy grants
    iid = stack.launch_instance({"vault-role": "web"}, account=SECOND)
    seen = [i["InstanceId"] for r in stack.client("ec2", reader).describe_instances()["Reservations"]
            for i in r["Instances"]]
    assert iid in seen
    assert stack.client("iam", reader).get_role(RoleName="demo-node")["Role"]["Arn"].startswith(f"arn:aws:iam::{SECOND}:")
    assert stack.client("iam", reader).get_role(RoleName="demo-node")["Role"]["Tags"] == [
        {"Key": "team", "Value": "platform"}]
    stack.client("iam", reader).get_instance_profile(InstanceProfileName="demo-node")
    task = stack.run_task({"vault-role": "web"}, account=SECOND)
    assert stack.client("ecs", reader).describe_tasks(cluster="demo-cluster", tasks=[task])["tasks"][0][
        "lastStatus"] == "RUNNING"
    for call in (lambda: stack.client("iam", reader).create_user(UserName="mallory"),
                 lambda: stack.client("ec2", reader).terminate_instances(InstanceIds=[iid]),
                 lambda: stack.client("ecs", reader).stop_task(cluster="demo-cluster", task=task)):
        assert _client_error(call)["ResponseMetadata"]["HTTPStatusCode"] == 403
    # the broker's own keys see nothing of the second account
    own = [i["InstanceId"] for r in stack.client("ec2", stack.broker_keys).describe_instances()["Reservations"]
           for i in r["Instances"]]
    assert iid not in own
    stack.stop_task(task)


def test_instance_and_task_roles_trust_only_their_service(stack):
    ec2_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    ecs_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    for account in (ACCOUNT_ID, SECOND):
        assert stack.trust_policy_of("demo-node", account) == ec2_only
        assert stack.trust_policy_of("demo-task", account) == ecs_only
    assert stack.trust_policy_of("demo-other") == ec2_only
    for role in ("demo-batch", "security-team"):
        assert stack.trust_policy_of(role)["Statement"][0]["Principal"] == {
            "AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/admin"}
        creds = stack.assume(role, "someone")   # as today: the admin, and moto checks that trust
        assert stack.client("sts", creds).get_caller_identity()["Arn"].endswith(f":assumed-role/{role}/someone")

    # the stack still stands in for EC2 (moto does not check a trust policy across accounts)
    creds = stack.assume("demo-node", "i-0123456789abcdef0")
    assert stack.client("sts", creds).get_caller_identity()["Arn"] == \
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-node/i-0123456789abcdef0"

    anyone = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    with stack.changed_trust_policy("demo-node", anyone):
        assert stack.trust_policy_of("demo-node") == anyone
        creds = stack.assume("demo-node", "i-0123456789abcdef1")
        assert stack.client("sts", creds).get_caller_identity()["Arn"].endswith("/demo-node/i-0123456789abcdef1")
    assert stack.trust_policy_of("demo-node") == ec2_only


def test_launch_instance_with_metadata_options(stack):
    iid = stack.launch_instance({"vault-role": "web"}, metadata_options={"HttpTokens": "required"})
    assert stack.describe_instance(iid)["MetadataOptions"]["HttpTokens"] == "required"
    assert stack.describe_instance(stack.launch_instance({"vault-role": "web"}))["MetadataOptions"][
        "HttpTokens"] == "optional"


def test_ecs_task_runs_stays_running_and_shows_its_tags(stack):
    arn = stack.run_task({"vault-role": "web", "team": "platform"})
    assert re.fullmatch(rf"arn:aws:ecs:us-east-1:{ACCOUNT_ID}:task/demo-cluster/[0-9a-f-]{{32,36}}", arn)
    ecs = stack.client("ecs")
    for _ in range(6):  # moto would advance it on each describe without the pinned transition
        task = ecs.describe_tasks(cluster="demo-cluster", tasks=[arn], include=["TAGS"])["tasks"][0]
        assert (task["lastStatus"], task["desiredStatus"]) == ("RUNNING", "RUNNING")
    assert {(t["key"], t["value"]) for t in task["tags"]} == {("vault-role", "web"), ("team", "platform")}
    assert task["group"] == "family:demo-web" and task["launchType"] == "EC2"
    assert task["taskDefinitionArn"] == f"arn:aws:ecs:us-east-1:{ACCOUNT_ID}:task-definition/demo-web:1"
    task_def = ecs.describe_task_definition(taskDefinition="demo-web")["taskDefinition"]
    assert task_def["taskRoleArn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/demo-task"
    assert stack.task_role(arn) == task_def["taskRoleArn"]

    # anyone holding the admin keys can run tasks there (EC2 launch type)
    again = ecs.run_task(cluster="demo-cluster", taskDefinition="demo-web", launchType="EC2")
    assert not again["failures"] and again["tasks"][0]["lastStatus"] == "RUNNING"
    ecs.stop_task(cluster="demo-cluster", task=again["tasks"][0]["taskArn"])

    other = stack.run_task({"vault-role": "batch"}, task_role="demo-batch")
    assert stack.task_role(other) == f"arn:aws:iam::{ACCOUNT_ID}:role/demo-batch"

    stack.stop_task(arn)
    assert stack.describe_task(arn)["lastStatus"] == "STOPPED"
    stack.stop_task(other)

    second = stack.run_task({"vault-role": "web"}, account=SECOND)
    assert second.split(":")[4] == SECOND
    assert ecs.describe_tasks(cluster="demo-cluster", tasks=[second])["tasks"] == []  # invisible from the first
    assert stack.describe_task(second)["lastStatus"] == "RUNNING"
    stack.stop_task(second)


def test_task_metadata_simulator_serves_the_task_and_its_role_credentials(stack, tmp_path):
    arn = stack.run_task({"vault-role": "web"})
    task_id = arn.rsplit("/", 1)[1]
    agent = stack.task_metadata(arn)
    assert stack.task_metadata(arn) is agent  # one agent per task
    http = requests.Session()
    http.trust_env = False
    meta = http.get(agent.metadata_uri + "/task", timeout=5).json()
    assert meta["TaskARN"] == arn and meta["Cluster"] == "demo-cluster" and meta["Family"] == "demo-web"
    assert (meta["Revision"], meta["LaunchType"], meta["KnownStatus"], meta["DesiredStatus"]) == \
        ("1", "EC2", "RUNNING", "RUNNING")
    container = http.get(agent.metadata_uri, timeout=5).json()
    assert container["Labels"]["com.amazonaws.ecs.task-arn"] == arn and container["Name"] == "web"
    assert meta["Containers"][0]["DockerId"] == container["DockerId"]
    assert http.get(agent.url + "/v2/credentials/not-the-id", timeout=5).status_code == 404

    # botocore's own container credential provider, in a process that has only the task's environment
    probe = ("import json, boto3\n"
             f"sts = boto3.client('sts', endpoint_url={stack.aws_endpoint_url!r})\n"
             "creds = boto3.Session().get_credentials()\n"
             "print(json.dumps({'method': creds.method, 'arn': sts.get_caller_identity()['Arn']}))\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **agent.env,
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"method": "container-role",
                                      "arn": f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-task/{task_id}"}

    stack.stop_task(arn)
    assert http.get(agent.metadata_uri + "/task", timeout=5).json()["KnownStatus"] == "STOPPED"
    assert http.get(agent.credentials_uri, timeout=5).status_code == 400  # a stopped task has no credentials


def _state_dir(stack, tmp_path) -> Path:
    """A state directory naming the session's stack, as `devstack up` writes it."""
    state = tmp_path / "state"
    stack.write_endpoints(state / "endpoints.json")
    return state


def _devstack(state, *args, env=None):
    return subprocess.run([sys.executable, "-m", "devstack", *args[:1], "--dir", str(state), *args[1:]],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120, env=env)


def _exports(text: str) -> dict[str, str]:
    import shlex
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def test_as_instance_prints_an_environment_broker_login_works_in(local_broker, tmp_path):
    stack = local_broker.stack
    state = _state_dir(stack, tmp_path)
    out = _devstack(state, "as-instance", "--tags", "vault-role=web")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^# EC2 instance i-[0-9a-f]+ \(new\) in account 123456789012: role demo-node", out.stdout, re.M)
    assert re.search(r"^unset .*\bAWS_PROFILE\b", out.stdout, re.M)
    env = _exports(out.stdout)
    assert env["BROKER_URL"] == stack.broker_url and env["BROKER_SERVER_ID"] == SERVER_ID
    assert env["VAULT_ADDR"] == stack.vault_addr and env["AWS_EC2_METADATA_DISABLED"] == "true"
    # a shell that evals it runs the real client as that instance
    token = tmp_path / "token"
    script = f'eval "$({sys.executable} -m devstack as-instance --dir {state} --tags vault-role=web)" && ' \
             f'{sys.executable} -m broker login --role web --sink {token}'
    login = subprocess.run(["bash", "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "AWS_PROFILE": "someone-elses"})
    assert login.returncode == 0, login.stderr
    assert hvac.Client(url=stack.vault_addr, token=token.read_text().strip()).secrets.kv.v2.read_secret_version(
        path="web/config", raise_on_deleted_version=True)["data"]["data"]["api_url"]

    # -- CMD: the command runs in the instance of the second account
    who = "import boto3; print(boto3.client('sts', endpoint_url=%r).get_caller_identity()['Arn'])" % \
        stack.aws_endpoint_url
    run = _devstack(state, "as-instance", "--account", SECOND, "--tags", "vault-role=web", "--",
                    sys.executable, "-c", who)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(rf"arn:aws:sts::{SECOND}:assumed-role/demo-node/i-[0-9a-f]+\n", run.stdout)


def test_as_task_and_as_gce_give_the_machine_environment(local_broker, tmp_path):
    stack = local_broker.stack
    state = _state_dir(stack, tmp_path)
    probe = ("import json, os, urllib.request, boto3\n"
             "task = json.load(urllib.request.urlopen(os.environ['ECS_CONTAINER_METADATA_URI_V4'] + '/task'))\n"
             f"arn = boto3.client('sts', endpoint_url={stack.aws_endpoint_url!r}).get_caller_identity()['Arn']\n"
             "print(json.dumps({'task': task['TaskARN'], 'arn': arn}))\n")
    run = _devstack(state, "as-task", "--tags", "vault-role=web", "--", sys.executable, "-c", probe)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    task_arn = seen["task"]
    assert seen["arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-task/{task_arn.rsplit('/', 1)[1]}"
    assert stack.describe_task(task_arn)["lastStatus"] == "STOPPED"  # the command was its essential container
    assert {(t["key"], t["value"]) for t in stack.describe_task(task_arn)["tags"]} == {("vault-role", "web")}

    # printed: the agent stays up (detached) for the shell that evals the lines
    out = _devstack(state, "as-task", "--tags", "vault-role=web")
    assert out.returncode == 0, out.stderr
    env = _exports(out.stdout)
    pid_files = list((state / "tasks").glob("*.pid"))
    try:
        assert set(env) >= {"ECS_CONTAINER_METADATA_URI_V4", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "BROKER_URL"}
        http = requests.Session()
        http.trust_env = False
        task = http.get(env["ECS_CONTAINER_METADATA_URI_V4"] + "/task", timeout=5).json()
        assert task["KnownStatus"] == "RUNNING" and task["TaskARN"].startswith(f"arn:aws:ecs:us-east-1:{ACCOUNT_ID}:")
        assert len(pid_files) == 1
    finally:
        import signal
        for pid_file in pid_files:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)  # the agent leads its own process group

    token = tmp_path / "gce-token"
    run = _devstack(state, "as-gce", "--labels", "vault-role=web", "--name", "as-gce-1", "--",
                    sys.executable, "-m", "broker", "login", "--role", "web", "--sink", str(token))
    assert run.returncode == 0, run.stderr
    assert "cloud: GCP" in run.stderr and token.stat().st_mode & 0o077 == 0
    assert stack.gcp_instance("as-gce-1")["labels"] == {"vault-role": "web"}
    out = _devstack(state, "as-gce", "--instance", "as-gce-1")
    assert _exports(out.stdout)["BROKER_GCP_METADATA_URL"] == stack.gcp_metadata_url_for("as-gce-1")
    assert "AWS_ACCESS_KEY_ID" not in _exports(out.stdout)


def test_as_commands_name_their_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "devstack", "as-instance", "--dir", str(tmp_path / "none")],
                         cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no local stack runs" in out.stderr and "make stack-up" in out.stderr
