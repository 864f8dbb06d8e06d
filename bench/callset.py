"""The broker's own call set, made directly: the floor of ``overhead_ratio_p50_inprocess``.

An earlier floor was a fixed list of 7 calls while an issuance made 15, so the
ratio priced the 8 extra calls, not the broker's code. This floor is recorded
from the broker itself: one in-process issuance is traced (every urllib3 request:
botocore, requests and hvac all use it), and each floor iteration makes the same
requests again, to the same endpoints, with the same kind of clients, in the same
waves of overlap (calls the broker had in flight together are made together).
Whatever the pipeline does next (fewer calls, a transaction, other reads), the
floor follows.

How each recorded request is made again:

- Vault: the same method, path, headers (the broker's token, the wrap TTL) and
  body, through a ``requests`` session (hvac is a thin layer over it);
- the forwarded proof (``Host: sts.*``): a fresh signed GetCallerIdentity per
  iteration, through a ``requests`` session, as the broker forwards it;
- AWS JSON protocols (DynamoDB, Secrets Manager, ECS): the recorded JSON is the
  operation's parameters; a botocore client built by the tree's own
  ``aws_client_factory`` makes the call. Conditional writes get fresh key values
  (a suffix on each key attribute), so that they succeed as the broker's did;
- AWS query protocols (EC2, IAM, STS): the parameters are read back from the
  form body with the operation's botocore model (scalars and lists of scalars:
  what the broker sends), then made the same way.

A request that can't be made again is named in a clear error: the floor never
silently leaves a call out.
"""

from __future__ import annotations

import json
import re
import threading
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


class Call:
    """One recorded backend request."""

    def __init__(self, start, end, method, url, headers, body, port):
        self.start, self.end = start, end
        self.method, self.url, self.port = method, url, port
        self.headers = {str(k): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in dict(headers).items()}
        self.body = body if isinstance(body, bytes) else (body or "").encode()
        low = {k.lower(): v for k, v in self.headers.items()}
        self.low = low
        m = _SCOPE.search(low.get("authorization", ""))
        self.region, self.service = (m.group(1), m.group(2)) if m else (None, None)
        self.target = low.get("x-amz-target", "")

    @property
    def label(self) -> str:
        if self.low.get("host", "").startswith("sts."):
            return "sts GetCallerIdentity (forwarded proof)"
        if self.target:
            return f"{self.service or self.target.split('_')[0].lower()} {self.target.rsplit('.', 1)[-1]}"
        if self.service:
            action = (parse_qs(self.body.decode()).get("Action") or ["?"])[0]
            return f"{self.service} {action}"
        return f"vault {self.method} {urlsplit(self.url).path.removeprefix('/v1/')}"


@contextmanager
def recording():
    """Record every request made while active (any thread): the broker's own HTTP client's
    and urllib3's (older trees, botocore clients)."""
    from urllib3.connectionpool import HTTPConnectionPool

    original = HTTPConnectionPool.urlopen
    calls: list[Call] = []
    lock = threading.Lock()
    inside = threading.local()  # in HttpClient.request: its urllib3 call is that request, recorded once

    def urlopen(pool, method, url, *args, **kwargs):
        if getattr(inside, "http_client", False):
            return original(pool, method, url, *args, **kwargs)
        body = kwargs.get("body", args[0] if len(args) > 0 else None)
        headers = kwargs.get("headers", args[1] if len(args) > 1 else None) or {}
        t0 = time.perf_counter()
        try:
            return original(pool, method, url, *args, **kwargs)
        finally:
            full = url if url.startswith("http") else f"{pool.scheme}://{pool.host}:{pool.port}{url}"
            with lock:
                calls.append(Call(t0, time.perf_counter(), method, full, headers, body, pool.port))

    HTTPConnectionPool.urlopen = urlopen
    try:  # the broker's own HTTP client (chalicelib/http_client.py: the STS forward, an issuer's keys)
        from chalicelib.http_client import HttpClient
    except ImportError:  # an older tree: urllib3 only
        HttpClient = None
    if HttpClient is not None:
        original_request = HttpClient.request

        def request(self, method, url, *args, **kwargs):
            t0 = time.perf_counter()
            inside.http_client = True
            try:
                return original_request(self, method, url, *args, **kwargs)
            finally:
                inside.http_client = False
                with lock:
                    calls.append(Call(t0, time.perf_counter(), method, url, kwargs.get("headers") or {},
                                      kwargs.get("body"), urlsplit(url).port))

        HttpClient.request = request
    try:
        yield calls
    finally:
        HTTPConnectionPool.urlopen = original
        if HttpClient is not None:
            HttpClient.request = original_request


