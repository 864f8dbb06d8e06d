"""AWS Signature Version 4 for the broker's own requests (POST to "/", no query string).

The algorithm of https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html,
with the standard library's hmac/hashlib: the lean clients (this package) sign without
importing botocore. tests/unit/test_lean_aws.py checks it byte for byte against
botocore's SigV4Auth, and every service test sends it to moto, which verifies it.
"""

import functools
import hashlib
import hmac
import time

ALGORITHM = "AWS4-HMAC-SHA256"


def _hmac(key, text):
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=32)  # one per day, region and service (and key, when credentials rotate)
def signing_key(secret_key, date, region, service):
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def sign_post(*, host, headers, body, service, region, credentials, now=None):
    """The headers to send for a POST of `body` (bytes) to https://host/: `headers` (their
    names lowercase) plus host, x-amz-date, x-amz-security-token (temporary credentials)
    and authorization. Every header sent is signed."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    date = amz_date[:8]
    signed = dict(headers)
    signed["host"] = host
    signed["x-amz-date"] = amz_date
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical_headers = "".join(f"{name}:{' '.join(str(signed[name]).split())}\n" for name in names)
    signed_names = ";".join(names)
    canonical_request = "\n".join(("POST", "/", "", canonical_headers, signed_names,
                                   hashlib.sha256(body).hexdigest()))
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join((ALGORITHM, amz_date, scope,
                                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()))
    signature = hmac.new(signing_key(credentials.secret_key, date, region, service),
                         string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                               f"SignedHeaders={signed_names}, Signature={signature}")
    return signed
