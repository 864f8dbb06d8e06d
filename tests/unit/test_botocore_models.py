"""The trimmed botocore models (deploy/botocore_models.py, chalicelib/botocore_models/): up
to date with the pinned botocore, holding every operation the code calls, and the ones the
broker's clients are built from. tests/service/test_trimmed_models.py calls through them."""

import json
from types import SimpleNamespace

import botocore
import pytest

from chalicelib.aws_clients import TRIMMED_MODELS
from chalicelib.backends import botocore_client_factory
from deploy import botocore_models
from tests.service.test_least_privilege import clients_made, code_calls, table_rows


def test_the_files_are_what_the_pinned_botocore_gives():
    assert botocore_models.written() == botocore_models.build(), (
        f"chalicelib/botocore_models is out of date for botocore {botocore.__version__}: "
        "run python deploy/botocore_models.py")


def test_every_call_in_the_code_has_its_operation_in_the_trimmed_models():
    """Each call of .chalice/POLICY.md's table in its client's trimmed model, and every call
    the code makes (found as tests/service/test_least_privilege.py finds them) in one: the
    table being complete is test_least_privilege's to check."""
    from botocore import xform_name

    models = {}
    for path in botocore_models.written():
        if "/" not in path:
            continue  # endpoints.json
        service = path.split("/")[0]
        models[service] = {xform_name(op) for op in json.loads((botocore_models.OUT / path).read_text())["operations"]}
    assert clients_made() <= set(models)
    rows = [r for r in table_rows() if r.method]
    for row in rows:
        assert row.client in models, f"{row.module}: no trimmed model for {row.client}"
        assert row.method in models[row.client], f"{row.module}: {row.client}.{row.method} is not in the trimmed model"
    clients_of = {}
    for row in rows:
        clients_of.setdefault((row.module, row.method), set()).add(row.client)
    for module, method in code_calls():
        clients = clients_of.get((module, method)) or set(models)
        assert any(method in models[c] for c in clients), (
            f"{module}: {method} is in no trimmed model: run python deploy/botocore_models.py "
            "after listing the call in .chalice/POLICY.md")


def test_the_trimmed_operations_and_shapes_hold_no_documentation():
    for path in [p for p in botocore_models.written() if p.endswith("/service-2.json")]:
        model = json.loads((botocore_models.OUT / path).read_text())
        assert '"documentation"' not in json.dumps([model["operations"], model["shapes"]])


def test_a_trimmed_model_keeps_what_an_operation_reaches():
    model = {"metadata": {"serviceId": "X"}, "documentation": "doc", "operations": {
        "GetThing": {"input": {"shape": "In"}, "errors": [{"shape": "Oops"}], "documentation": "d"},
        "PutThing": {"input": {"shape": "Other"}},
        "DescribeEndpoints": {"endpointoperation": True, "output": {"shape": "Eps"}}},
        "shapes": {"In": {"type": "structure", "members": {"Ids": {"shape": "IdList", "documentation": "x"}}},
                   "IdList": {"type": "list", "member": {"shape": "Id"}}, "Id": {"type": "string"},
                   "Oops": {"type": "structure", "members": {}}, "Other": {"type": "string"},
                   "Eps": {"type": "map", "key": {"shape": "Id"}, "value": {"shape": "Id"}}}}
    trimmed = botocore_models.trim(model, {"get_thing"})
    assert set(trimmed["operations"]) == {"GetThing", "DescribeEndpoints"}
    assert set(trimmed["shapes"]) == {"In", "IdList", "Id", "Oops", "Eps"}
    assert "documentation" not in json.dumps([trimmed["operations"], trimmed["shapes"]])
    with pytest.raises(SystemExit, match="no operation for put_things"):
        botocore_models.trim(model, {"put_things"})


def test_the_broker_clients_are_built_from_the_trimmed_models(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    make = botocore_client_factory(SimpleNamespace(aws_region="us-east-1", aws_endpoint_url=None))
    for service in ("ec2", "iam", "sts", "dynamodb"):
        client = make(service)
        names = set(client.meta.service_model.operation_names)
        trimmed = next(p for p in botocore_models.written() if p.startswith(service + "/"))
        expected = set(json.loads((botocore_models.OUT / trimmed).read_text())["operations"])
        assert names == expected, service
    assert not hasattr(make("ec2"), "run_instances")  # the broker can't even form that call
    assert TRIMMED_MODELS.endswith("chalicelib/botocore_models")


def test_endpoints_keep_every_partition_and_region_and_only_the_called_services():
    import botocore.session

    full = botocore.session.get_session().get_component("data_loader").load_data("endpoints")
    trimmed = json.loads((botocore_models.OUT / "endpoints.json").read_text())
    assert [p["partition"] for p in trimmed["partitions"]] == [p["partition"] for p in full["partitions"]]
    for mine, theirs in zip(trimmed["partitions"], full["partitions"]):
        assert mine["regions"] == theirs["regions"] and mine["defaults"] == theirs["defaults"]
        assert set(mine["services"]) == set(botocore_models.calls_from_policy()) & set(theirs["services"])
        assert all(mine["services"][s] == theirs["services"][s] for s in mine["services"])


def test_a_client_of_another_service_still_resolves_its_endpoint(monkeypatch):
    """endpoints.json knows only the broker's services: any other client resolves its
    endpoint through its own rule set, to the same URL as with botocore's full data."""
    import botocore.session

    from chalicelib.aws_clients import use_trimmed_models

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for region in ("eu-west-1", "cn-north-1", "us-gov-west-1"):
        for service in ("lambda", "sqs", "iam", "sts"):
            full = botocore.session.get_session().create_client(service, region_name=region)
            trimmed = use_trimmed_models(botocore.session.get_session()).create_client(service, region_name=region)
            assert trimmed.meta.endpoint_url == full.meta.endpoint_url, (service, region)
            assert trimmed.meta.region_name == full.meta.region_name
            assert trimmed._request_signer._signing_name == full._request_signer._signing_name
            assert trimmed._request_signer._region_name == full._request_signer._region_name
