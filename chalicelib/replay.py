"""Spend each proof once: a replay record per proof, written with a conditional put."""

import time

from .aws_calls import try_call
from .errors import ProofReplayed

# STS accepts a signature for 15 minutes; keep the record at least that long past our own window.
STS_SIGNATURE_LIFETIME = 15 * 60


class ReplayStore:
    def __init__(self, dynamodb, table, clock=time.time):
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def spend(self, proof_hash, *, request_id, method, valid_until):
        """Record the proof as spent; ProofReplayed if it was spent before."""
        now = int(self._clock())
        _, refused = try_call(
            "replay store", ("ConditionalCheckFailedException",), self._db.put_item,
            TableName=self._table,
            Item={
                "proof_hash": {"S": proof_hash},
                "request_id": {"S": request_id},
                "method": {"S": method},
                "spent_at": {"N": str(now)},
                "expires_at": {"N": str(int(max(valid_until, now)) + STS_SIGNATURE_LIFETIME)},
            },
            ConditionExpression="attribute_not_exists(proof_hash)",
        )
        if refused:
            raise ProofReplayed("this proof was already used; sign a new one")
