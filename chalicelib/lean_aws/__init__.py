"""Lean AWS clients for the broker's hot path (issue 14): SigV4 with the standard
library, the broker's HTTP pools (chalicelib/http_pool.py), no botocore client machinery. See client.py for what each
keeps of botocore's behaviour, and docs/performance.md for what it saves.

`make_client(service, region, ...)` returns a lean client, or None when this package does
not serve that service or endpoint (the caller then makes a botocore client).
"""

from .client import SERVICES, AwsConnectionError, AwsError, LeanClient
from .credentials import FixedCredentials, OwnCredentials

__all__ = ["make_client", "AwsError", "AwsConnectionError", "OwnCredentials", "SERVICES"]


def make_client(service, region, *, endpoint_url, pools, own_credentials, aws_access_key_id=None,
           aws_secret_access_key=None, aws_session_token=None):
    if service not in SERVICES:
        return None
    from .endpoints import resolve

    where = resolve(service, region, endpoint_url)
    if where is None:
        return None
    host, signing_region, scheme = where
    credentials = (FixedCredentials(aws_access_key_id, aws_secret_access_key, aws_session_token)
                   if aws_access_key_id else own_credentials)
    return LeanClient(service, host=host, scheme=scheme, signing_region=signing_region, credentials=credentials,
                      pools=pools, fast=service == "dynamodb")
