"""Least privilege, proven: `.chalice/policy-prod.json` holds what the function calls and
nothing more. See `.chalice/POLICY.md` for the method and the moto workaround.

1. the AWS calls in chalicelib (found with ast) == the calls listed in POLICY.md
2. the actions of POLICY.md's rows == the actions of policy-prod.json, statement by statement
3. the Resource patterns admit the prod stage's tables/secret/log group and nothing else
4. the in-process broker runs its AWS paths with the keys of a moto IAM user holding the
   policy (moto enforces IAM): every operation it makes is in the policy, and without
   any one of those actions the flows fail.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import botocore
import botocore.session
import pytest

import app as broker_app
import chalicelib.backends as backends
from devstack.aws import Keys

REPO = Path(__file__).resolve().parents[2]
POLICY_MD = REPO / ".chalice" / "POLICY.md"
PROD_POLICY = REPO / ".chalice" / "policy-prod.json"
CONFIG = REPO / ".chalice" / "config.json"
# chalicelib.aws_calls helpers and the position of the botocore method among their arguments
AWS_CALL_HELPERS = {"call": 1, "try_call": 2, "attempt": 2, "transact": 1}
# A transaction has no IAM action of its own: AWS authorizes each of its items.
TRANSACTION_ITEM_ACTIONS = {("dynamodb", "transact_write_items"): {"dynamodb:PutItem", "dynamodb:UpdateItem",
                                                                   "dynamodb:ConditionCheckItem"},
                            ("dynamodb", "transact_get_items"): {"dynamodb:GetItem"}}
# Calls that need no IAM permission at all.
NO_PERMISSION = {"sts:GetCallerIdentity"}


def prod_policy() -> dict:
    return json.loads(PROD_POLICY.read_text())


def statements(policy: dict) -> list[dict]:
    st = policy["Statement"]
    return st if isinstance(st, list) else [st]


def as_list(value) -> list[str]:
    return value if isinstance(value, list) else [value]


# ---- POLICY.md's table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    module: str          # chalicelib/x.py, or "" for the runtime
    client: str
    method: str          # botocore method, "" when the code makes no call (logs)
    actions: tuple[str, ...]
    statement: str | None  # Sid, or None when the function never makes the call


def table_rows() -> list[Row]:
    text = POLICY_MD.read_text()
    section = text.split("## The calls", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("code", "---"):
            continue
        code, client, method, action, _resource, statement = cells
        module = re.match(r"`(chalicelib/[a-z_/]+\.py)`", code)
        sid = re.fullmatch(r"`([A-Za-z0-9]+)`", statement)
        rows.append(Row(
            module=module.group(1) if module else "",
            client=client,
            method=method.strip("`"),
            actions=tuple(a.strip().strip("`") for a in action.split(",")),
            statement=sid.group(1) if sid else None,
        ))
    assert len(rows) >= 8, "POLICY.md's table of calls was not found"
    return rows


def code_calls() -> set[tuple[str, str]]:
    """(module, botocore method) of every call()/try_call()/attempt() in chalicelib."""
    found = set()
    for path in sorted((REPO / "chalicelib").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        helpers = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "aws_calls" and node.level >= 1:
                for alias in node.names:
                    if alias.name in AWS_CALL_HELPERS:
                        helpers[alias.asname or alias.name] = AWS_CALL_HELPERS[alias.name]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
                fn = node.args[helpers[node.func.id]]
                assert isinstance(fn, ast.Attribute), (
                    f"{path.name}:{node.lineno}: pass the botocore method itself (client.method) to "
                    f"{node.func.id}(), so that the call can be checked against .chalice/POLICY.md")
                found.add((path.relative_to(REPO).as_posix(), fn.attr))
    return found


def clients_made() -> set[str]:
    """The services of the botocore clients chalicelib makes: make("..."), self._make("..."),
    clients.client("...")."""
    found = set()
    for path in sorted((REPO / "chalicelib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else (
                node.func.attr if isinstance(node.func, ast.Attribute) else None)
            if name in ("make", "_make", "client") and node.args[0].value.isalnum():
                found.add(node.args[0].value)
    return found


def test_every_aws_call_in_the_code_is_listed_and_every_listed_call_is_made():
    listed = {(r.module, r.method) for r in table_rows() if r.method}
    assert code_calls() == listed
    assert clients_made() == {r.client for r in table_rows() if r.method}


def test_listed_actions_are_the_real_iam_actions_of_the_methods():
    session = botocore.session.get_session()
    for row in table_rows():
        if not row.method:
            continue
        model = session.get_service_model(row.client)
        ops = {botocore.xform_name(op): op for op in model.operation_names}
        assert row.method in ops, f"{row.client} has no method {row.method}"
        items = TRANSACTION_ITEM_ACTIONS.get((row.client, row.method))
        if items:
            assert set(row.actions) <= items
        else:
            assert row.actions == (f"{model.signing_name}:{ops[row.method]}",)


def test_policy_actions_are_exactly_the_listed_ones():
    policy = prod_policy()
    in_policy = {(a, st["Sid"]) for st in statements(policy) for a in as_list(st["Action"])}
    listed = {(a, r.statement) for r in table_rows() if r.statement for a in r.actions}
    assert in_policy == listed
    for st in statements(policy):  # keeps the evaluation below honest
        assert st["Effect"] == "Allow"
        assert set(st) == {"Sid", "Effect", "Action", "Resource"}, "no NotAction/NotResource/Condition"
        assert all("*" not in a for a in as_list(st["Action"])), "no action wildcards"


# ---- resources ---------------------------------------------------------------------------------


def _wildcard(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def allowed(policy: dict, action: str, resource: str) -> bool:
    """IAM's evaluation for Allow-only, condition-free policies (checked above)."""
    return any(
        any(_wildcard(a).fullmatch(action) for a in as_list(st["Action"]))
        and any(_wildcard(r).fullmatch(resource) for r in as_list(st["Resource"]))
        for st in statements(policy) if st["Effect"] == "Allow"
    )


