"""Red team of the lean AWS clients, the whole broker (chalice.test, real OpenBao, moto
behind a proxy that answers some calls itself): an answer that is no answer must end as a
503 with its audit record, never as a refusal or an issuance.

Apart from test_lean_aws_redteam.py: its module-scoped `pair` fixture swaps the process
environment, and restoring it under the session's `broker` would unset the broker's."""

import json
import uuid

import pytest

from devstack import aws as stack_aws
from tests.service.test_lean_aws_redteam import AnswerDropper


# ---- the whole broker behind a proxy that answers one call with a captive portal's page ---------

class CaptivePortal(AnswerDropper):
    """Forwards every request to moto, but answers each whose form names `action` with
    HTTP 200 and an XHTML sign-in page (a captive portal, a wrong endpoint)."""

    PAGE = (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>Sign in</title>'
            b'</head><body><p>Log in to the network</p></body></html>')

    def __init__(self, upstream, action):
        super().__init__(upstream, drop="\0never")
        self.action = action

    def intercept(self, body, target):
        return self.PAGE if f"Action={self.action}&".encode() in body else None


@pytest.mark.parametrize("action", ["DescribeInstances", "GetRole", "GetInstanceProfile"])
def test_a_captive_portal_answering_a_facts_read_is_a_503_never_a_refusal(broker, fresh_service, action):
    """Before the fix the page read as an empty answer: "no such instance", "the role no longer
    exists", "the profile holds no role" (403s), and for the role's tags (then ListRoleTags,
    now GetRole's) a role without tags: the credentials were issued (200) on a read that
    never happened. A page is no answer:
    the broker says it can't tell (503) and issues nothing."""
    from tests.service.conftest import use_environment
    from tests.service.test_aws_issuance import assert_error

    instance = broker.web_instance()
    portal = CaptivePortal(broker.stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], action)
    restore = use_environment({"BROKER_AWS_ENDPOINT_URL": portal.url})
    try:
        doc = assert_error(broker.login_as("demo-node", instance, "web"), 503, "unavailable")
        record = broker.audit.get(doc["request_id"])
        assert record["outcome"] == "error" and "unreadable" in record["reason"]
    finally:
        restore()
        portal.close()
        broker.stack.terminate_instance(instance)


class EmptyQuarantineReads(AnswerDropper):
    """Forwards everything to moto but the quarantine list's reads (GetItem on the quarantine
    table), answered with HTTP 200 and no body at all (a proxy's, a load balancer's)."""

    def __init__(self, upstream):
        super().__init__(upstream, drop="\0never")
        self.intercepted = 0

    def intercept(self, body, target):
        if target.endswith(".GetItem") and json.loads(body).get("TableName") == stack_aws.QUARANTINE_TABLE:
            self.intercepted += 1
            return b""
        return None


def test_an_empty_200_for_a_quarantine_read_never_clears_a_quarantined_role(broker, fresh_service):
    """Before the fix an empty 200 read as a GetItem without Item: the role's quarantine
    read as clear, and its machine got credentials. It is no answer: a 503, nothing issued."""
    from tests.service.conftest import use_environment
    from tests.service.security_helpers import SecurityClient, fresh_when
    from tests.service.test_aws_issuance import assert_error
    from tests.sigv4 import signed_login

    stack = broker.stack
    security = SecurityClient(broker, stack.assume("security-team", f"lean-{uuid.uuid4().hex[:6]}"))
    instance = broker.web_instance()
    creds = stack.assume("demo-node", instance)
    revoked = json.loads(security.post("/v1/revocations", {
        "principal": "arn:aws:iam::123456789012:role/demo-node", "reason": "lean red team", "quarantine": "1h"}).body)
    proxy = EmptyQuarantineReads(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"])
    restore = use_environment({"BROKER_AWS_ENDPOINT_URL": proxy.url})
    try:
        response = broker.post(signed_login(creds, "web", broker.server_id, when=fresh_when()))
        assert proxy.intercepted >= 1
        assert_error(response, 503, "unavailable", "quarantine store")
    finally:
        restore()
        proxy.close()
        security.delete(f"/v1/revocations/{revoked['revocation_id']}")
        stack.terminate_instance(instance)
