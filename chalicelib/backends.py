"""Build every backend client from the settings, in one place.

Tests and the local stack point the same code at local servers through the
settings (BROKER_AWS_ENDPOINT_URL, BROKER_STS_FORWARD_URL, BROKER_VAULT_ADDR).
The proof methods come from the registry (chalicelib/methods/__init__.py); their
rule conditions are handed to the policy engine here.
"""

from .aws_calls import call
from .errors import Unavailable
from .jsonlog import get_logger


def aws_client_factory(settings):
    """make(service, region=None, **credentials) -> a botocore client.

    A fresh botocore session per service build (credentials are resolved again, as a
    rebuilt service needs), with the leaner settings of chalicelib/aws_clients.py
    (benchmark 8): a fixed User-Agent, no client-side validation, raw timestamps.
    DynamoDB fails faster than the rest: a hanging table must not hold a request for
    2 attempts x 5 s on each of its calls, past the Lambda timeout and API Gateway's 29 s.
    """
    import botocore.session

    from .aws_clients import _keep_timestamp, client_configs

    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_keep_timestamp)
    config, fast = client_configs()

    def make(service, region=None, **credentials):
        """A client of the broker's own credentials, or of the given ones (a reader role's)."""
        return session.create_client(service, region_name=region or settings.aws_region,
                                     endpoint_url=settings.aws_endpoint_url,
                                     config=fast if service == "dynamodb" else config, **credentials)

    return make


def http_session():
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment on the proof path
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=20, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def enabled_methods(settings):
    """The registry's methods whose settings are given (GCP needs BROKER_GCP_AUDIENCE)."""
    from .methods import REGISTRY

    return [name for name in REGISTRY if settings.methods.get(name) is not None]


def build_service(settings):
    from .admission import Admission
    from .audit import AuditStore
    from .methods import package
    from .minter import VaultMinter
    from .pipeline.frame import AuditedRequests
    from .pipeline.issuance import BrokerService
    from .quarantine import QuarantineStore
    from .rules_source import LiveRules, RulesSource
    from .security import SecurityService

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

    names = enabled_methods(settings)
    live = {}
    methods = {name: (lambda name=name: package(name).build(settings, make, http_session(), lambda: live["rules"]))
               for name in names}
    # The AWS method is built now: every version of the rules is checked against the
    # accounts it can read (a rule needing facts of an unreadable account is refused).
    aws = methods["aws"]()
    methods["aws"] = lambda: aws

    def deployment_problems(candidate):
        return [p for name in names for p in package(name).check_rules(candidate, aws.readers.accounts())]

    kind, location = settings.rules_source or ("file", settings.rules_file)
    rules = live["rules"] = LiveRules(RulesSource(kind, location, make), logger=get_logger(settings.log_level),
                                      refresh=0 if kind == "file" else settings.rules_refresh,
                                      check=deployment_problems)

    quarantine = QuarantineStore(dynamodb, settings.quarantine_table) if settings.quarantine_table else None
    frame = AuditedRequests(AuditStore(dynamodb, settings.audit_table, settings.audit_retention_days),
                            get_logger(settings.log_level))
    service = BrokerService(
        settings=settings,
        rules=rules,
        methods=methods,
        admission=Admission(dynamodb, settings.replay_table, settings.quarantine_table),
        minter=VaultMinter(settings, http_session(), fetch_secret_id),
        frame=frame,
        logger=get_logger(settings.log_level),
        quarantine=quarantine,
    )
    # The security team's routes and the incident reports (chalicelib/security.py).
    service.security = SecurityService.for_service(service, dynamodb=dynamodb, quarantine=quarantine)
    return service
