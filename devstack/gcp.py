"""The simulated Google (devstack/google_sim.py) as a process of the stack, its seed,
and the broker's Application Default Credentials file."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

from .procs import LoopbackServer, StackError, start_process

SIM_SCRIPT = Path(__file__).resolve().parent / "google_sim.py"

PROJECT = "demo-project"
PROJECT_NUMBER = 123456789000
ZONE = "us-central1-a"
SEED_INSTANCE = "web-gce-1"
NODE_SA = "demo-node@demo-project.iam.gserviceaccount.com"
DEFAULT_AUDIENCE = "https://secret-zero-broker.local"  # BROKER_GCP_AUDIENCE when no broker process runs
READABLE_PROJECTS = (PROJECT,)
CERTS_MAX_AGE = 3600
ADC_FILE = "gcp-credentials.json"
# The broker reaches Google with workload identity federation from its AWS identity,
# as in production: a pool provider of type AWS in the demo project.
WIF_AUDIENCE = (f"//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
                "workloadIdentityPools/secret-zero-local/providers/aws")
AWS_SUBJECT_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"

# never inherited from the developer's shell
_DROP_PREFIXES = ("AWS_", "GOOGLE_", "GCE_METADATA_", "CLOUDSDK_")


class GoogleSim(LoopbackServer):
    """``google_sim.py`` on a loopback port."""

    log_name = "google.log"

    def __init__(self, workdir: Path, port: int | None = None, detached: bool = False,
                 certs_max_age: int = CERTS_MAX_AGE, readable_projects: tuple[str, ...] = READABLE_PROJECTS):
        super().__init__(workdir, port, detached)
        self.certs_max_age = certs_max_age
        self.readable_projects = readable_projects
        self._http = requests.Session()
        self._http.trust_env = False  # loopback only: never through a proxy
        # an OAuth client of the simulated accounts.google.com (refresh_token grant)
        self.oauth_client = {"client_id": f"{secrets.randbelow(10**12):012d}-secretzero.apps.googleusercontent.com",
                             "client_secret": "GOCSPX-" + secrets.token_urlsafe(21),
                             "refresh_token": "1//" + secrets.token_urlsafe(60)}

    def start(self) -> "GoogleSim":
        argv = [sys.executable, str(SIM_SCRIPT), "--port", str(self.port),
                "--certs-max-age", str(self.certs_max_age),
                "--readable-projects", ",".join(self.readable_projects),
                "--project", f"{PROJECT}={PROJECT_NUMBER}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
        env["GOOGLE_SIM_OAUTH_CLIENT"] = json.dumps(self.oauth_client)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = start_process("google sim", argv, self.log_path, env=env, detached=self.detached)
        return self

    def wait_ready(self, timeout: float = 15.0) -> "GoogleSim":
        return self._wait_until_ready(lambda: self._http.get(f"{self.url}/_admin/health", timeout=1).status_code == 200,
                                      f"the Google simulator to answer on {self.url}", timeout)

    def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        """Call the admin API; returns the JSON answer, raises StackError on an error."""
        r = self._http.request(method, f"{self.url}/_admin/{path.lstrip('/')}", json=body, timeout=10)
        if r.status_code >= 300:
            try:
                detail = r.json().get("error")
            except ValueError:
                detail = r.text[:200]
            raise StackError(f"google sim {method} /_admin/{path}: HTTP {r.status_code}: {detail}")
        return r.json()

    def metadata_url_for(self, name: str, project: str = PROJECT, zone: str = ZONE) -> str:
        """The base URL of a simulated instance's metadata server (what
        ``http://metadata.google.internal`` is on that instance)."""
        return f"{self.url}/instances/{project}/{zone}/{name}"

    def configure_federation(self, aws_keys: dict[str, dict[str, str]]) -> None:
        """Let these AWS keys (access key ID -> {secret, arn}) exchange signed
        GetCallerIdentity requests for Google access tokens (workload identity federation)."""
        self.admin("POST", "config", {"aws_keys": aws_keys, "wif_audience": WIF_AUDIENCE})


def seed_google(sim: GoogleSim) -> dict:
    """The seeded GCE instance: web-gce-1 in demo-project/us-central1-a, running as
    demo-node@, labelled vault-role=web. Returns its Compute JSON."""
    return sim.admin("POST", "instances", {
        "project": PROJECT, "zone": ZONE, "name": SEED_INSTANCE, "status": "RUNNING",
        "labels": {"vault-role": "web"}, "service_account": NODE_SA, "project_number": PROJECT_NUMBER})


def adc_config(sim_url: str) -> dict:
    """An ``external_account`` ADC file for an AWS workload identity pool provider, as
    ``gcloud iam workload-identity-pools create-cred-config ... --aws --enable-imdsv2``
    writes it, with the token URL pointing at the simulator. google-auth signs a
    GetCallerIdentity with the AWS credentials of the environment (IMDS only when there
    are none) and exchanges it for a Google access token: no service account key."""
    return {
        "type": "external_account",
        "audience": WIF_AUDIENCE,
        "subject_token_type": AWS_SUBJECT_TOKEN_TYPE,
        "token_url": f"{sim_url}/v1/token",
        "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url":
                "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token",
        },
    }


__all__ = ["GoogleSim", "seed_google", "adc_config", "PROJECT", "PROJECT_NUMBER", "ZONE", "SEED_INSTANCE",
           "NODE_SA", "DEFAULT_AUDIENCE", "WIF_AUDIENCE", "ADC_FILE"]
