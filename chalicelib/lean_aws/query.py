"""The query protocols (EC2, IAM, STS): a form-encoded request, an XML answer.

One serializer and one parser per operation the broker calls, giving botocore's
shapes for the fields the broker reads (tests/unit/test_lean_aws.py compares them
with botocore's own parse of the same answers from moto). XML goes through
chalicelib/safe_xml.py: no DTDs, entities or external references; tags by local name.
"""

import json
from urllib.parse import quote, unquote

from .. import safe_xml

VERSIONS = {"ec2": "2016-11-15", "iam": "2010-05-08", "sts": "2011-06-15"}


def _form(action, service, params):
    pairs = [("Action", action), ("Version", VERSIONS[service]), *params]
    return "&".join(f"{quote(str(k), safe='-_.~')}={quote(str(v), safe='-_.~')}" for k, v in pairs)


def _given(params, **optional):
    """`params` and the optional ones that are set, in order (botocore leaves out a None)."""
    return params + [(name, value) for name, value in optional.items() if value is not None]


# ---- reading the XML -----------------------------------------------------------

def _parse(data):
    """The answer's root, every tag by its local name (AWS's namespaces differ per API
    version); None if unreadable or refused (a DTD: chalicelib/safe_xml.py)."""
    return safe_xml.parse(data, namespaces=False)


def _child(element, name):
    return None if element is None else element.find(name)


def _path(element, *names):
    for name in names:
        element = _child(element, name)
    return element


def _required(element, *names):
    """The element at `names`; ValueError (an unreadable answer) if it is missing. AWS always
    sends these (an empty list is an empty element): without them a root that matches
    but holds nothing would read as "no such instance", "the role has no tags"."""
    node = _path(element, *names)
    if node is None:
        raise ValueError(f"the answer has no {'/'.join(names)}")
    return node


def _text(element, *names):
    node = _path(element, *names)
    return None if node is None or node.text is None else node.text


def _items(element, *names):
    """The <item>/<member> children of the list at `names` (EC2 says item, IAM/STS member)."""
    node = _path(element, *names)
    return [] if node is None else [child for child in node if child.tag in ("item", "member")]


def _fields(element, mapping):
    """{botocore name: text} of the children named in `mapping` that are present."""
    out = {}
    for xml_name, name in mapping.items():
        value = _text(element, xml_name)
        if value is not None:
            out[name] = value
    return out


def _tags(element, list_name, key="key", value="value"):
    return [{"Key": _text(t, key) or "", "Value": _text(t, value) or ""} for t in _items(element, list_name)]


def answer(http_answer, operation, parse):
    """The parsed answer, or botocore's error shape for an error answer."""
    from .client import _Retry, _Unreadable, _metadata

    root = _parse(http_answer.data) if http_answer.data else None
    if http_answer.status < 300:
        # SECURITY: only the operation's own answer (<DescribeInstancesResponse>...) is read.
        # Any other XML (a captive portal's XHTML, another API's answer) would parse as
        # empty lists and missing fields: "no such instance", "the role has no tags".
        if root is None or root.tag != f"{operation}Response":
            return _Unreadable(f"HTTP {http_answer.status} with an unreadable body")
        try:
            parsed = parse(root)
        except (ValueError, TypeError, KeyError, RecursionError):  # a field AWS never sends so (a state code not a number)
            return _Unreadable(f"HTTP {http_answer.status} with an unreadable {operation} answer")
        parsed["ResponseMetadata"] = _metadata(http_answer)
        return parsed
    if root is None and http_answer.status in (500, 502, 503, 504):
        return _Retry(f"HTTP {http_answer.status}")
    error = None
    if root is not None:
        error = next(root.iter("Error"), None)
    code = _text(error, "Code") if error is not None else None
    code = code.strip() if code else None
    return {"Error": {"Code": code or str(http_answer.status), "Message": _text(error, "Message") or ""},
            "ResponseMetadata": _metadata(http_answer)}


# ---- EC2 -----------------------------------------------------------------------

def _describe_instances_request(InstanceIds=()):
    return _form("DescribeInstances", "ec2", [(f"InstanceId.{i}", v) for i, v in enumerate(InstanceIds, 1)])


_INSTANCE_FIELDS = {"instanceId": "InstanceId", "imageId": "ImageId", "instanceType": "InstanceType",
                    "launchTime": "LaunchTime", "subnetId": "SubnetId", "vpcId": "VpcId",
                    "privateIpAddress": "PrivateIpAddress"}


