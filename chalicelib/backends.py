"""Build every backend client from the settings, in one place.

Tests and the local stack point the same code at local servers through the
settings (BROKER_AWS_ENDPOINT_URL, BROKER_STS_FORWARD_URL, BROKER_VAULT_ADDR).
"""

from .aws_calls import call
from .errors import Unavailable
from .jsonlog import get_logger


def aws_client_factory(settings):
    import botocore.config
    import botocore.session

    session = botocore.session.get_session()
    config = botocore.config.Config(
        connect_timeout=2, read_timeout=5,
        retries={"mode": "standard", "max_attempts": 2},
        max_pool_connections=20,
    )
    # DynamoDB answers in milliseconds; a hanging table must not hold a request for
    # 2 attempts x 5 s on each of its calls (the replay write, then the audit write of
    # the failure), which would pass the Lambda timeout and API Gateway's 29 s.
    fast = config.merge(botocore.config.Config(connect_timeout=1, read_timeout=2))

    def make(service, region=None):
        return session.create_client(service, region_name=region or settings.aws_region,
                                     endpoint_url=settings.aws_endpoint_url,
                                     config=fast if service == "dynamodb" else config)

    return make


def http_session():
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment on the proof path
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=20, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def build_service(settings):
    from .audit import AuditStore
    from .minter import VaultMinter
    from .quarantine import QuarantineStore
    from .replay import ReplayStore
    from .rules import load_rules
    from .security import SecurityService
    from .service import BrokerService

    rules = load_rules(settings.rules_file)
    make = aws_client_factory(settings)
    dynamodb = make("dynamodb")
    secrets = make("secretsmanager")

    def fetch_secret_id():
        value = call("secrets manager", secrets.get_secret_value, SecretId=settings.vault_secret_id_secret)
        secret = (value.get("SecretString") or "").strip()
        if not secret:
            raise Unavailable("the broker's Vault credentials are missing", backend="secrets manager",
                              detail=f"secret {settings.vault_secret_id_secret} is empty")
        return secret

    methods = {"aws": lambda: aws_method(settings, make)}
    if settings.gcp_audience:
        methods["gcp"] = lambda: gcp_method(settings)
    quarantine = QuarantineStore(dynamodb, settings.quarantine_table) if settings.quarantine_table else None
    service = BrokerService(
        settings=settings,
        rules=rules,
        methods=methods,
        replay=ReplayStore(dynamodb, settings.replay_table),
        minter=VaultMinter(settings, http_session(), fetch_secret_id),
        audit=AuditStore(dynamodb, settings.audit_table, settings.audit_retention_days),
        logger=get_logger(settings.log_level),
        quarantine=quarantine,
    )
    # The security team's routes and the incident reports (chalicelib/security.py).
    service.security = SecurityService.for_service(service, dynamodb=dynamodb, quarantine=quarantine)
    return service


def aws_method(settings, make):
    from .aws_facts import AwsFactsReader
    from .aws_proof import AwsProofVerifier
    from .login_request import parse_aws_login
    from .service import ProofMethod

    verifier = AwsProofVerifier(settings, http_session())
    reader = AwsFactsReader(make("iam"), {r: make("ec2", r) for r in settings.ec2_regions})
    return ProofMethod(parse=parse_aws_login, verify=verifier.verify, read_facts=reader.read)


def gcp_method(settings):
    # Built on the first GCP request: AWS-only traffic never imports the Google libraries.
    from .gcp_facts import ComputeSession, GcpFactsReader
    from .gcp_proof import GcpProofVerifier, GoogleCerts, parse_gcp_login
    from .service import ProofMethod

    verifier = GcpProofVerifier(settings, GoogleCerts(http_session(), settings.gcp_certs_url))
    reader = GcpFactsReader(ComputeSession(), settings.gcp_compute_url)
    return ProofMethod(parse=parse_gcp_login, verify=verifier.verify, read_facts=reader.read)
