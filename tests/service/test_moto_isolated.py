"""The stack's moto (devstack/moto_isolated.py) keeps only the items a transaction names,
not a copy of each whole table: a refused transaction must still leave every table as it
found it, whatever mix of Put, Update, Delete and ConditionCheck it had, on tables with
and without a range key, and a transaction that passes must still apply every item."""

import uuid

import pytest
from botocore.exceptions import ClientError


@pytest.fixture(scope="module")
def tables(stack):
    db = stack.client("dynamodb")
    names = {"hash": f"moto-iso-hash-{uuid.uuid4().hex[:8]}", "range": f"moto-iso-range-{uuid.uuid4().hex[:8]}"}
    db.create_table(TableName=names["hash"], BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    db.create_table(TableName=names["range"], BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                          {"AttributeName": "sk", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                               {"AttributeName": "sk", "KeyType": "RANGE"}])
    yield db, names
    for name in names.values():
        db.delete_table(TableName=name)


def _everything(db, table):
    return sorted((item for item in db.scan(TableName=table, ConsistentRead=True)["Items"]),
                  key=lambda item: (item["pk"]["S"], item.get("sk", {}).get("S", "")))


def _refused(db, items):
    with pytest.raises(ClientError) as caught:
        db.transact_write_items(TransactItems=items)
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    return caught.value.response.get("CancellationReasons")


def test_a_refused_transaction_leaves_both_tables_as_it_found_them(tables):
    db, names = tables
    h, r = names["hash"], names["range"]
    db.put_item(TableName=h, Item={"pk": {"S": "kept"}, "n": {"N": "1"}})
    db.put_item(TableName=h, Item={"pk": {"S": "doomed"}, "n": {"N": "7"}})
    db.put_item(TableName=r, Item={"pk": {"S": "p"}, "sk": {"S": "old"}, "n": {"N": "3"}})
    before = {name: _everything(db, name) for name in (h, r)}
    reasons = _refused(db, [
        {"Update": {"TableName": h, "Key": {"pk": {"S": "kept"}}, "UpdateExpression": "SET n = :n",
                    "ExpressionAttributeValues": {":n": {"N": "2"}}}},
        {"Delete": {"TableName": h, "Key": {"pk": {"S": "doomed"}}}},
        {"Put": {"TableName": h, "Item": {"pk": {"S": "new"}}}},
        {"Put": {"TableName": r, "Item": {"pk": {"S": "p"}, "sk": {"S": "new"}}}},
        {"Update": {"TableName": r, "Key": {"pk": {"S": "p"}, "sk": {"S": "old"}}, "UpdateExpression": "REMOVE n"}},
        {"ConditionCheck": {"TableName": h, "Key": {"pk": {"S": "absent"}},
                            "ConditionExpression": "attribute_exists(pk)"}},
    ])
    assert [x["Code"] for x in reasons] == ["None"] * 5 + ["ConditionalCheckFailed"]
    assert {name: _everything(db, name) for name in (h, r)} == before


def test_a_transaction_that_passes_applies_every_item(tables):
    db, names = tables
    h, r = names["hash"], names["range"]
    db.put_item(TableName=h, Item={"pk": {"S": "a"}, "n": {"N": "1"}})
    db.put_item(TableName=h, Item={"pk": {"S": "b"}})
    db.transact_write_items(TransactItems=[
        {"Update": {"TableName": h, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET n = n + :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Delete": {"TableName": h, "Key": {"pk": {"S": "b"}}}},
        {"Put": {"TableName": r, "Item": {"pk": {"S": "q"}, "sk": {"S": "1"}}}},
        {"ConditionCheck": {"TableName": r, "Key": {"pk": {"S": "absent"}, "sk": {"S": "1"}},
                            "ConditionExpression": "attribute_not_exists(pk)"}},
    ])
    assert db.get_item(TableName=h, Key={"pk": {"S": "a"}}, ConsistentRead=True)["Item"]["n"] == {"N": "2"}
    assert "Item" not in db.get_item(TableName=h, Key={"pk": {"S": "b"}}, ConsistentRead=True)
    assert "Item" in db.get_item(TableName=r, Key={"pk": {"S": "q"}, "sk": {"S": "1"}}, ConsistentRead=True)


def test_a_transaction_naming_one_item_twice_is_refused_and_undone(tables):
    db, names = tables
    h = names["hash"]
    db.put_item(TableName=h, Item={"pk": {"S": "twice"}, "n": {"N": "5"}})
    before = _everything(db, h)
    with pytest.raises(ClientError) as caught:
        db.transact_write_items(TransactItems=[
            {"Update": {"TableName": h, "Key": {"pk": {"S": "twice"}}, "UpdateExpression": "SET n = :n",
                        "ExpressionAttributeValues": {":n": {"N": "6"}}}},
            {"Put": {"TableName": h, "Item": {"pk": {"S": "other"}}}},
            {"Delete": {"TableName": h, "Key": {"pk": {"S": "twice"}}}},
        ])
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert _everything(db, h) == before


def test_a_later_transaction_is_not_undone_by_an_earlier_refusal(tables):
    """The lost-write problem the lock exists for: a refusal restores only its own items."""
    db, names = tables
    h = names["hash"]
    db.transact_write_items(TransactItems=[{"Put": {"TableName": h, "Item": {"pk": {"S": "first"}}}}])
    _refused(db, [
        {"Put": {"TableName": h, "Item": {"pk": {"S": "second"}}}},
        {"ConditionCheck": {"TableName": h, "Key": {"pk": {"S": "nowhere"}},
                            "ConditionExpression": "attribute_exists(pk)"}},
    ])
    db.put_item(TableName=h, Item={"pk": {"S": "third"}})
    keys = {item["pk"]["S"] for item in _everything(db, h)}
    assert {"first", "third"} <= keys and "second" not in keys


def _both(db, names):
    return {name: _everything(db, name) for name in names.values()}


@pytest.mark.parametrize("last", ["bad update expression", "missing table", "put without its range key",
                                  "condition check returning the old item"])
def test_a_refusal_after_earlier_items_were_applied_undoes_them(tables, last):
    """The shapes moto refuses mid-way, after it applied the items before: a validation
    error (moto re-raises it), a missing table and a malformed item (cancellation
    reasons), a failed condition that returns the old item. The last range item under a
    hash key is deleted first (its hash key's bucket empties) and must come back."""
    db, names = tables
    h, r = names["hash"], names["range"]
    tag = uuid.uuid4().hex[:6]
    db.put_item(TableName=h, Item={"pk": {"S": f"u-{tag}"}, "n": {"N": "1"}})
    db.put_item(TableName=r, Item={"pk": {"S": f"only-{tag}"}, "sk": {"S": "1"}, "n": {"N": "1"}})
    before = _both(db, names)
    last_item = {
        "bad update expression": {"Update": {"TableName": h, "Key": {"pk": {"S": f"v-{tag}"}},
                                             "UpdateExpression": "SET = nonsense"}},
        "missing table": {"Put": {"TableName": f"no-such-table-{tag}", "Item": {"pk": {"S": "x"}}}},
        "put without its range key": {"Put": {"TableName": r, "Item": {"pk": {"S": f"w-{tag}"}}}},
        "condition check returning the old item": {"ConditionCheck": {
            "TableName": h, "Key": {"pk": {"S": f"u2-{tag}"}}, "ConditionExpression": "attribute_exists(pk)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
    }[last]
    with pytest.raises(ClientError) as caught:
        db.transact_write_items(TransactItems=[
            {"Update": {"TableName": h, "Key": {"pk": {"S": f"u-{tag}"}}, "UpdateExpression": "SET n = :n",
                        "ExpressionAttributeValues": {":n": {"N": "9"}}}},
            {"Delete": {"TableName": r, "Key": {"pk": {"S": f"only-{tag}"}, "sk": {"S": "1"}}}},
            {"Put": {"TableName": r, "Item": {"pk": {"S": f"new-{tag}"}, "sk": {"S": "2"}}}},
            last_item,
        ])
    assert caught.value.response["Error"]["Code"] in ("TransactionCanceledException", "ValidationException",
                                                         "ResourceNotFoundException")
    assert _both(db, names) == before
