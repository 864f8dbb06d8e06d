"""Red team of the lean AWS clients against moto (SigV4 verified): the odd shapes of real
answers (lists of one and of none, paged tags, non-ASCII and markup in tags, trust
policies with characters URL-encoding must carry) read as botocore reads them; a lost
answer for real (a proxy drops it); a reader role's clients under threads and expiry."""

import json
import uuid

import pytest

from devstack import aws as stack_aws
from tests.service.test_lean_clients_moto import _both, pair  # noqa: F401 (pair: the fixture)

ODD = "a+b %2B&amp; <x> \"q\" é 日本 🚀 ;=/"


def test_role_tags_with_odd_characters_read_as_botocores(pair, stack):  # noqa: F811
    """GetRole's answer carries the tags (the broker reads them there): every one, as botocore reads them."""
    iam = stack.client("iam")
    name = f"redteam-tags-{uuid.uuid4().hex[:8]}"
    tags = {f"k{i}-é": f"{ODD}{i}" for i in range(5)}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(stack_aws.service_trust_policy(
        "ec2.amazonaws.com")), Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    try:
        mine, theirs = _both(pair, "iam", "get_role", RoleName=name)
        assert mine["Role"]["Tags"] == theirs["Role"]["Tags"]
        assert {t["Key"]: t["Value"] for t in mine["Role"]["Tags"]} == tags
    finally:
        iam.untag_role(RoleName=name, TagKeys=list(tags))
        iam.delete_role(RoleName=name)


def test_a_trust_policy_with_characters_url_encoding_must_carry_reads_as_botocores(pair, stack):  # noqa: F811
    iam = stack.client("iam")
    name = f"redteam-trust-{uuid.uuid4().hex[:8]}"
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"aws:RequestTag/team": [ODD, "100%", "%41"]}}},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(document))
    try:
        mine, theirs = _both(pair, "iam", "get_role", RoleName=name)
        assert mine["Role"]["AssumeRolePolicyDocument"] == theirs["Role"]["AssumeRolePolicyDocument"] == document
        # and read as untrusted: the second statement lets an account assume it
        from chalicelib.methods.aws.trust import only_service_may_assume

        assert "AWS arn:aws:iam::123456789012:root" in only_service_may_assume(
            mine["Role"]["AssumeRolePolicyDocument"], "ec2.amazonaws.com")
    finally:
        iam.delete_role(RoleName=name)


def test_an_instance_with_one_tag_or_none_reads_as_botocores(pair, stack):  # noqa: F811
    for tags in ({"vault-role": ODD}, None):
        instance = stack.launch_instance(tags, profile="demo-node")
        try:
            mine, theirs = _both(pair, "ec2", "describe_instances", InstanceIds=[instance])
            [mine_i] = mine["Reservations"][0]["Instances"]
            [theirs_i] = theirs["Reservations"][0]["Instances"]
            assert mine_i.get("Tags") == theirs_i.get("Tags")
            assert mine_i.get("Tags") == ([{"Key": "vault-role", "Value": ODD}] if tags else None)
            assert mine_i["State"] == theirs_i["State"] and mine_i["IamInstanceProfile"]["Arn"] == \
                theirs_i["IamInstanceProfile"]["Arn"]
        finally:
            stack.terminate_instance(instance)


def test_describe_instances_of_two_read_each_as_botocore(pair, stack):  # noqa: F811
    first, second = stack.launch_instance({"n": "1"}), stack.launch_instance({"n": "2"})
    try:
        mine, theirs = _both(pair, "ec2", "describe_instances", InstanceIds=[first, second])
        ids = lambda answer: sorted(i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"])  # noqa: E731
        assert ids(mine) == ids(theirs) == sorted([first, second])
    finally:
        stack.terminate_instance(first)
        stack.terminate_instance(second)


# ---- a lost answer, for real: a proxy forwards to moto and drops one answer ----------------------

class AnswerDropper:
    """An HTTP proxy to moto that forwards every request as it came (moto checks its SigV4)
    and, for the first request whose X-Amz-Target ends with `drop`, closes the connection
    instead of passing moto's answer back: the write landed, its answer is lost."""

    def __init__(self, upstream, drop):
        import http.server
        import threading

        import urllib3

        proxy = self
        self.drop, self.dropped, self.targets = drop, 0, []
        pool = urllib3.PoolManager(retries=False)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                page = proxy.intercept(body, self.headers.get("x-amz-target", ""))
                if page is not None:  # answered here, never forwarded
                    self.send_response(200)
                    self.send_header("content-type", "text/xml")
                    self.send_header("content-length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                target = self.headers.get("x-amz-target", "")
                proxy.targets.append(target)
                answer = pool.request("POST", upstream + self.path, body=body, headers=dict(self.headers),
                                      redirect=False)
                if target.endswith(proxy.drop) and not proxy.dropped:
                    proxy.dropped += 1
                    self.close_connection = True
                    self.connection.shutdown(2)  # moto applied it; the broker never hears
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(answer.data)))
                self.end_headers()
                self.wfile.write(answer.data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def intercept(self, body, target):
        """The page to answer `body` with instead of moto's answer (None: forward it)."""
        return None

    def close(self):
        self.server.shutdown()


def _lean_dynamodb(stack, url):
    from chalicelib import lean_aws
    from chalicelib.http_pool import Pools

    env = stack.broker_env()
    client = lean_aws.make_client("dynamodb", stack_aws.REGION, endpoint_url=url, pools=Pools(),
                                  own_credentials=lean_aws.OwnCredentials(environ={
                                      "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                                      "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]}))
    client._sleep = lambda seconds: None
    return client


