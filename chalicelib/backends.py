"""Build every backend client from the settings, in one place.

Tests and the local stack point the same code at local servers through the
settings (BROKER_AWS_ENDPOINT_URL, BROKER_STS_FORWARD_URL, BROKER_VAULT_ADDR).
The proof methods come from the registry (chalicelib/methods/__init__.py); their
rule conditions are handed to the policy engine here.
"""

import functools
import os

from .aws_calls import call
from .concurrency import Ready, settle, start
from .errors import Unavailable
from .jsonlog import get_logger


def aws_client_factory(settings):
    """make(service, region=None, **credentials) -> a botocore client (chalicelib/aws_clients.py:
    one botocore session, the timeouts and retries chosen there)."""
    from .aws_clients import aws_client_factory as botocore_factory

    return botocore_factory(settings)


def enabled_methods(settings):
    """The registry's methods whose settings are given (GCP needs BROKER_GCP_AUDIENCE)."""
    from .methods import REGISTRY

    return [name for name in REGISTRY if settings.methods.get(name) is not None]


def snapshot_taken_after_init(env=os.environ):
    """True in a SnapStart init: what it builds is in the snapshot, free for every restore."""
    return env.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start"


def _once(factory):
    """A factory that builds its object on first use and then hands out that one (the
    issuance pipeline and the security routes share each method)."""
    import threading

    lock, built = threading.Lock(), []

    def get():
        if not built:
            with lock:
                if not built:
                    built.append(factory())
        return built[0]

    return get


class Runtime:
    """The process's service and what its cold start needs from it (app.py):

    - `warm_up()` at init in Lambda: builds now what the first request would build
      lazily (every enabled method, the broker's own-account botocore clients and their
      service models, the Vault login), so that init pays for it and a SnapStart
      snapshot holds it;
    - `after_restore()` after a SnapStart restore (chalicelib/snapstart.py): drops the
      pooled connections (botocore's, Vault's requests sessions, the broker's own pools) and
      the Vault tokens the snapshot holds.
    """

    def __init__(self, service, *, settings, minter, revoker, rules, clients, pools, login=None):
        self.service = service
        self._login = login  # the Vault login started by build_runtime (a Future), or None
        self._settings = settings
        self._minter = minter
        self._revoker = revoker
        self._rules = rules
        self._clients = clients  # weak: a reader role's clients go when its credentials are renewed
        self._pools = pools  # the broker's HTTP client (urllib3): STS, Vault, Google's certificates

    def warm_up(self, log_in=True):
        """Build what the first request would. Errors of the network parts (the Vault login)
        are returned, not raised: the first request tries again and answers 503 if it must.
        Returns {step: problem} of the steps that failed."""
        problems = {}
        snapshot = snapshot_taken_after_init()

        def build():
            # Without a snapshot, only the methods built at start (AWS: most of the traffic);
            # the others are built on their first request. A snapshot holds them all.
            from .methods import package

            for name in self.service.method_names:
                if snapshot or getattr(package(name), "BUILT_AT_START", False):
                    warm_up = getattr(self.service.method(name), "warm_up", None)
                    if warm_up is not None:
                        warm_up()  # the clients an issuance needs, and their service models
            if snapshot:
                self.service.security  # noqa: B018 - built now, so that the snapshot holds it

        # The Vault login (Secrets Manager, then Vault) waits on nothing the build makes: it
        # runs beside the build (a leaf call: it never uses the pool), or was started by
        # build_runtime before the rules and the method were built (at init).
        early, self._login = self._login, None
        here = self._minter.log_in if log_in and early is None else Ready(None)
        (_, build_error), (_, login_error) = settle(build, here)
        if early is not None:
            login_error = early.exception()  # waits for it
        if build_error is not None:
            raise build_error
        if login_error is not None:  # Unavailable (named backend) or a network error
            problems["vault login"] = getattr(login_error, "detail", None) or type(login_error).__name__
        return problems

    def after_restore(self):
        """What no two restored copies of a snapshot may share, and what may have expired."""
        for client in list(self._clients):
            client.close()  # botocore: the endpoint's connection pools; the client stays usable
        self._pools.close()  # STS, Google's certificates: new connections on the next call
        self._minter.close_connections()  # Vault (hvac's requests sessions), likewise
        self._minter.forget_token()
        if self._revoker is not None:
            self._revoker.close_connections()
            self._revoker.forget_token()
        recheck = getattr(self._rules, "recheck", None)
        if callable(recheck):
            recheck()


