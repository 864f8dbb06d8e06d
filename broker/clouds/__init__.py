"""Which cloud proves this machine's identity, and how: the only cloud-specific part
of ``broker login``. Everything after it (the call and its retries, the creation-path
checks, unwrap, hand-off, exit codes) is the same for every cloud.

A :class:`ProofSource` gives the broker route and makes a fresh proof body for each
attempt: a SigV4-signed ``GetCallerIdentity`` on AWS (``POST /v1/credentials/aws``),
a GCE instance identity token on GCP (``POST /v1/credentials/gcp``, ``{"jwt": ...}``).

With ``--cloud auto`` (the default) the cloud is found by probing, each probe short:
1. AWS credentials that botocore finds without the EC2 instance metadata service
   (environment, shared files, SSO, ECS task role, ...);
2. a GCE metadata server (``Metadata-Flavor: Google`` on ``/computeMetadata/v1/``, 1 s);
3. the EC2 instance metadata service (botocore's own short timeout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from broker.clouds import ecs
from broker.errors import NoCredentialsError, UsageError

CLOUDS = ("auto", "aws", "gcp")
AWS_PATH = "/v1/credentials/aws"
GCP_PATH = "/v1/credentials/gcp"
GCE_PROBE_TIMEOUT = 1.0

AWS_REPLAY_HINT = "another process with the same AWS credentials signed in the same second?"
GCP_REPLAY_HINT = ("another process on this instance fetched the same identity token in the same second, "
                   "or the metadata server handed out a token already used?")


@dataclass
class ProofSource:
    cloud: str                              # "aws" or "gcp"
    path: str                               # the broker route
    make: Callable[[], dict[str, str]]      # a fresh proof body (minus "role") per attempt
    replay_hint: str
    description: str                        # for the operator; never holds a secret


def _aws_credentials(*, imds: bool) -> Any:
    """botocore's default chain without the EC2 instance metadata provider (``imds=False``)
    or that provider alone (``imds=True``); None when botocore is missing or finds nothing."""
    try:
        import botocore.session  # noqa: F401 - ImportError when botocore is missing

        from broker.clouds.botocore_session import new_session
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return None
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        resolver = new_session().get_component("credential_provider")
        if imds:
            provider = resolver.get_provider("iam-role")
            return provider.load()
        resolver.remove("iam-role")
        return resolver.load_credentials()
    except BotoCoreError:
        return None
    except Exception:  # noqa: BLE001 - a probe: anything odd means "not this cloud"
        return None


def detect_cloud(metadata_url: str, log: Callable[[str], None]) -> tuple[str, Any]:
    """("aws", botocore credentials) or ("gcp", None); NoCredentialsError when neither."""
    from broker.clouds.gcp import probe_gce

    creds = _aws_credentials(imds=False)
    if creds is not None:
        log("cloud: AWS (credentials from the environment, files or the container role)")
        return "aws", creds
    if probe_gce(metadata_url, GCE_PROBE_TIMEOUT):
        log(f"cloud: GCP (GCE metadata server at {metadata_url})")
        return "gcp", None
    creds = _aws_credentials(imds=True)
    if creds is not None:
        log("cloud: AWS (EC2 instance profile via the instance metadata service)")
        return "aws", creds
    raise NoCredentialsError(
        "no cloud identity found: no AWS credentials (environment, shared files, ECS task role, EC2 instance "
        f"metadata service) and no GCE metadata server answering at {metadata_url}; "
        "use --cloud aws|gcp to say which, and see docs/client.md")


def build_proof_source(
    *,
    cloud: str,
    broker_url: str,
    server_id: str | None,
    sts_url: str,
    sts_region: str | None,
    audience: str | None,
    metadata_url: str | None,
    timeout: float,
    add_secret: Callable[[str], None],
    log: Callable[[str], None],
) -> ProofSource:
    """The proof source for ``cloud`` (``auto``: detected). Usage errors come before
    any probe; ``add_secret`` is handed every token so that output is scrubbed of it."""
    from broker.clouds.gcp import MetadataIdentity, normalize_metadata_url

    if cloud not in CLOUDS:
        raise UsageError(f"--cloud must be one of {', '.join(CLOUDS)}, got {cloud!r}")
    base = normalize_metadata_url(metadata_url)
    credentials = None
    if cloud == "auto":
        cloud, credentials = detect_cloud(base, log)

    if cloud == "aws":
        from broker.clouds.aws import ProofSigner

        if not server_id:
            raise UsageError("missing --server-id/BROKER_SERVER_ID (needed for the AWS proof)")
        signer = ProofSigner(server_id, sts_url=sts_url, region=sts_region, credentials=credentials)
        extra: dict[str, str] = {}
        uri = ecs.metadata_uri()
        if uri and ecs.signs_as_task_role():  # inside an ECS task, as its task role: name the task
            extra["ecs_task_arn"] = ecs.task_arn(uri)
            log(f"ECS task: {extra['ecs_task_arn']}")

        def make_aws() -> dict[str, str]:
            proof = signer.sign()
            for value in proof.secret_values():  # the signature and session token: never printed
                add_secret(value)
            return {**proof.login_fields(), **extra}

        return ProofSource("aws", AWS_PATH, make_aws, AWS_REPLAY_HINT, f"a signed sts:GetCallerIdentity for {signer.url}")

    identity = MetadataIdentity(audience or broker_url, metadata_url=base, timeout=min(timeout, 5.0))

    def make() -> dict[str, str]:
        token = identity.fetch()
        add_secret(token)
        add_secret(token.rsplit(".", 1)[-1])  # the signature alone is enough to recognise it
        if identity.last_token_reused:
            log("warning: the metadata server returned the same identity token as before")
        return {"jwt": token}

    return ProofSource("gcp", GCP_PATH, make, GCP_REPLAY_HINT,
                       f"a GCE identity token (audience {identity.audience}) from {base}")