def test_a_lost_transaction_answer_sent_again_by_the_lean_client_admits_once(stack):
    import time

    from chalicelib.admission import Admission
    from chalicelib.policy import Limit

    proxy = AnswerDropper(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], "TransactWriteItems")
    try:
        admission = Admission(_lean_dynamodb(stack, proxy.url), stack_aws.REPLAY_TABLE, stack_aws.QUARANTINE_TABLE)
        proof, request_id, identity = uuid.uuid4().hex, str(uuid.uuid4()), f"lean-lost-{uuid.uuid4().hex}"
        admission.admit(proof, request_id=request_id, method="aws", valid_until=time.time() + 300,
                        identity_key=identity, limit=Limit(20, 3600),
                        quarantine_keys=[f"quarantine#instance#i-{uuid.uuid4().hex[:17]}"])
        assert proxy.dropped == 1 and proxy.targets.count("DynamoDB_20120810.TransactWriteItems") == 2
        start = int(time.time()) // 3600 * 3600
        counter = stack.client("dynamodb").get_item(
            TableName=stack_aws.QUARANTINE_TABLE, ConsistentRead=True,
            Key={"pk": {"S": f"ratelimit#issue-identity#{identity}#{start}"}})["Item"]
        assert counter["hits"]["N"] == "1"  # counted once
    finally:
        proxy.close()


def test_a_lost_put_answer_sent_again_by_the_lean_client_is_not_a_replay(stack):
    """Without a quarantine table the admission is one conditional PutItem: its answer lost,
    the lean client sends it again, and DynamoDB refuses it as a conditional write that
    already happened. The broker must not refuse its own caller (401 proof_replayed)."""
    import time

    from chalicelib.admission import Admission

    proxy = AnswerDropper(stack.broker_env()["BROKER_AWS_ENDPOINT_URL"], "PutItem")
    try:
        admission = Admission(_lean_dynamodb(stack, proxy.url), stack_aws.REPLAY_TABLE)
        admission.admit(uuid.uuid4().hex, request_id=str(uuid.uuid4()), method="aws", valid_until=time.time() + 300)
        assert proxy.dropped == 1 and proxy.targets.count("DynamoDB_20120810.PutItem") == 2
    finally:
        proxy.close()


def test_the_error_codes_the_broker_reads_are_botocores(pair, stack):  # noqa: F811
    """facts.py's _NOT_FOUND, ecs.py's _TASK_MISSING and ClientException: the same codes from moto."""
    from tests.service.test_lean_clients_moto import _errors

    from chalicelib.methods.aws.facts import _NOT_FOUND

    lean, boto = _errors(pair, "ec2", "describe_instances", InstanceIds=["i-not-hex-at-all"])
    assert lean == boto and lean in _NOT_FOUND  # moto says NotFound where EC2 says Malformed
    assert _errors(pair, "ecs", "describe_task_definition", taskDefinition="no-such-family:7") == [
        "ClientException"] * 2
    assert _errors(pair, "ecs", "describe_tasks", cluster="no-such-cluster",
                   tasks=[f"arn:aws:ecs:{stack_aws.REGION}:123456789012:task/no-such-cluster/"
                          "0123456789abcdef0123456789abcdef"]) == ["ClusterNotFoundException"] * 2
    assert _errors(pair, "iam", "get_role", RoleName="no-such-role-anywhere") == ["NoSuchEntity"] * 2
    assert _errors(pair, "iam", "get_instance_profile", InstanceProfileName="no-such-profile") == [
        "NoSuchEntity"] * 2


def test_a_reader_roles_lean_clients_are_assumed_once_under_threads_and_again_before_expiry(stack):
    """Threads asking for another account's clients at once share one AssumeRole; near the
    credentials' expiry they are replaced, and the new keys sign calls moto accepts."""
    from tests.service.conftest import use_environment

    restore = use_environment(stack.broker_env())  # the broker's own keys, read at each call
    try:
        _reader_roles_under_threads_and_expiry()
    finally:
        restore()


def _reader_roles_under_threads_and_expiry():
    import threading
    import time

    from chalicelib import lean_aws
    from chalicelib.backends import aws_client_factory
    from chalicelib.config import Settings
    from chalicelib.methods.aws.readers import REFRESH_MARGIN, AccountReaders
    from chalicelib.methods.aws.settings import Reader

    account = stack_aws.SECOND_ACCOUNT_ID

    class ReaderSettings:
        readers = {account: Reader(account, f"arn:aws:iam::{account}:role/{stack_aws.READER_ROLE}",
                                   stack_aws.READER_EXTERNAL_ID)}
        own_account = "123456789012"
        own_partition = "aws"

    now = [time.time()]
    readers = AccountReaders(ReaderSettings(), aws_client_factory(Settings.from_env()), clock=lambda: now[0])
    got, errors = [], []

    def ask():
        try:
            got.append(readers.for_account(account))
        except Exception as e:  # noqa: BLE001 (asserted below, by name)
            errors.append(type(e).__name__)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 8 and len({id(c) for c in got}) == 1
    first = got[0]
    ec2 = first.client("ec2")
    assert isinstance(ec2, lean_aws.LeanClient)

    def signed_and_accepted(client):
        with pytest.raises(lean_aws.AwsError) as answer:  # an answer about the instance: the signature held
            client.describe_instances(InstanceIds=["i-0000000000000dead"])
        return answer.value.response["Error"]["Code"]

    assert signed_and_accepted(ec2) == "InvalidInstanceID.NotFound"
    now[0] = first.expires_at - REFRESH_MARGIN + 1
    second = readers.for_account(account)
    assert second is not first and second.client("ec2") is not ec2
    assert second.client("ec2")._credentials.get().access_key != ec2._credentials.get().access_key
    assert signed_and_accepted(second.client("ec2")) == "InvalidInstanceID.NotFound"