def build_service(settings):
    return build_runtime(settings).service


def build_runtime(settings, log_in_early=False):
    import weakref

    from .http_client import HttpClient
    from .minter import VaultMinter

    # The broker's own HTTP calls besides botocore's and Vault's (hvac, chalicelib/vault_client.py):
    # the STS forward, Google's certificates (chalicelib/http_client.py, urllib3).
    pools = HttpClient()
    make_client = aws_client_factory(settings)
    clients = weakref.WeakSet()

    def make(service, region=None, **credentials):
        client = make_client(service, region, **credentials)
        clients.add(client)  # for Runtime.after_restore
        return client

    dynamodb = make("dynamodb")
    secrets = make("secretsmanager")

    def secret_fetcher(name, what):
        def fetch():
            value = call("secrets manager", secrets.get_secret_value, SecretId=name)
            secret = (value.get("SecretString") or "").strip()
            if not secret:
                raise Unavailable(f"the {what} Vault credentials are missing", backend="secrets manager",
                                  detail=f"secret {name} is empty")
            return secret

        return fetch

    minter = VaultMinter(settings, secret_fetcher(settings.vault_secret_id_secret, "broker's"))
    # At init the Vault login (Secrets Manager, then Vault: two round trips) needs nothing
    # built below, so it starts now and runs beside the rest: the rules, the method and
    # its STS call for the broker's own account (Runtime.warm_up waits for it).
    login = start(minter.log_in) if log_in_early else None
    try:
        return _assemble(settings, pools, make, clients, dynamodb, minter, secret_fetcher, login)
    except BaseException:
        if login is not None:
            login.exception()  # a failed init leaves no call in flight behind it
        raise


def _assemble(settings, pools, make, clients, dynamodb, minter, secret_fetcher, login):
    """The rest of build_runtime: the methods, the rules, the stores, the service."""
    from .admission import Admission
    from .audit import AuditStore
    from .methods import package
    from .pipeline.frame import AuditedRequests
    from .pipeline.issuance import BrokerService
    from .rules_source import HighWater, LiveRules, RulesSource

    names = enabled_methods(settings)
    live = {}
    stores = build_stores(settings, dynamodb)
    methods = {name: _once(lambda name=name: package(name).build(settings, make, pools,
                                                                 lambda: live["rules"], stores=stores))
               for name in names}
    # The methods whose rules checks need them built are built now (AWS: every version of
    # the rules is checked against the accounts it can read; a rule needing facts of an
    # unreadable account is refused).
    at_start = {name: methods[name]() for name in names if getattr(package(name), "BUILT_AT_START", False)}

    def deployment_problems(candidate):
        return [p for name in names for p in package(name).check_rules(candidate, at_start.get(name))]

    kind, location = settings.rules_source or ("file", settings.rules_file)
    source = RulesSource(kind, location, make)
    # The highest rules serial applied from this source: never gone below (rules_source.py).
    high_water = HighWater(dynamodb, settings.quarantine_table, source.describe()) if settings.quarantine_table \
        else None
    rules = live["rules"] = LiveRules(source, logger=get_logger(settings.log_level),
                                      refresh=0 if kind == "file" else settings.rules_refresh,
                                      check=deployment_problems, high_water=high_water,
                                      allow_serial=settings.rules_allow_serial)

    logger = get_logger(settings.log_level)
    audit_store = AuditStore(dynamodb, settings.audit_table, settings.audit_retention_days)
    frame = AuditedRequests(audit_store, logger, rules_stamp=rules.stamp)
    admission = Admission(dynamodb, settings.replay_table, settings.quarantine_table,
                          shared_key_max_age=settings.shared_quarantine_read_seconds)

    def method(name):
        from .errors import InvalidRequest

        if name not in methods:
            raise InvalidRequest(f"unknown proof method {name!r}; this broker accepts {', '.join(methods)}")
        return methods[name]()

    revoker = None
    if settings.revoker_role_id:
        from .revoker import VaultRevoker

        revoker = VaultRevoker(addr=settings.vault_addr, mount=settings.vault_approle_mount,
                               role_id=settings.revoker_role_id,
                               fetch_secret_id=secret_fetcher(settings.revoker_secret_id_secret, "revoking identity's"),
                               timeout=settings.vault_timeout, namespace=settings.vault_namespace)
    # Built on first use: its modules (~15 ms to import) are not an issuance's, so a cold
    # start without SnapStart doesn't pay for them; with SnapStart, warm_up builds it at init.
    security = _once(lambda: build_security(settings, rules, frame=frame, audit=audit_store, method=method,
                                            admission=admission, minter=minter, stores=stores, dynamodb=dynamodb,
                                            revoker=revoker))
    service = BrokerService(settings=settings, rules=rules, methods=methods, admission=admission, minter=minter,
                            frame=frame, logger=logger, rate_limits=stores.rate_limits,
                            quarantine=stores.quarantine, security_factory=security)
    return Runtime(service, settings=settings, minter=minter, revoker=revoker, rules=rules,
                   clients=clients, pools=pools, login=login)


