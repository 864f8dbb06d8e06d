"""Token accessors the clients registered: `token#<request_id>` items of the quarantine table.

After a `--sink` or `--exec` login, `broker login` tells the broker the accessor of the
Vault token it obtained with an issuance's secret ID (`POST /v1/tokens`). A revocation
revokes those at once, after checking with Vault that the token's metadata names that
issuance; the scan of every token accessor stays the backstop (chalicelib/revoker.py).
An accessor is not a secret. At most MAX_PER_ISSUANCE per issuance.

A registration by the issuance's key (`add_by_key`) is one DynamoDB transaction: a
condition check on the issuance's audit record (it is an issuance, and the SHA-256 of the
key the client presents is the one its record holds) and the update of the `token#` item,
which also counts the attempts (at most MAX_ATTEMPTS per issuance): no read before it.
"""

import time

from ..audit_schema import TTL_ATTRIBUTE
from ..aws_calls import attempt, call, failed_items, try_call
from ..errors import InvalidRequest, NotAuthorized

MAX_PER_ISSUANCE = 4
MAX_ATTEMPTS = 20  # registrations by key per issuance, over its whole life


class TokenRegistry:
    def __init__(self, dynamodb, table, clock=time.time, audit_table=None):
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._audit_table = audit_table  # where the issuances' records (and key hashes) are

    def add_by_key(self, request_id, accessor, key_sha256, *, keep_for):
        """Register `accessor` for the issuance `request_id` whose record holds `key_sha256`.
        NotAuthorized when the record is not an issuance with that key hash (or there is no
        record); InvalidRequest when the issuance has MAX_PER_ISSUANCE accessors already or
        its registrations were tried MAX_ATTEMPTS times."""
        items = [
            {"ConditionCheck": {  # security-critical: only the holder of the issuance's answer registers
                "TableName": self._audit_table, "Key": {"request_id": {"S": request_id}},
                "ConditionExpression": "#out = :issued AND registration_key_sha256 = :h",
                "ExpressionAttributeNames": {"#out": "outcome"},
                "ExpressionAttributeValues": {":issued": {"S": "issued"}, ":h": {"S": key_sha256}}}},
            {"Update": {
                "TableName": self._table, "Key": {"pk": {"S": f"token#{request_id}"}},
                "UpdateExpression": "ADD accessors :one, attempts :inc SET #exp = :exp",
                "ConditionExpression": ("(attribute_not_exists(accessors) OR size(accessors) < :max "
                                        "OR contains(accessors, :a)) AND "
                                        "(attribute_not_exists(attempts) OR attempts < :tries)"),
                "ExpressionAttributeNames": {"#exp": TTL_ATTRIBUTE},
                "ExpressionAttributeValues": {":one": {"SS": [accessor]}, ":a": {"S": accessor},
                                              ":inc": {"N": "1"}, ":max": {"N": str(MAX_PER_ISSUANCE)},
                                              ":tries": {"N": str(MAX_ATTEMPTS)},
                                              ":exp": {"N": str(int(self._clock()) + keep_for)}}}},
        ]
        _, cancelled = attempt("quarantine store", ("TransactionCanceledException",), self._db.transact_write_items,
                               TransactItems=items)
        if cancelled is None:
            return
        failed = failed_items(cancelled)
        if failed is None:  # a conflict with a concurrent registration of the same issuance, throttling
            from ..errors import Unavailable

            raise Unavailable("the quarantine store is unavailable", backend="quarantine store", retry_after=2,
                              detail="token registration transaction cancelled")
        if 0 in failed:
            raise NotAuthorized("that request ID was not issued to this caller",
                                detail="no issuance record with that registration key")
        raise InvalidRequest(f"at most {MAX_PER_ISSUANCE} tokens, and {MAX_ATTEMPTS} registrations, "
                             "for one issuance")

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
