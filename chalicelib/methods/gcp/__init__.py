"""The GCP proof method: a Google-signed ID token (GCE instance identity or service account).

    proof.py     the login body, Google's certificates, RS256 checks -> VerifiedCaller
    facts.py     the Compute API (instances.get) with the broker's own Google credentials
    model.py     the facts as plain data (pure)
    match.py     [rule.gcp] conditions (pure)
    settings.py  its environment variables (off without BROKER_GCP_AUDIENCE)
"""

from . import match as conditions  # noqa: F401  (the registry's view of this method's rules)

NAME = "gcp"
PROOF_FIELDS = ("jwt",)
# Does the proof itself vouch for the machine it claims? Yes: Google signs a GCE
# instance token's google.compute_engine claims.
CLAIMS_SIGNED = True


class GcpMethod:
    name = NAME

    def __init__(self, verifier, facts_reader):
        self._verifier = verifier
        self._facts = facts_reader

    def parse(self, raw_body):
        from .proof import parse_gcp_login

        return parse_gcp_login(raw_body)

    def proof_hash(self, login):
        return self._verifier.proof_hash(login)

    def verify(self, login):
        return self._verifier.verify(login)

    def read_facts(self, caller, login):
        return self._facts.read(caller, login)


def build(settings, make_aws_client, http_session, rules):
    # Built on the first GCP request: AWS-only traffic never imports the Google libraries.
    from .facts import ComputeSession, GcpFactsReader
    from .proof import GcpProofVerifier, GoogleCerts

    own = settings.gcp
    verifier = GcpProofVerifier(own, GoogleCerts(http_session, own.certs_url))
    return GcpMethod(verifier, GcpFactsReader(ComputeSession(), own.compute_url))


def check_rules(rules, readable_accounts):
    return []
