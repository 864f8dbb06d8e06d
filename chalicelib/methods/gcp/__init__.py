"""The GCP proof method: a Google-signed ID token (GCE instance identity or service account).

    proof.py     the login body, Google's certificates, the token's checks (../oidc.py, PyJWT) -> VerifiedCaller
    facts.py     the Compute API (instances.get) with the broker's own Google credentials
    model.py     the facts as plain data (pure)
    match.py     [rule.gcp] conditions (pure)
    settings.py  its environment variables (off without BROKER_GCP_AUDIENCE)
    identity.py  what is derived from an identity: quarantine keys, revocation targets, covers
    openapi.py   its login body's schema
"""


NAME = "gcp"
PROOF_FIELDS = ("jwt",)
# Does the proof itself vouch for the machine it claims? Yes: Google signs a GCE
# instance token's google.compute_engine claims.
CLAIMS_SIGNED = True
BACKENDS = ("google certs", "gcp compute", "gcp credentials")


def settings_from_env(env, region):
    from .settings import GcpSettings

    return GcpSettings.from_env(env)


def build(settings, make_aws_client, pools, rules, stores=None):
    # Built on the first GCP request: AWS-only traffic never imports the Google libraries.
    from ..base import ProofMethod
    from .facts import ComputeSession, GcpFactsReader
    from .proof import GcpProofVerifier, GoogleCerts, parse_gcp_login

    own = settings.methods[NAME]
    verifier = GcpProofVerifier(own, GoogleCerts(pools, own.certs_url))
    return ProofMethod(NAME, parse_gcp_login, verifier, GcpFactsReader(ComputeSession(), own.compute_url))


def check_rules(rules, method):
    return []
