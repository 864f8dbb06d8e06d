"""Where a service's API answers, for the partitions the lean clients serve.

What botocore's endpoint rules give for these services in the standard setup (no FIPS,
no dual-stack, no AWS_ENDPOINT_URL_*): tests/unit/test_lean_aws.py compares the two
for a region of each partition. Anything else returns None and the caller uses botocore.
"""

import os
import re

_SUFFIX = {"aws": "amazonaws.com", "aws-cn": "amazonaws.com.cn", "aws-us-gov": "amazonaws.com"}
# IAM is global: one endpoint and one signing region per partition.
_IAM = {"aws": ("iam.amazonaws.com", "us-east-1"),
        "aws-cn": ("iam.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        "aws-us-gov": ("iam.us-gov.amazonaws.com", "us-gov-west-1")}
# Settings under which botocore would pick another endpoint than the plain one.
_BOTOCORE_ENDPOINT_SETTINGS = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_ENDPOINT_URL",
                               "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONFIG_FILE", "AWS_PROFILE")


# botocore's partition patterns (endpoints.json "regionRegex"); the ISO partitions first.
_PARTITIONS = (
    (re.compile(r"^(us|eu)-iso[a-z]*-\w+-\d+$"), None),
    (re.compile(r"^us-gov-\w+-\d+$"), "aws-us-gov"),
    (re.compile(r"^cn-\w+-\d+$"), "aws-cn"),
    (re.compile(r"^(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+$"), "aws"),
)


def partition(region):
    """aws, aws-cn or aws-us-gov; None for an ISO or unknown partition (botocore knows it)."""
    # fullmatch: `$` alone also matches before a final newline ("us-east-1\n" would make a host name)
    return next((name for pattern, name in _PARTITIONS if pattern.fullmatch(region)), None)


def resolve(service, region, endpoint_url=None, environ=os.environ):
    """(host, signing region, scheme) of `service` in `region`, or None for botocore."""
    if endpoint_url:
        scheme, _, rest = endpoint_url.partition("://")
        host, _, path = rest.partition("/")
        if path.strip("/") or scheme not in ("http", "https"):
            return None  # an endpoint under a path prefix: botocore joins it
        return host, region, scheme
    if any(environ.get(name) for name in _BOTOCORE_ENDPOINT_SETTINGS) or \
            any(name.startswith("AWS_ENDPOINT_URL_") for name in environ):
        return None
    part = partition(region)
    if part is None:
        return None
    if service == "iam":
        host, signing_region = _IAM[part]
        return host, signing_region, "https"
    return f"{service}.{region}.{_SUFFIX[part]}", region, "https"
