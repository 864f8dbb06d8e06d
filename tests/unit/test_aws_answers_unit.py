"""The broker's botocore clients (chalicelib/aws_clients.py) fed answers byte for byte
(a before-send handler answers in place of the network, so botocore's own parsers read
them): a 2xx that is not AWS's answer (no request ID: a captive portal's page, an empty
200) and one without the part the broker reads are Unavailable (a 503), never "no such
instance", "no tags", "no roles" or "no task". tests/service/test_aws_answers.py does the
same through a proxy in front of moto, the whole broker included."""

import pytest

from chalicelib.aws_clients import aws_client_factory
from chalicelib.errors import Unavailable
from chalicelib.methods.aws.ecs import TaskClaims
from chalicelib.methods.aws.facts import AwsFactsReader

IAM = "https://iam.amazonaws.com/doc/2010-05-08/"
EC2 = "http://ec2.amazonaws.com/doc/2016-11-15/"
META = "<ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ResponseMetadata>"
PORTAL = (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>Sign in</title>'
          b'</head><body><p>Log in</p></body></html>')


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **_):
        yield self.body


class Scripted:
    """clients.client(service, region) -> a botocore client whose next answer is `answer`."""

    account = "123456789012"

    def __init__(self):
        self.answer = (200, {}, b"")
        self.sent = 0

    def client(self, service, region=None):
        from botocore.awsrequest import AWSResponse

        class Settings:
            aws_region, aws_endpoint_url = region or "us-east-1", None

        client = aws_client_factory(Settings())(service, aws_access_key_id="AKIDEXAMPLE",
                                                aws_secret_access_key="not-a-secret")

        def answer(request, **_):
            self.sent += 1
            status, headers, body = self.answer
            return AWSResponse(request.url, status, headers, _Raw(body))

        client.meta.events.register("before-send", answer)
        return client

    def will_answer(self, body, status=200, headers=None):
        self.answer = (status, {"content-type": "text/xml", **(headers or {})},
                       body.encode() if isinstance(body, str) else body)


@pytest.fixture
def clients():
    return Scripted()


def _role(clients):
    from chalicelib.methods.aws.arn import parse_principal_arn

    reader = AwsFactsReader.__new__(AwsFactsReader)
    reader._clock, reader._history = (lambda: 0.0), None
    tags, trust, _, _ = reader._read_role(
        clients, parse_principal_arn("arn:aws:sts::123456789012:assumed-role/demo-node/i-0123456789abcdef0"))
    return tags, trust


def test_a_real_get_role_answer_reads_its_tags(clients):
    clients.will_answer(f'<GetRoleResponse xmlns="{IAM}"><GetRoleResult><Role><Path>/</Path>'
                        '<RoleName>demo-node</RoleName><RoleId>AROAEXAMPLE</RoleId>'
                        '<Arn>arn:aws:iam::123456789012:role/demo-node</Arn><CreateDate>2026-01-01T00:00:00Z'
                        '</CreateDate><Tags><member><Key>team</Key><Value>web</Value></member></Tags></Role>'
                        f'</GetRoleResult>{META}</GetRoleResponse>')
    tags, trust = _role(clients)
    assert tags == {"team": "web"} and trust is None


@pytest.mark.parametrize("body", [
    PORTAL, b"",
    f'<GetRoleResponse xmlns="{IAM}">{META}</GetRoleResponse>',
    f'<GetRoleResponse xmlns="{IAM}"><GetRoleResult><Role/></GetRoleResult>{META}</GetRoleResponse>',
    f'<GetRoleResponse xmlns="{IAM}"><GetRoleResult/>{META}</GetRoleResponse>',
])
def test_a_get_role_answer_that_is_no_answer_is_unavailable_not_a_role_without_tags(clients, body):
    clients.will_answer(body)
    with pytest.raises(Unavailable) as failed:
        _role(clients)
    assert failed.value.backend == "iam"


@pytest.mark.parametrize("body", [
    PORTAL, b"",
    f'<GetInstanceProfileResponse xmlns="{IAM}">{META}</GetInstanceProfileResponse>',
    f'<GetInstanceProfileResponse xmlns="{IAM}"><GetInstanceProfileResult><InstanceProfile>'
    '<Arn>arn:aws:iam::123456789012:instance-profile/p</Arn></InstanceProfile></GetInstanceProfileResult>'
    f'{META}</GetInstanceProfileResponse>',
])
def test_an_instance_profile_answer_without_its_roles_is_unavailable_not_an_empty_profile(clients, body):
    clients.will_answer(body)
    with pytest.raises(Unavailable):
        AwsFactsReader._profile_roles(clients, "p")


def _instance(clients):
    reader = AwsFactsReader.__new__(AwsFactsReader)
    reader._regions = ("us-east-1",)
    return reader._find_instance(clients, "i-0123456789abcdef0")


def test_an_ec2_answer_with_no_reservations_is_no_such_instance(clients):
    clients.will_answer(f'<DescribeInstancesResponse xmlns="{EC2}"><requestId>r-1</requestId>'
                        '<reservationSet/></DescribeInstancesResponse>')
    assert _instance(clients) is None


@pytest.mark.parametrize("body", [
    PORTAL, b"", f'<DescribeInstancesResponse xmlns="{EC2}"><requestId>r-1</requestId></DescribeInstancesResponse>',
    f'<DescribeInstancesResponse xmlns="{EC2}"><reservationSet/></DescribeInstancesResponse>',
])
def test_an_ec2_answer_that_is_no_answer_is_unavailable_not_no_such_instance(clients, body):
    clients.will_answer(body)
    with pytest.raises(Unavailable) as failed:
        _instance(clients)
    assert failed.value.backend == "ec2"


def _task(clients):
    return TaskClaims._describe(clients, "us-east-1", "c", "0123456789abcdef0123456789abcdef")


def test_an_ecs_answer_with_no_tasks_is_no_such_task(clients):
    clients.will_answer('{"tasks": [], "failures": []}',
                        headers={"content-type": "application/x-amz-json-1.1", "x-amzn-requestid": "r-2"})
    assert _task(clients) is None


@pytest.mark.parametrize("body, headers", [
    ("{}", {"x-amzn-requestid": "r-2"}), ('{"tasks": []}', {}), (b"", {}), (PORTAL, {}),
])
def test_an_ecs_answer_that_is_no_answer_is_unavailable_not_no_such_task(clients, body, headers):
    clients.will_answer(body, headers={"content-type": "application/x-amz-json-1.1", **headers})
    with pytest.raises(Unavailable) as failed:
        _task(clients)
    assert failed.value.backend == "ecs"


def test_no_answer_is_sent_again_with_the_same_request_but_none_is_read(clients):
    """A page is refused after botocore's retries have had their turn (it is a 200 to them):
    one request, then Unavailable naming the backend, and nothing of the page in the error."""
    clients.will_answer(PORTAL)
    with pytest.raises(Unavailable) as failed:
        _role(clients)
    assert clients.sent == 1 and "Sign in" not in str(failed.value) + (failed.value.detail or "")