def _instance(item):
    instance = _fields(item, _INSTANCE_FIELDS)
    state = _child(item, "instanceState")
    if state is not None:
        instance["State"] = {"Name": _text(state, "name")}
        if _text(state, "code") is not None:
            instance["State"]["Code"] = int(_text(state, "code"))
    profile = _child(item, "iamInstanceProfile")
    if profile is not None:
        instance["IamInstanceProfile"] = _fields(profile, {"arn": "Arn", "id": "Id"})
    placement = _child(item, "placement")
    if placement is not None:
        instance["Placement"] = _fields(placement, {"availabilityZone": "AvailabilityZone"})
    options = _child(item, "metadataOptions")
    if options is not None:
        instance["MetadataOptions"] = _fields(options, {"state": "State", "httpTokens": "HttpTokens",
                                                        "httpEndpoint": "HttpEndpoint"})
    tags = _tags(item, "tagSet")
    if tags:
        instance["Tags"] = tags
    return instance


def _describe_instances(root):
    reservations = []
    for r in _items(_required(root, "reservationSet")):
        reservation = _fields(r, {"reservationId": "ReservationId", "ownerId": "OwnerId"})
        reservation["Instances"] = [_instance(i) for i in _items(r, "instancesSet")]
        reservations.append(reservation)
    return {"Reservations": reservations}


# ---- IAM -----------------------------------------------------------------------

_ROLE_FIELDS = {"RoleName": "RoleName", "RoleId": "RoleId", "Arn": "Arn", "Path": "Path"}


def _role(element):
    role = _fields(element, _ROLE_FIELDS)
    document = _text(element, "AssumeRolePolicyDocument")
    if document is not None:
        # URL-encoded JSON, decoded as botocore's json_decode_policies does
        role["AssumeRolePolicyDocument"] = json.loads(unquote(document))
    return role


def _get_role_request(RoleName):
    return _form("GetRole", "iam", [("RoleName", RoleName)])


def _get_role(root):
    element = _required(root, "GetRoleResult", "Role")
    if not (_text(element, "Arn") or "").strip():  # a Role AWS never sends: not "a role without tags"
        raise ValueError("the answer's Role has no Arn")
    role = _role(element)
    role["Tags"] = _tags(element, "Tags", "Key", "Value")  # GetRole carries the role's tags (at most 50)
    return {"Role": role}


def _get_instance_profile_request(InstanceProfileName):
    return _form("GetInstanceProfile", "iam", [("InstanceProfileName", InstanceProfileName)])


def _get_instance_profile(root):
    profile = _required(root, "GetInstanceProfileResult", "InstanceProfile")
    _required(profile, "Roles")
    out = _fields(profile, {"InstanceProfileName": "InstanceProfileName", "InstanceProfileId": "InstanceProfileId",
                            "Arn": "Arn", "Path": "Path"})
    out["Roles"] = [_fields(m, _ROLE_FIELDS) for m in _items(profile, "Roles")]
    return {"InstanceProfile": out}


# ---- STS -----------------------------------------------------------------------

def _assume_role_request(RoleArn, RoleSessionName, DurationSeconds=None, ExternalId=None):
    return _form("AssumeRole", "sts", _given([("RoleArn", RoleArn), ("RoleSessionName", RoleSessionName)],
                                             DurationSeconds=DurationSeconds, ExternalId=ExternalId))


def _assume_role(root):
    result = _child(root, "AssumeRoleResult")
    credentials = _fields(_child(result, "Credentials"), {
        "AccessKeyId": "AccessKeyId", "SecretAccessKey": "SecretAccessKey",
        "SessionToken": "SessionToken", "Expiration": "Expiration"})
    if not all(credentials.get(k) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")):
        raise ValueError("AssumeRole answered without its keys")  # unreadable, not a KeyError later
    return {"Credentials": credentials,
            "AssumedRoleUser": _fields(_child(result, "AssumedRoleUser"), {"AssumedRoleId": "AssumedRoleId",
                                                                           "Arn": "Arn"})}


def _get_caller_identity_request():
    return _form("GetCallerIdentity", "sts", [])


def _get_caller_identity(root):
    identity = _fields(_child(root, "GetCallerIdentityResult"), {"UserId": "UserId", "Account": "Account",
                                                                  "Arn": "Arn"})
    if not identity.get("Account"):
        raise ValueError("GetCallerIdentity answered without an account")
    return identity


# service -> {operation: (serializer, parser)}
SERVICES = {
    "ec2": {"describe_instances": (_describe_instances_request, _describe_instances)},
    "iam": {"get_role": (_get_role_request, _get_role),
            "get_instance_profile": (_get_instance_profile_request, _get_instance_profile)},
    "sts": {"assume_role": (_assume_role_request, _assume_role),
            "get_caller_identity": (_get_caller_identity_request, _get_caller_identity)},
}
