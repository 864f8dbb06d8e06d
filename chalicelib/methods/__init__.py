"""The proof methods this broker knows: one line each.

A method is a package with:
- `build(settings, make_aws_client, pools, rules, stores=None)` -> the Method (proof + facts), built
  on first use; `pools` is the broker's HTTP client (chalicelib/http_client.py);
- `conditions` (its `match.py`): the `[rule.<name>]` table of the rules file,
  parsed and matched by the method itself; pure, importable by the client;
- `settings.py`: its own environment variables, validated at start.

Adding a method (a Kubernetes service-account token, an Azure managed identity)
is a new package and one line here; see docs/architecture.md.
"""

import importlib

# name -> package. The order is the order of `broker policy explain` and the docs.
REGISTRY = {
    "aws": "chalicelib.methods.aws",
    "gcp": "chalicelib.methods.gcp",
}


def package(name):
    """The method's package (imported on first use: AWS-only traffic never loads Google's libraries)."""
    return importlib.import_module(REGISTRY[name])


def conditions():
    """{name: match module}: the rule conditions of every method, for the policy engine."""
    return {name: importlib.import_module(f"{module}.match") for name, module in REGISTRY.items()}


def facts_from_dict(data):
    """A method's facts from a dict (its `method` says which; aws by default), e.g. an
    audit record's `facts`: for `broker policy explain`."""
    if not isinstance(data, dict):
        raise ValueError("facts must be a JSON object")
    name = data.get("method", "aws")
    if name not in REGISTRY:
        raise ValueError(f"unknown proof method {name!r}; known: {', '.join(REGISTRY)}")
    return importlib.import_module(f"{REGISTRY[name]}.match").facts_from_dict(data)
