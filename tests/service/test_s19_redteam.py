"""Red team of the cold-start and fewer-IAM-calls changes against the real stack (moto with
SigV4 on, OpenBao, `chalice local` over HTTP): X-Amz-Date parsed by position, the caller's
role read with one GetRole (its tags and trust policy) and kept 5 s."""

import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import pytest

from devstack.stack import SECOND_ACCOUNT_ID
from tests.service.conftest import use_environment
from tests.service.test_accounts_and_tasks import OPEN_TRUST, login
from tests.service.test_aws_issuance import assert_error, body_of
from tests.service.aws_proxy import AnswerDropper
from tests.sigv4 import login_body, sign

pytestmark = pytest.mark.redteam  # a red-team case: `pytest -m redteam` runs them all


# ---- X-Amz-Date through the real login route -------------------------------------------------

class _Date:
    """What tests/sigv4.sign asks of its `when`: the X-Amz-Date text, here any text at all
    (signed for real: the scope date and the signing key take its first 8 characters)."""

    def __init__(self, text):
        self.text = text

    def strftime(self, _):
        return self.text


def _odd_dates():
    now = datetime.now(timezone.utc)
    day, clock = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return {
        "leap second": f"{day}T235960Z",
        "hour 24": f"{day}T240000Z",
        "minute 60": f"{day}T006000Z",
        "February 30": "20260230T000000Z",
        "month 13": "20261301T000000Z",
        "year 0": "00000101T000000Z",
        "year 1": "00010101T000000Z",
        "year 9999": "99991231T235959Z",
        "lower-case z": f"{day}T{clock}z",
        "lower-case t": f"{day}t{clock}Z",
        "no Z": f"{day}T{clock}",
        "offset": f"{day}T{clock}+0000",
        "fraction": f"{day}T{clock}.5Z",
        "trailing newline": f"{day}T{clock}Z\n",
        "trailing space": f"{day}T{clock}Z ",
        "leading space": f" {day}T{clock}Z",
        "inner space": f"{day} T{clock}Z",
        "tab": f"{day}T{clock}Z\t",
        "Arabic-Indic digits": "".join(chr(0x660 + int(c)) for c in day) + f"T{clock}Z",
        "full-width digits": "".join(chr(0xFF10 + int(c)) for c in day) + f"T{clock}Z",
        "superscript two (latin-1)": day[:-1] + "\u00b2" + f"T{clock}Z",
        "signs": f"+{day[1:]}T{clock}Z",
        "underscores": f"{day[:4]}_{day[5:]}T{clock}Z",
        "empty": "",
        "two dates": f"{day}T{clock}Z{day}T{clock}Z",
    }