def stage_arns(stage: str, account: str = "111122223333", region: str = "eu-west-1") -> dict[str, str]:
    config = json.loads(CONFIG.read_text())
    env = config["stages"][stage]["environment_variables"]
    function = f"{config['app_name']}-{stage}"
    table = f"arn:aws:dynamodb:{region}:{account}:table/"
    # the lead's settings may not name the quarantine table yet: the resources template's name
    quarantine = env.get("BROKER_QUARANTINE_TABLE", f"{config['app_name']}-{stage}-quarantine")
    return {
        "audit": table + env["BROKER_AUDIT_TABLE"],
        "audit_index": table + env["BROKER_AUDIT_TABLE"] + "/index/by-time",
        "replay": table + env["BROKER_REPLAY_TABLE"],
        "quarantine": table + quarantine,
        "secret": f"arn:aws:secretsmanager:{region}:{account}:secret:{env['BROKER_VAULT_SECRET_ID_SECRET']}-AbC123",
        "log_stream": (f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function}:log-stream:"
                       "2026/01/01/[$LATEST]0123456789abcdef"),
    }


def test_resources_admit_the_prod_stage_and_nothing_else():
    policy, prod, dev = prod_policy(), stage_arns("prod"), stage_arns("dev")
    for table in ("audit", "replay", "quarantine"):
        assert allowed(policy, "dynamodb:PutItem", prod[table])
    for action in ("dynamodb:GetItem", "dynamodb:DescribeTable"):
        assert allowed(policy, action, prod["audit"]) and allowed(policy, action, prod["quarantine"])
    assert allowed(policy, "dynamodb:GetItem", prod["replay"])  # the lookup before STS
    assert not allowed(policy, "dynamodb:DescribeTable", prod["replay"])
    for action in ("dynamodb:ConditionCheckItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert allowed(policy, action, prod["quarantine"])
        assert not allowed(policy, action, prod["replay"])
    # the audit table is written once per record, never changed: a token registration only
    # checks an issuance's record (ConditionCheckItem reads, it writes nothing)
    assert allowed(policy, "dynamodb:ConditionCheckItem", prod["audit"])
    for action in ("dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert not allowed(policy, action, prod["audit"])
    assert allowed(policy, "dynamodb:Query", prod["audit_index"])
    for table in ("audit", "replay", "quarantine"):
        assert not allowed(policy, "dynamodb:Query", prod[table])  # indexes only, never the base table
        assert not allowed(policy, "dynamodb:Scan", prod[table])
    assert allowed(policy, "secretsmanager:GetSecretValue", prod["secret"])
    for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
        assert allowed(policy, action, prod["log_stream"])
    # nothing of the dev stage, nor anything else in the account
    for action, arn in [("dynamodb:PutItem", dev["audit"]), ("dynamodb:PutItem", dev["replay"]),
                        ("dynamodb:PutItem", dev["quarantine"]), ("dynamodb:Query", dev["audit_index"]),
                        ("dynamodb:DescribeTable", dev["audit"]),
                        ("secretsmanager:GetSecretValue", dev["secret"]),
                        ("logs:PutLogEvents", dev["log_stream"]),
                        ("dynamodb:PutItem", "arn:aws:dynamodb:eu-west-1:111122223333:table/payments"),
                        ("secretsmanager:GetSecretValue",
                         prod["secret"].replace("vault-secret-id-AbC123", "vault-secret-id-other-AbC123")),
                        ("secretsmanager:GetSecretValue",
                         "arn:aws:secretsmanager:eu-west-1:111122223333:secret:db/prod/password-AbC123")]:
        assert not allowed(policy, action, arn), (action, arn)
    # the IAM reads: instance profiles and roles (with paths), not users or policies
    assert allowed(policy, "iam:GetInstanceProfile", "arn:aws:iam::111122223333:instance-profile/web")
    assert allowed(policy, "iam:GetRole", "arn:aws:iam::111122223333:role/team/web-node")
    assert not allowed(policy, "iam:GetRole", "arn:aws:iam::111122223333:user/alice")
    assert not allowed(policy, "iam:ListRoleTags", "arn:aws:iam::111122223333:role/team/web-node")  # GetRole has them
    # only the action that cannot be scoped has Resource "*"
    unscoped = {a for st in statements(policy) if st["Resource"] in ("*", ["*"]) for a in as_list(st["Action"])}
    assert unscoped == {"ec2:DescribeInstances", "ecs:DescribeTaskDefinition"}
    # reader roles: that name in any account, nothing else
    assert allowed(policy, "sts:AssumeRole", "arn:aws:iam::210987654321:role/secret-zero-reader")
    assert not allowed(policy, "sts:AssumeRole", "arn:aws:iam::210987654321:role/OrganizationAccountAccessRole")


# ---- a run under the policy (moto enforces IAM) ------------------------------------------------


# The actions moto evaluates against their real resource: IAM requests that name a role
# (moto 5.2.5, moto/iam/responses.py _determine_resource). Every other request is
# evaluated against the resource "*", which a scoped statement never matches.
MOTO_SCOPED_ACTIONS = {"iam:ListRoleTags", "iam:GetRole", "sts:AssumeRole"}


def widen_for_moto(policy: dict) -> tuple[dict, set[str]]:
    """Widen to "*" the Resource of the statements moto cannot match (actions unchanged);
    returns the Sids widened."""
    out, widened = copy.deepcopy(policy), set()
    for st in statements(out):
        if st["Resource"] not in ("*", ["*"]) and not set(as_list(st["Action"])) <= MOTO_SCOPED_ACTIONS:
            st["Resource"] = "*"
            widened.add(st["Sid"])
        if "dynamodb:ConditionCheckItem" in as_list(st["Action"]):
            # moto asks for an action named after the API call, which AWS does not have
            st["Action"] = as_list(st["Action"]) + ["dynamodb:TransactWriteItems"]
        if "dynamodb:GetItem" in as_list(st["Action"]) and "dynamodb:ConditionCheckItem" in as_list(st["Action"]):
            st["Action"] = as_list(st["Action"]) + ["dynamodb:TransactGetItems"]  # the same, for the token registry
    return out, widened


def without(policy: dict, action: str) -> dict:
    out = copy.deepcopy(policy)
    kept = []
    for st in statements(out):
        st["Action"] = [a for a in as_list(st["Action"]) if a != action]
        if st["Action"]:
            kept.append(st)
    out["Statement"] = kept
    return out


def test_the_moto_workaround_widens_only_what_moto_cannot_scope():
    _, widened = widen_for_moto(prod_policy())
    assert widened == {"AuditTable", "AuditQueries", "ReplayTable", "QuarantineTable", "BrokerVaultSecretId",
                       "ReadCallerInstanceProfiles", "ReadCallerTasks", "WriteOwnLogs"}


@pytest.fixture
def run_as(stack, broker, monkeypatch):
    """run_as(policy) -> the AWS operations the in-process broker made, with the keys of a
    fresh moto IAM user holding ``policy``; the service is rebuilt for the run and after it."""
    iam = stack.client("iam")
    made: list[str] = []
    real_factory = backends.aws_client_factory

    def recording_factory(settings):
        make = real_factory(settings)

        def recording_make(service, region=None, **credentials):
            client = make(service, region, **credentials)

            def record(model, **_):
                made.append(f"{model.service_model.signing_name}:{model.name}")

            client.meta.events.register("before-call", record)
            return client

        return recording_make

    monkeypatch.setattr(backends, "aws_client_factory", recording_factory)
    # Each rebuilt service makes a fresh botocore session (so credentials are resolved
    # again); sharing the data loader spares parsing the service models every time.
    loader = botocore.session.get_session().get_component("data_loader")
    real_get_session = botocore.session.get_session

    def get_session(*args, **kwargs):
        session = real_get_session(*args, **kwargs)
        session.register_component("data_loader", loader)
        return session

    monkeypatch.setattr(botocore.session, "get_session", get_session)

    def run(policy: dict) -> list[str]:
        user = f"broker-least-privilege-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="policy-prod-for-moto", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        broker_app._service = None
        made.clear()
        return made

    yield run
    broker_app._service = None


def exercise(broker, stack, instance_id, *, until_failure=False) -> dict[str, int]:
    """Every AWS path of the function: health, an issuance, a replay, a refusal.
    With ``until_failure``, stop at the first flow that answers 503."""
    from tests.sigv4 import signed_login

    statuses: dict[str, int] = {}
    body = None

    def flows():
        nonlocal body
        yield "health", lambda: broker.client.http.get("/v1/health")
        body = signed_login(stack.assume("demo-node", instance_id), "web", broker.server_id)
        yield "issue", lambda: broker.post(body)
        yield "replay", lambda: broker.post(body)
        yield "refuse", lambda: broker.login_as("demo-other", "someone", "web")

    for name, flow in flows():
        statuses[name] = flow().status_code
        if until_failure and statuses[name] == 503:
            break
    return statuses


ALL_GOOD = {"health": 200, "issue": 200, "replay": 401, "refuse": 403}


@pytest.fixture
def web_instance(stack):
    instance_id = stack.launch_instance({"vault-role": "web"}, profile="demo-node")
    yield instance_id
    stack.terminate_instance(instance_id)


def test_the_broker_runs_under_the_prod_policy_and_needs_each_action_it_uses(broker, stack, run_as, web_instance):
    full, _ = widen_for_moto(prod_policy())
    made = run_as(full)
    assert exercise(broker, stack, web_instance) == ALL_GOOD
    used = set(made) - NO_PERMISSION
    in_policy = {a for st in statements(full) for a in as_list(st["Action"])}
    assert used <= in_policy, f"calls the policy does not allow: {sorted(used - in_policy)}"
    # the core path always uses these (a run that made nothing would prove nothing)
    assert used >= {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:TransactWriteItems", "dynamodb:DescribeTable",
                    "secretsmanager:GetSecretValue", "ec2:DescribeInstances", "iam:GetInstanceProfile",
                    "iam:GetRole"}
    # Without any one of them, some flow fails (503), so a missing permission fails here.
    for action in sorted(used):
        run_as(without(full, action))
        statuses = exercise(broker, stack, web_instance, until_failure=True)
        assert 503 in statuses.values(), f"the broker did not need {action}: {statuses}"
    # What the policy grants beyond this run is tied to code by the static tests above
    # (the security routes' queries, the quarantine's writes); print it for the record.
    unexercised = sorted(in_policy - used - {a for a in in_policy if a.startswith("logs:")})
    print(f"policy actions not exercised by this run: {unexercised}")