def waves(calls: list[Call]) -> list[list[Call]]:
    """Group calls into waves: a call joins the current wave when it started before
    the first call of that wave ended (the broker did not wait for any of them)."""
    out: list[list[Call]] = []
    first_end = None
    for c in sorted(calls, key=lambda c: c.start):
        if out and c.start < first_end:
            out[-1].append(c)
            first_end = min(first_end, c.end)
        else:
            out.append([c])
            first_end = c.end
    return out


class Floor:
    """The recorded call set of one issuance, made again directly by :meth:`run`."""

    def __init__(self, bench, calls: list[Call]):
        import requests

        from .env import import_app  # noqa: F401  (the tree's chalicelib is on sys.path)
        from chalicelib.backends import aws_client_factory

        self.bench = bench
        self.plan = waves(calls)
        self.labels = [[c.label for c in wave] for wave in self.plan]
        env = bench.broker_env()
        settings = types.SimpleNamespace(aws_region=env["BROKER_AWS_REGION"],
                                         aws_endpoint_url=env["BROKER_AWS_ENDPOINT_URL"], aws_clients="lean")
        self._make = aws_client_factory(settings)  # the broker's own client settings, the broker's keys (env)
        self._clients: dict = {}
        self.http = requests.Session()
        self.http.trust_env = False
        try:  # the broker's own HTTP client for Vault and the STS forward: the same work on both sides
            from chalicelib.http_client import HttpClient

            self._pools = HttpClient()
        except ImportError:  # an older tree: requests, as its broker used
            self._pools = None
        self._keys: dict = {}
        self.pool = ThreadPoolExecutor(max(len(w) for w in self.plan) if self.plan else 1)
        self.steps = [[self._prepare(c) for c in wave] for wave in self.plan]

    def close(self) -> None:
        self.pool.shutdown()

    def client(self, service, region):
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._make(service, region)
        return self._clients[key]

    # ---- one request, made again --------------------------------------------------

    def _send(self, method, url, body, headers) -> int:
        if self._pools is not None:
            return self._pools.request(method, url, body=body, headers=headers, connect_timeout=3, read_timeout=5).status
        r = self.http.request(method, url, data=body, headers=headers, allow_redirects=False, timeout=(3, 5))
        return r.status_code

    def _prepare(self, c: Call):
        if c.low.get("host", "").startswith("sts."):
            url = c.url

            def forwarded_proof(ctx):
                status = self._send("POST", url, c.body, ctx["sts_headers"])
                if status != 200:
                    raise RuntimeError(f"floor: the forwarded proof got {status}")
            return forwarded_proof
        if c.service is None:  # Vault
            headers = {k: v for k, v in c.headers.items() if k.lower() not in ("content-length", "connection")}

            def vault(_ctx):
                status = self._send(c.method, c.url, c.body or None, headers)
                if status >= 300 and status != 404:
                    raise RuntimeError(f"floor: vault {c.method} {c.url} answered {status}")
            return vault
        client = self.client(c.service, c.region)
        if c.target:
            operation = c.target.rsplit(".", 1)[-1]
            params = json.loads(c.body or b"{}")
            fresh = self._freshen(c.service, operation, params)
        else:
            form = parse_qs(c.body.decode(), keep_blank_values=True)
            operation = form["Action"][0]
            params = _query_params(client, operation, form)
            fresh = None

        if hasattr(client, "_make_api_call"):  # botocore
            send = client._make_api_call
        else:  # a lean client (chalicelib/lean_aws/): the operation's method
            from botocore import xform_name

            method = getattr(client, xform_name(operation))

            def send(_operation, call_params):
                return method(**call_params)

        def aws(ctx):
            send(operation, fresh(ctx["n"]) if fresh else params)
        return aws

    def _freshen(self, service, operation, params):
        """For conditional writes: a function n -> params with fresh key values."""
        if service != "dynamodb":
            return None
        if operation == "PutItem" and "ConditionExpression" in params:
            keys = self._key_names(params["TableName"])
            return lambda n: {**params, "Item": _suffix(params["Item"], keys, n)}
        if operation == "TransactWriteItems":
            # the tables' key names now, so that no iteration makes a DescribeTable
            key_names = {t: self._key_names(t) for t in
                         {next(iter(item.values()))["TableName"] for item in params["TransactItems"]}}

            def fresh(n):
                items = []
                for item in params["TransactItems"]:
                    kind, body = next(iter(item.items()))
                    body = dict(body)
                    keys = key_names[body["TableName"]]
                    if kind == "Put":
                        body["Item"] = _suffix(body["Item"], keys, n)
                    elif kind == "Update" and "ConditionExpression" in body and "attribute_not_exists" in body["ConditionExpression"]:
                        body["Key"] = _suffix(body["Key"], keys, n)
                    items.append({kind: body})
                return {**params, "TransactItems": items,
                        **({"ClientRequestToken": str(uuid.uuid4())} if "ClientRequestToken" in params else {})}
            return fresh
        return None

    def _key_names(self, table):
        if table not in self._keys:
            desc = self.client("dynamodb", None).describe_table(TableName=table)["Table"]
            self._keys[table] = [k["AttributeName"] for k in desc["KeySchema"]]
        return self._keys[table]

    # ---- the whole set ----------------------------------------------------------

    def run(self, sts_headers: dict) -> None:
        """One iteration: the recorded calls, wave by wave (a wave's calls at once)."""
        ctx = {"sts_headers": sts_headers, "n": f"floor-{uuid.uuid4().hex[:8]}"}
        for wave in self.steps:
            if len(wave) == 1:
                wave[0](ctx)
            else:
                for f in [self.pool.submit(step, ctx) for step in wave]:
                    f.result()


