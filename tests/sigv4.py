"""A SigV4 signer for tests that need to craft proofs: any headers, any date, any body.

The real client signs with botocore (broker/aws_proof.py); this one exists so
that tests can build the forged and malformed variants an attacker would send.
"""

import base64
import hashlib
import hmac
import json
from datetime import datetime, timezone

GCI_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(creds, *, server_id=None, url="https://sts.amazonaws.com/", host=None, region="us-east-1",
         body=GCI_BODY, method="POST", when=None, extra_headers=None, unsigned_headers=None,
         sign_server_id=True, service="sts"):
    """Return the request headers (a dict, Authorization included) of a signed STS request."""
    when = when or datetime.now(timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    host = host or url.split("/")[2]
    headers = {"Host": host, "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
               "X-Amz-Date": amz_date}
    if creds.get("session_token"):
        headers["X-Amz-Security-Token"] = creds["session_token"]
    if server_id is not None and sign_server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = server_id
    headers.update(extra_headers or {})
    names = sorted(headers, key=str.lower)
    canonical_headers = "".join(f"{n.lower()}:{headers[n].strip()}\n" for n in names)
    signed = ";".join(n.lower() for n in names)
    canonical = "\n".join([method, "/", "", canonical_headers, signed, hashlib.sha256(body.encode()).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + creds["secret_access_key"]).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['access_key_id']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    if server_id is not None and not sign_server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = server_id
    headers.update(unsigned_headers or {})
    return headers


def login_body(role, headers, *, url="https://sts.amazonaws.com/", body=GCI_BODY, method="POST"):
    """The JSON body of POST /v1/credentials/aws, encoded as Vault's iam login fields."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    return {
        "role": role,
        "iam_http_request_method": method,
        "iam_request_url": b64(url),
        "iam_request_body": b64(body),
        "iam_request_headers": b64(json.dumps({k: [v] for k, v in headers.items()})),
    }


def signed_login(creds, role, server_id, **kwargs):
    url = kwargs.get("url", "https://sts.amazonaws.com/")
    body = kwargs.get("body", GCI_BODY)
    method = kwargs.get("method", "POST")
    return login_body(role, sign(creds, server_id=server_id, **kwargs), url=url, body=body, method=method)