def _post_over_http(url, body):
    request = urllib.request.Request(url + "/v1/credentials/aws", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_odd_x_amz_dates_are_each_a_401_invalid_proof_through_chalice_local(local_broker):
    """Each date signed for real with a live session's keys, sent over HTTP to `chalice
    local`: every one is a 401 invalid_proof naming the header (never a 500, never a pass)."""
    stack = local_broker.stack
    creds = stack.assume("demo-batch", f"s19-dates-{uuid.uuid4().hex[:8]}")
    server_id = stack.broker_env()["BROKER_SERVER_ID"]
    answers = {}
    for name, text in _odd_dates().items():
        headers = sign(creds, server_id=server_id, when=_Date(text))
        answers[name] = _post_over_http(local_broker.url, login_body("batch", headers))
    wrong = {name: (status, doc) for name, (status, doc) in answers.items()
             if status != 401 or doc.get("error", {}).get("code") != "invalid_proof"}
    assert not wrong, wrong
    for name, (_, doc) in answers.items():
        message = doc["error"]["message"]
        assert "X-Amz-Date" in message or "x-amz-date" in message.lower() or "header" in message, (name, message)
    # and the same keys with today's date still get the role: the refusals were the dates'
    headers = sign(creds, server_id=server_id)
    status, doc = _post_over_http(local_broker.url, login_body("batch", headers))
    assert status == 200, doc


# ---- one GetRole: tags and trust policy, kept 5 s -------------------------------------------------

ODD_TAG = "é 日本 _.:/=+-@"  # what IAM allows in a tag: letters of any script, spaces, _.:/=+-@


def test_a_role_with_fifty_odd_tags_is_read_whole_from_get_role(broker, fresh_service):
    """demo-batch holds IAM's limit of 50 tags (49 odd ones, then its vault-role tag again,
    last): GetRole's answer carries all of them, and the batch rule still matches."""
    iam = broker.stack.client("iam")
    extra = {f"s19-{i:02d} {ODD_TAG}"[:128]: f"{ODD_TAG} {i}" for i in range(49)}
    iam.untag_role(RoleName="demo-batch", TagKeys=["vault-role"])
    iam.tag_role(RoleName="demo-batch", Tags=[{"Key": k, "Value": v} for k, v in extra.items()])
    iam.tag_role(RoleName="demo-batch", Tags=[{"Key": "vault-role", "Value": "batch"}])
    try:
        assert len(iam.list_role_tags(RoleName="demo-batch")["Tags"]) == 50
        response = broker.login_as("demo-batch", f"s19-tags-{uuid.uuid4().hex[:8]}", "batch")
        assert response.status_code == 200, response.body
        record = broker.audit.get(body_of(response)["request_id"])
        assert record["facts"]["role_tags"] == {"vault-role": "batch"}  # the tags a rule names, no other
    finally:
        iam.untag_role(RoleName="demo-batch", TagKeys=list(extra))
        iam.tag_role(RoleName="demo-batch", Tags=[{"Key": "vault-role", "Value": "batch"}])


def test_a_tag_taken_off_is_seen_once_the_kept_read_expires(broker, fresh_service):
    """The role's tags are kept 5 s (docs/scaling.md): the vault-role tag taken off, the
    batch session is refused within the window's end, never later."""
    iam = broker.stack.client("iam")
    session = f"s19-untag-{uuid.uuid4().hex[:8]}"
    assert broker.login_as("demo-batch", session, "batch").status_code == 200
    iam.untag_role(RoleName="demo-batch", TagKeys=["vault-role"])
    try:
        time.sleep(5.5)
        doc = assert_error(broker.login_as("demo-batch", session, "batch"), 403, "not_authorized")
        assert "role tag vault-role is missing" in broker.audit.get(doc["request_id"])["reason"]
    finally:
        iam.tag_role(RoleName="demo-batch", Tags=[{"Key": "vault-role", "Value": "batch"}])


def test_a_no_claim_login_keeps_the_trust_policy_a_claim_then_reads_and_it_expires(broker, fresh_service):
    """A session of demo-node that claims no instance reads the role (GetRole) and keeps it;
    an instance's claim then uses the kept trust policy (EC2 only: honoured). The trust
    opened to anyone, the claim is refused once the kept read expires: the no-claim read
    never pins an old trust policy for longer than the window."""
    instance = broker.web_instance()
    try:
        doc = assert_error(broker.login_as("demo-node", f"s19-plain-{uuid.uuid4().hex[:8]}", "web"), 403,
                           "not_authorized")
        assert "not a verified running EC2 instance" in broker.audit.get(doc["request_id"])["reason"]
        assert broker.login_as("demo-node", instance, "web").status_code == 200
        with broker.stack.changed_trust_policy("demo-node", OPEN_TRUST):
            time.sleep(5.5)
            doc = assert_error(broker.login_as("demo-node", instance, "web"), 403, "not_authorized")
            assert "trust policy" in broker.audit.get(doc["request_id"])["reason"]
    finally:
        broker.stack.terminate_instance(instance)


def test_a_same_named_role_of_the_second_account_never_gets_the_kept_tags_of_the_first(broker, fresh_service):
    """demo-batch in the broker's account (tagged for batch) read and kept first; demo-batch
    of 210987654321 (not tagged for batch) right after, within the window: refused, with
    its own tags."""
    assert broker.login_as("demo-batch", f"s19-a-{uuid.uuid4().hex[:8]}", "batch").status_code == 200
    response = login(broker, "demo-batch", f"s19-b-{uuid.uuid4().hex[:8]}", "batch", SECOND_ACCOUNT_ID)
    doc = assert_error(response, 403, "not_authorized")
    record = broker.audit.get(doc["request_id"])
    assert record["account"] == SECOND_ACCOUNT_ID and record["facts"]["role_tags"] == {}


def test_a_role_deleted_after_its_session_began_has_no_tags_and_no_trust(broker, fresh_service):
    """demo-batch deleted while a session of it lives: GetRole says NoSuchEntity, read as a
    role without tags (refused, 403), never a 500 and never the tags read before."""
    iam = broker.stack.client("iam")
    role = iam.get_role(RoleName="demo-batch")["Role"]
    tags = iam.list_role_tags(RoleName="demo-batch")["Tags"]
    creds = broker.stack.assume("demo-batch", f"s19-gone-{uuid.uuid4().hex[:8]}")
    from tests.sigv4 import signed_login

    iam.delete_role(RoleName="demo-batch")
    try:
        response = broker.post(signed_login(creds, "batch", broker.server_id))
        assert response.status_code in (401, 403), response.body  # STS may refuse the session itself
        if response.status_code == 403:
            record = broker.audit.get(body_of(response)["request_id"])
            assert record["facts"]["role_tags"] == {}
    finally:
        document = role["AssumeRolePolicyDocument"]
        iam.create_role(RoleName="demo-batch", Path=role.get("Path", "/"), Tags=tags,
                        AssumeRolePolicyDocument=document if isinstance(document, str) else json.dumps(document))
    time.sleep(5.5)  # the kept "no such role" expires
    assert broker.login_as("demo-batch", f"s19-back-{uuid.uuid4().hex[:8]}", "batch").status_code == 200


class OddGetRole(AnswerDropper):
    """Forwards everything to moto but GetRole, answered with HTTP 200 and `page`."""

    def __init__(self, upstream, page):
        super().__init__(upstream, drop="\0never")
        self.page = page

    def intercept(self, body, target):
        return self.page if b"Action=GetRole&" in body else None


@pytest.mark.parametrize("role", [
    "<Role><Arn/><Tags><member><Key>vault-role</Key><Value>batch</Value></member></Tags></Role>",
    "<Role><Arn></Arn></Role>",
    "<Role><RoleName>demo-batch</RoleName></Role>",
    "<Role><Arn>arn:aws:iam::123456789012:role/demo-batch</Arn>"
    "<AssumeRolePolicyDocument>%7Bnot%20json</AssumeRolePolicyDocument></Role>",
])
def test_a_get_role_answer_that_is_no_role_is_a_503_never_a_refusal_or_an_issuance(broker, fresh_service, role):
    """Through the whole broker: a GetRole answer whose Role is empty (no Arn, an empty Arn)
    or whose trust policy is unreadable says nothing about the role: 503, nothing issued
    (before the fix an empty Arn read as a role without tags: a 403 from no read at all)."""
    page = (f'<GetRoleResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><GetRoleResult>{role}'
            '</GetRoleResult></GetRoleResponse>').encode()
    proxy = OddGetRole(broker.stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], page)
    restore = use_environment({"BROKER_AWS_ENDPOINT_URL": proxy.url})
    try:
        doc = assert_error(broker.login_as("demo-batch", f"s19-odd-{uuid.uuid4().hex[:8]}", "batch"), 503,
                           "unavailable")
        assert broker.audit.get(doc["request_id"])["outcome"] == "error"
    finally:
        restore()
        proxy.close()


