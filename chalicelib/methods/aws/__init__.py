"""The AWS proof method: a SigV4-signed sts:GetCallerIdentity (Vault's aws `iam` login fields).

    request.py   the login body (+ the optional ecs_task_arn claim)
    proof.py     offline checks, the rebuilt STS round trip -> VerifiedCaller
    arn.py       principal, task ARNs; instance and task IDs
    readers.py   per-account clients: the broker's own account, or a reader role
    facts.py     role tags, trust policy, EC2 instance claims -> AwsFacts
    ecs.py       ECS task claims
    trust.py     who may assume a role (pure)
    model.py     the facts as plain data (pure)
    match.py     [rule.aws] conditions (pure)
    settings.py  its environment variables
    identity.py  what is derived from an identity: quarantine keys, index principal, revocation targets
    openapi.py   its login body's schema
"""

from . import match as conditions

NAME = "aws"
# The login body's fields beside `role`: the proof, and the optional claims the client adds
# (request.py parses both). The incident and token routes take exactly these beside their own.
PROOF_FIELDS = ("iam_http_request_method", "iam_request_url", "iam_request_body", "iam_request_headers")
CLAIM_FIELDS = ("ecs_task_arn",)  # the task a container says it runs in (its task metadata endpoint)
# Does the proof itself vouch for the machine it claims? No: whoever assumes a role names
# the session, so an instance or task ID there is a claim until the facts step checks it.
CLAIMS_SIGNED = False
# Its backends' names (Unavailable(backend=...)), for the packages' metrics and alarms.
BACKENDS = ("sts", "ec2", "iam", "ecs")
# The security team's routes take its proofs (a signed GetCallerIdentity in X-Broker-Proof:
# chalicelib/admin_auth.py), and their principals are [security] principal_arns (match.py).
PROVES_ADMINS = True
# Built when the rules are loaded: every version of the rules is checked against the
# accounts it can read (check_rules).
BUILT_AT_START = True


def settings_from_env(env, region):
    from .settings import AwsSettings

    return AwsSettings.from_env(env, region)


def build(settings, make_aws_client, pools, rules, stores=None):
    """The method, from the broker's Settings; its readers from BROKER_ACCOUNT_READERS.
    `rules()` is the rules in force (they may change without a redeploy); `stores`
    (backends.Stores) holds the trust history, when there is a quarantine table."""
    from ..base import ProofMethod
    from .facts import AwsFactsReader
    from .proof import AwsProofVerifier
    from .readers import AccountReaders
    from .request import parse_aws_login

    own = settings.methods[NAME]
    readers = AccountReaders(own, make_aws_client)
    reader = AwsFactsReader(readers, own.regions,
                            task_clusters=lambda: conditions.literal_clusters(
                                [r.conditions for r in rules().rules_of(NAME)]),
                            cache_seconds=own.fact_cache_seconds,
                            trust_history=getattr(stores, "trust_history", None))
    return ProofMethod(NAME, parse_aws_login, AwsProofVerifier(own, pools), reader, readers=readers,
                       warm_up=lambda: _warm_up(readers, own.regions))


def _warm_up(readers, regions):
    """The broker's own-account clients an issuance needs, and their service models."""
    own = readers.for_account(readers.own_account)  # STS, unless configured
    for region in regions:
        own.client("ec2", region)
        own.client("ecs", region)
    own.client("iam")


def check_rules(rules, method):
    """Problems of the rules for this deployment: a rule that needs facts (tags, instances,
    tasks) of an account the broker can't read would silently refuse everyone there.
    `method`: the built method (its readers know the readable accounts)."""
    readable_accounts = method.readers.accounts()
    problems = []
    for rule in rules.rules_of(NAME):
        if rule.conditions.needs_reader:
            for account in rule.conditions.accounts:
                if account not in readable_accounts:
                    problems.append(f"{rules.source}: rule {rule.name}: account {account} needs a reader role "
                                    "(BROKER_ACCOUNT_READERS) to read its instances, tasks or role tags")
    return problems