class Stores:
    def __init__(self, quarantine=None, revocations=None, rate_limits=None, tokens=None, trust_history=None):
        self.quarantine = quarantine
        self.revocations = revocations
        self.rate_limits = rate_limits
        self.tokens = tokens
        self.trust_history = trust_history  # stores/trust_history.py: when trust policies were seen open


def build_stores(settings, dynamodb):
    """The quarantine list, the revocations and the rate limits (chalicelib/stores/), or none
    of them without BROKER_QUARANTINE_TABLE."""
    from .stores.quarantine import QuarantineList
    from .stores.rate_limits import RateLimitStore
    from .stores.revocations import RevocationStore
    from .stores.tokens import TokenRegistry
    from .stores.trust_history import TrustHistory

    table = settings.quarantine_table
    if not table:
        return Stores()
    return Stores(QuarantineList(dynamodb, table), RevocationStore(dynamodb, table), RateLimitStore(dynamodb, table),
                  TokenRegistry(dynamodb, table, audit_table=settings.audit_table), TrustHistory(dynamodb, table))


def build_security(settings, rules, *, frame, audit, method, admission, minter, stores, dynamodb, revoker):
    """The security team's routes and the incident reports (chalicelib/security/). `revoker`:
    the revoking identity (chalicelib/revoker.py), or None without BROKER_REVOKER_ROLE_ID."""
    from .admin_auth import AdminAuthenticator
    from .audit_query import AuditQueryEngine
    from .security import AuditReads, Incidents, Revocations, SecurityRoutes, TokenRegistrations
    from .methods import admin_method, identity
    from .security.audited import SecurityRequests

    admins = admin_method(enabled_methods(settings))  # the method that proves the security team

    def principals(name, parsed):
        """A revocation target, as its method resolves it (an enabled method's, built on use)."""
        return identity(name).resolve_principal(parsed, (lambda: method(name)) if settings.methods.get(name) else None)

    requests = SecurityRequests(frame, AdminAuthenticator(rules, admins, lambda: method(admins), admission))
    query_engine = AuditQueryEngine(dynamodb, settings.audit_table)
    return SecurityRoutes(
        audit=AuditReads(requests=requests, audit=audit, query_engine=query_engine,
                         retention_days=settings.audit_retention_days,
                         audit_hashes=(functools.partial(minter.audit_hashes, settings.vault_audit_hash_path)
                                       if settings.vault_audit_hash_path else None)),
        revocations=Revocations(requests=requests, audit=audit, query_engine=query_engine,
                                quarantine=stores.quarantine, revocations=stores.revocations, revoker=revoker,
                                secret_ids=minter, rules=rules, principals=principals,
                                token_max_ttl=settings.token_max_ttl,
                                settle_seconds=settings.revocation_settle_seconds,
                                retention_days=settings.audit_retention_days, tokens=stores.tokens,
                                scan_seconds=settings.token_scan_seconds),
        incidents=Incidents(requests=requests, method=method, admission=admission, audit=audit,
                            rate_limits=stores.rate_limits, minter=minter),
        tokens=TokenRegistrations(requests=requests, method=method, admission=admission, audit=audit,
                                  rate_limits=stores.rate_limits, tokens=stores.tokens,
                                  keep_for=settings.token_max_ttl),
    )