# ---- the init: the Vault login beside the method build --------------------------------------

def _runtime(stack, **env):
    from chalicelib.backends import build_runtime
    from chalicelib.config import Settings

    restore = use_environment({**stack.broker_env(), **env})
    try:
        return build_runtime(Settings.from_env()), restore
    except BaseException:
        restore()
        raise


def _submits_from_pool_threads(monkeypatch):
    """The names of pool threads that handed work to the pool (a pool thread waiting on the
    pool can deadlock it): recorded at each submit."""
    import threading

    from chalicelib import concurrency

    offenders, submit = [], concurrency._pool.submit

    def recording_submit(fn, *args, **kwargs):
        name = threading.current_thread().name
        if name.startswith("broker-io"):
            offenders.append(name)
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(concurrency._pool, "submit", recording_submit)
    return offenders


@pytest.mark.parametrize("snapshot", [False, True])
def test_the_init_login_never_waits_on_the_pool_and_a_sealed_vault_is_a_named_problem(stack, sealed_vault,
                                                                                       monkeypatch, snapshot):
    """A real sealed OpenBao at init: warm_up returns the login's problem by name (the build
    done), no pool thread hands work to the pool, in a SnapStart init too (every method and
    the security routes built there)."""
    offenders = _submits_from_pool_threads(monkeypatch)
    runtime, restore = _runtime(stack, **({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"} if snapshot else {}))
    try:
        problems = runtime.warm_up()
        assert set(problems) == {"vault login"} and "seal" in problems["vault login"].lower(), problems
        assert runtime._minter._token is None
        assert not offenders
    finally:
        restore()


def test_a_failing_build_at_init_raises_after_the_login_settled_and_both_failing_raise_the_builds(stack, monkeypatch):
    """The build fails (its error raised, as before: app.py logs it and the first request
    builds again); the login beside it has finished by then, ok or not, so init leaves no
    call in flight behind it."""
    from chalicelib.errors import Unavailable

    runtime, restore = _runtime(stack)
    try:
        def broken(name):
            raise Unavailable("STS could not be reached", backend="sts", detail="test: build fails")

        monkeypatch.setattr(runtime.service, "method", broken)
        with pytest.raises(Unavailable, match="STS could not be reached"):
            runtime.warm_up()
        assert runtime._minter._token  # the login beside it completed before warm_up raised

        runtime2, restore2 = _runtime(stack)
        try:
            monkeypatch.setattr(runtime2.service, "method", broken)

            def login_fails():
                raise Unavailable("Vault failed", backend="vault", detail="test: login fails")

            monkeypatch.setattr(runtime2._minter, "log_in", login_fails)
            with pytest.raises(Unavailable, match="STS could not be reached"):
                runtime2.warm_up()
        finally:
            restore2()
    finally:
        restore()
