"""Token accessors the clients registered: `token#<request_id>` items of the quarantine table.

After a `--sink` or `--exec` login, `broker login` tells the broker the accessor of the
Vault token it obtained with an issuance's secret ID (`POST /v1/tokens`). A revocation
revokes those at once, after checking with Vault that the token's metadata names that
issuance; the scan of every token accessor stays the backstop (chalicelib/revoker.py).
An accessor is not a secret. At most MAX_PER_ISSUANCE per issuance.
"""

import time

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import call, try_call
from ..errors import InvalidRequest

MAX_PER_ISSUANCE = 4


class TokenRegistry:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def add(self, request_id, accessor, *, keep_for):
        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.update_item,
            TableName=self._table, Key={"pk": {"S": f"token#{request_id}"}},
            UpdateExpression="ADD accessors :one SET #exp = :exp",
            ConditionExpression="attribute_not_exists(accessors) OR size(accessors) < :max OR contains(accessors, :a)",
            ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
            ExpressionAttributeValues={":one": {"SS": [accessor]}, ":a": {"S": accessor},
                                       ":max": {"N": str(MAX_PER_ISSUANCE)},
                                       ":exp": {"N": str(int(self._clock()) + keep_for)}})
        if refused:
            raise InvalidRequest(f"at most {MAX_PER_ISSUANCE} tokens may be registered for one issuance")

    def get_many(self, request_ids):
        """{request_id: [accessors]} for those that have any."""
        out, ids = {}, list(dict.fromkeys(request_ids))
        for start in range(0, len(ids), 25):  # TransactGetItems: 25 items a call (moto; AWS takes 100)
            page = call("quarantine store", self._db.transact_get_items, TransactItems=[
                {"Get": {"TableName": self._table, "Key": {"pk": {"S": f"token#{r}"}}}} for r in ids[start:start + 25]])
            for response in page.get("Responses", []):
                item = response.get("Item")
                if item:
                    out[item["pk"]["S"].split("#", 1)[1]] = sorted(item.get("accessors", {}).get("SS", []))
        return out