def _service_model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def _suffix(item: dict, keys: list, n: str) -> dict:
    out = dict(item)
    for k in keys:
        v = out.get(k)
        if isinstance(v, dict) and "S" in v:
            out[k] = {"S": f"{v['S']}#{n}"}
    return out


def _query_params(client, operation: str, form: dict) -> dict:
    """The parameters of a query-protocol request (EC2, IAM, STS), read back with botocore's
    model of the service (a lean client has none of its own)."""
    service_model = client.meta.service_model if hasattr(client, "meta") else _service_model(client.service)
    model = service_model.operation_model(operation)
    ec2 = service_model.protocol == "ec2"
    shape = model.input_shape
    params: dict = {}
    used = {"Action", "Version"}
    for name, member in (shape.members.items() if shape else ()):
        if ec2:
            wire = member.serialization.get("queryName") or (
                (member.serialization.get("name") or name)[0].upper() + (member.serialization.get("name") or name)[1:])
        else:
            wire = member.serialization.get("name") or name
        if member.type_name == "list":
            prefix = f"{wire}." if ec2 else f"{wire}.member."
            values = [(int(k[len(prefix):]), v[0]) for k, v in form.items()
                      if k.startswith(prefix) and k[len(prefix):].isdigit()]
            if values:
                if member.member.type_name not in ("string",):
                    raise RuntimeError(f"floor: cannot make {operation} again (list of {member.member.type_name})")
                params[name] = [v for _, v in sorted(values)]
                used.update(k for k in form if k.startswith(prefix))
        elif wire in form:
            raw = form[wire][0]
            params[name] = {"integer": int, "long": int, "boolean": lambda x: x == "true"}.get(member.type_name, str)(raw)
            used.add(wire)
    left = set(form) - used
    if left:
        raise RuntimeError(f"floor: cannot make {operation} again: parameters {sorted(left)} not understood")
    return params
