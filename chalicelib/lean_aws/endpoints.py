"""Where a service's API answers, for the partitions the lean clients serve.

What botocore's endpoint rules give for these services in the standard setup (no FIPS,
no dual-stack, no AWS_ENDPOINT_URL_*): tests/unit/test_lean_aws.py compares the two
for a region of each partition. Anything else returns None and the caller uses botocore.
"""

import os

_SUFFIX = {"aws": "amazonaws.com", "aws-cn": "amazonaws.com.cn", "aws-us-gov": "amazonaws.com"}
# IAM is global: one endpoint and one signing region per partition.
_IAM = {"aws": ("iam.amazonaws.com", "us-east-1"),
        "aws-cn": ("iam.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        "aws-us-gov": ("iam.us-gov.amazonaws.com", "us-gov-west-1")}
# Settings under which botocore would pick another endpoint than the plain one.
_BOTOCORE_ENDPOINT_SETTINGS = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_ENDPOINT_URL",
                               "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONFIG_FILE", "AWS_PROFILE")


def partition(region):
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.split("-")[0] in ("us", "eu", "ap", "ca", "sa", "me", "af", "il", "mx"):
        return "aws"
    return None  # an ISO or unknown partition: botocore knows it


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
