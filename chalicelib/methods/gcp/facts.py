"""Facts about a verified GCP caller, read by the broker with its own Google credentials.

A GCE instance token (`format=full`) claims an instance; the broker reads that
instance with the Compute API (`instances.get`) and the claim must hold: the
instance exists, runs (or is provisioning/staging), has the token's instance ID,
was created no later than the token says (a deleted and recreated instance
reusing the name is caught), and runs as the token's service account. Labels
come from the Compute API, never from the caller.
"""

import json
import os
import re
import threading
from datetime import datetime

from ...errors import InvalidProof, Unavailable
from .model import GceInstanceFacts, GcpFacts
from .proof import service_account_project, verified_claims

COMPUTE_READONLY = "https://www.googleapis.com/auth/compute.readonly"
LIVE_STATUSES = frozenset({"RUNNING", "PROVISIONING", "STAGING"})
_PROJECT = re.compile(r"^[a-z][a-z0-9.:-]{4,61}[a-z0-9]$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class ComputeSession:
    """An authorized HTTP session for the Compute API, built on first use from ADC.

    Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS may name a
    workload identity federation file (`external_account`), so the Lambda's AWS role
    reaches GCP without any service account key (docs/gcp.md).
    """

    def __init__(self):
        self._session = None
        self._lock = threading.Lock()

    def get(self, url):
        return self._authorized().get(url, timeout=(2, 5), allow_redirects=False)

    def _authorized(self):
        with self._lock:
            if self._session is None:
                import google.auth
                import google.auth.exceptions
                from google.auth.transport.requests import AuthorizedSession

                try:
                    credentials = _load_credentials()
                except (google.auth.exceptions.GoogleAuthError, OSError, ValueError, KeyError) as e:
                    raise Unavailable("the broker has no Google credentials", backend="gcp credentials",
                                      retry_after=60, detail=f"Application Default Credentials: {type(e).__name__}") from None
                self._session = AuthorizedSession(credentials)
            return self._session


def _load_credentials():
    """The broker's Google credentials: the file GOOGLE_APPLICATION_CREDENTIALS names, else ADC.

    Each file type has its own loader: the generic ones look the project up over the
    network at load time (and would load any credential type a file claims).
    """
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        import google.auth

        return google.auth.default(scopes=[COMPUTE_READONLY])[0]
    with open(path) as f:
        info = json.load(f)
    kind = info.get("type")
    if kind == "external_account":  # workload identity federation: no key anywhere
        if str(info.get("credential_source", {}).get("environment_id", "")).startswith("aws"):
            from google.auth import aws

            return aws.Credentials.from_info(info, scopes=[COMPUTE_READONLY])
        from google.auth import identity_pool

        return identity_pool.Credentials.from_info(info, scopes=[COMPUTE_READONLY])
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(info, scopes=[COMPUTE_READONLY])
    if kind == "authorized_user":
        from google.oauth2 import credentials

        return credentials.Credentials.from_authorized_user_info(info, scopes=[COMPUTE_READONLY])
    raise ValueError(f"unsupported Google credentials type {kind!r}")


class GcpFactsReader:
    def __init__(self, compute, compute_url):
        self._compute = compute
        self._compute_url = compute_url.rstrip("/")

    def read(self, caller, login):
        claims = verified_claims(login)  # verified by the proof step, types included
        email = claims.get("email")
        if not isinstance(email, str) or claims.get("email_verified") is not True:
            raise InvalidProof("the token carries no verified service account email")
        gce = (claims.get("google") or {}).get("compute_engine")
        if gce is None:
            return GcpFacts(email=email, project_id=service_account_project(email))
        if not isinstance(gce, dict):
            raise InvalidProof("the token's google.compute_engine claim is malformed")
        instance, claim_error = self._verify_instance(gce, email)
        return GcpFacts(email=email, project_id=gce.get("project_id"), instance=instance,
                        claim_error=claim_error, claimed_instance=gce.get("instance_id"))

    def _verify_instance(self, gce, email):
        project, zone, name = gce.get("project_id"), gce.get("zone"), gce.get("instance_name")
        instance_id, created_claim = gce.get("instance_id"), gce.get("instance_creation_timestamp")
        if not (isinstance(project, str) and _PROJECT.match(project) and isinstance(zone, str) and _ZONE.match(zone)
                and isinstance(name, str) and _NAME.match(name) and isinstance(instance_id, str) and instance_id.isdigit()
                and isinstance(created_claim, int)):
            raise InvalidProof("the token's google.compute_engine claims are incomplete or malformed")
        where = f"{project}/{zone}/{name}"
        raw = self._get_instance(project, zone, name)
        if isinstance(raw, str):
            return None, raw
        if str(raw.get("id")) != instance_id:
            return None, f"instance {where} has another ID than the token's: it was deleted and recreated"
        try:
            created = datetime.fromisoformat(raw["creationTimestamp"]).timestamp()
        except (KeyError, TypeError, ValueError):
            raise Unavailable("the Compute API answered an unreadable instance", backend="gcp compute") from None
        if int(created) > created_claim:
            return None, f"instance {where} was created after the token's instance: it was recreated"
        status = raw.get("status", "UNKNOWN")
        if status not in LIVE_STATUSES:
            return None, f"instance {where} is {status}, not running"
        accounts = tuple(sa.get("email", "") for sa in raw.get("serviceAccounts") or [])
        if email not in accounts:
            return None, f"instance {where} does not run as {email}"
        labels = raw.get("labels") or {}
        return GceInstanceFacts(
            instance_id=instance_id, name=name, project_id=project,
            project_number=str(gce.get("project_number", "")), zone=zone, region=zone.rsplit("-", 1)[0],
            status=status, service_accounts=accounts, labels=dict(labels),
        ), None

    def _get_instance(self, project, zone, name):
        """The instance's JSON, or a string saying why the claim fails."""
        url = f"{self._compute_url}/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
        try:
            response = self._compute.get(url)
        except Unavailable:
            raise
        except Exception as e:  # connection errors, timeouts, credential refresh failures
            raise Unavailable("the Compute API could not be reached", backend="gcp compute",
                              detail=f"instances.get failed: {type(e).__name__}") from None
        if response.status_code == 404:
            return f"instance {project}/{zone}/{name} does not exist (any more)"
        if response.status_code == 403:
            return f"the broker may not read instances of project {project}"
        if response.status_code != 200:
            raise Unavailable("the Compute API could not answer", backend="gcp compute",
                              detail=f"instances.get answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise Unavailable("the Compute API answered an unreadable instance", backend="gcp compute") from None
