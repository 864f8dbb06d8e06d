"""Trimmed botocore service models for the Lambda package (issue 14, item 4: the cold start).

    python deploy/botocore_models.py            # (re)write chalicelib/botocore_models/
    python deploy/botocore_models.py --check    # exit 1 if they differ from what the pinned botocore gives

botocore loads a service's whole model when a client is made: EC2's is 3.7 MB of JSON
(830 operations; ~70 ms to parse here, docs/performance.md), of which the broker calls one.
This writes, for each service the broker calls, a model with only the operations it calls
(the table of .chalice/POLICY.md, which tests/service/test_least_privilege.py keeps equal
to the code), the shapes they reach, and no documentation. chalicelib/backends.py puts the
directory first on its botocore loader's search path (a data path, as AWS_DATA_PATH would),
so a client of these services is built from the trimmed model; anything else (the endpoint
rule sets, paginators, the services not here) still comes from botocore's own data.
endpoints.json (every partition and region, 733 kB, read once per botocore session) is
trimmed to the same services: a client of any other service resolves its endpoint through
its own rule set as before; only the legacy lookups of endpoints.json no longer know it.

Generated from the botocore of this virtualenv (requirements-dev.txt pins it); the
Lambda runtime brings its own botocore, which reads these files the same way (if the
runtime's botocore knows a newer API version of a service, it loads its own full model
instead: slower, never wrong). tests/unit/test_botocore_models.py fails when the
files are out of date or miss an operation the code calls.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
POLICY_MD = PROJECT / ".chalice" / "POLICY.md"
OUT = PROJECT / "chalicelib" / "botocore_models"
# Keys that only document (docstrings, examples): dropped everywhere.
DOC_KEYS = frozenset({"documentation", "documentationUrl", "examples", "deprecatedMessage"})


def calls_from_policy(text: str | None = None) -> dict[str, set[str]]:
    """{service: {botocore method}} from the table of .chalice/POLICY.md ("## The calls")."""
    text = text if text is not None else POLICY_MD.read_text()
    section = text.split("## The calls", 1)[1].split("\n## ", 1)[0]
    calls: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("code", "---"):
            continue
        client, method = cells[1], cells[2].strip("`")
        if client and method and re.fullmatch(r"[a-z0-9]+", client):
            calls.setdefault(client, set()).add(method)
    return calls


def _shape_refs(shape: dict):
    """The names of the shapes one shape refers to."""
    for key in ("member", "key", "value"):
        if isinstance(shape.get(key), dict):
            yield shape[key]["shape"]
    for member in (shape.get("members") or {}).values():
        yield member["shape"]


def _strip_docs(value):
    if isinstance(value, dict):
        return {k: _strip_docs(v) for k, v in value.items() if k not in DOC_KEYS}
    if isinstance(value, list):
        return [_strip_docs(v) for v in value]
    return value


def trim(model: dict, methods: set[str]) -> dict:
    """The model with only the operations of `methods` (botocore method names, e.g.
    describe_instances), the operation endpoint discovery uses if the service has one,
    and the shapes these reach."""
    from botocore import xform_name

    by_method = {xform_name(name): name for name in model["operations"]}
    unknown = sorted(m for m in methods if m not in by_method)
    if unknown:
        raise SystemExit(f"{model['metadata']['serviceId']}: no operation for {', '.join(unknown)}")
    keep = {by_method[m] for m in methods}
    keep |= {name for name, op in model["operations"].items() if op.get("endpointoperation")}
    operations = {name: model["operations"][name] for name in sorted(keep)}
    pending = [ref["shape"] for op in operations.values()
               for ref in [op.get("input"), op.get("output"), *op.get("errors", [])] if ref]
    shapes = {}
    while pending:
        name = pending.pop()
        if name in shapes:
            continue
        shapes[name] = model["shapes"][name]
        pending.extend(_shape_refs(shapes[name]))
    # Only the operations' and shapes' documentation goes: botocore reads that with .get();
    # elsewhere (clientContextParams) it requires it.
    trimmed = {k: v for k, v in model.items() if k not in ("operations", "shapes") and k not in DOC_KEYS}
    trimmed["operations"] = _strip_docs(operations)
    trimmed["shapes"] = _strip_docs({name: shapes[name] for name in sorted(shapes)})
    return trimmed


def trim_endpoints(endpoints: dict, services: set[str]) -> dict:
    """botocore's endpoints.json (every partition, its regions and defaults) with only the
    services' entries: 733 kB, loaded once per botocore session, becomes a few kB."""
    out = dict(endpoints)
    out["partitions"] = [{**p, "services": {k: v for k, v in p["services"].items() if k in services}}
                         for p in endpoints["partitions"]]
    return out


def build(calls: dict[str, set[str]] | None = None) -> dict[str, bytes]:
    """{relative path: file content} of the trimmed models, from the pinned botocore."""
    import botocore.session

    loader = botocore.session.get_session().get_component("data_loader")
    calls = calls or calls_from_policy()
    endpoints = trim_endpoints(loader.load_data("endpoints"), set(calls))
    files = {"endpoints.json": (json.dumps(endpoints, sort_keys=True, separators=(",", ":")) + "\n").encode()}
    for service, methods in sorted(calls.items()):
        version = loader.determine_latest_version(service, "service-2")
        model = loader.load_service_model(service, "service-2", version)
        text = json.dumps(trim(model, methods), sort_keys=True, separators=(",", ":")) + "\n"
        files[f"{service}/{version}/service-2.json"] = text.encode()
    return files


def written(out: Path = OUT) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.json"))} if out.exists() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when out of date")
    args = parser.parse_args(argv)
    import botocore

    files = build()
    if args.check:
        if written() != files:
            print(f"{OUT.relative_to(PROJECT)} is out of date for botocore {botocore.__version__}: "
                  "run python deploy/botocore_models.py", file=sys.stderr)
            return 1
        return 0
    for old in OUT.rglob("*.json") if OUT.exists() else []:
        if old.relative_to(OUT).as_posix() not in files:
            old.unlink()
    for rel, content in files.items():
        path = OUT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    total = sum(len(c) for c in files.values())
    print(f"wrote {len(files)} trimmed models ({total / 1000:.0f} kB) to {OUT.relative_to(PROJECT)} "
          f"from botocore {botocore.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
