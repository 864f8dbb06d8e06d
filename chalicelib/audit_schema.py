"""The DynamoDB tables of the broker, defined once: keys, secondary indexes, TTL.

devstack creates its tables from these definitions, and the deployment
templates' tests compare against them, so the code that queries the tables, the
local stack and the deployed stacks agree. The reasoning is in docs/audit.md.

Audit table: hash key `request_id` (one record per decision, written once).
Four global secondary indexes serve the security team's queries without a scan,
each sorted by `epoch` (the record's time, seconds), newest first when queried
backwards:

| index          | partition key   | value                                  | shards |
| -------------- | --------------- | -------------------------------------- | ------ |
| `by-time`      | `gsi_time`      | `YYYY-MM-DD#s` (UTC day of the record)  | 8      |
| `by-principal` | `gsi_principal` | `<canonical principal>#s`              | 4      |
| `by-role`      | `gsi_role`      | `<role>#s`                             | 4      |
| `by-instance`  | `instance`      | the EC2/GCE instance ID                | 1      |

A partition key value takes at most 1,000 writes per second, GSIs included (a
throttled index write throttles the table write). Every record of a day lands in
the same `by-time` key, and a fleet shares a role and an IAM role ARN, so those
keys carry a shard number `s` (from a hash of the request ID) and a query fans
out over every shard. An instance writes a few records a day: no shard.

Quarantine table: hash key `pk`, TTL on `expires_at`. It holds the quarantine
list (`quarantine#instance#ID`, `quarantine#principal#ARN`), the revocations
(`revocation#ID`) and the incident-report rate-limit counters (`ratelimit#...`).

Replay table: hash key `proof_hash`, TTL on `expires_at`.
"""

import hashlib
from datetime import datetime, timezone

TTL_ATTRIBUTE = "expires_at"
SORT_KEY = "epoch"

# Shard counts. Raising one is safe at any time (queries fan out over the new count,
# the new shards are just empty for older days); lowering one hides the records
# written in the dropped shards until they expire.
TIME_SHARDS = 8
PRINCIPAL_SHARDS = 4
ROLE_SHARDS = 4

INDEX_TIME = "by-time"
INDEX_PRINCIPAL = "by-principal"
INDEX_ROLE = "by-role"
INDEX_INSTANCE = "by-instance"

# index name -> (partition key attribute, shard count)
AUDIT_INDEXES = {
    INDEX_TIME: ("gsi_time", TIME_SHARDS),
    INDEX_PRINCIPAL: ("gsi_principal", PRINCIPAL_SHARDS),
    INDEX_ROLE: ("gsi_role", ROLE_SHARDS),
    INDEX_INSTANCE: ("instance", 1),
}
# Attributes only the indexes need; the API does not show them.
INTERNAL_ATTRIBUTES = frozenset({"gsi_time", "gsi_principal", "gsi_role"})


def _table(hash_key, extra_attributes=(), indexes=()):
    attributes = [{"AttributeName": hash_key, "AttributeType": "S"}]
    attributes += [{"AttributeName": name, "AttributeType": kind} for name, kind in extra_attributes]
    definition = {
        "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}],
        "AttributeDefinitions": attributes,
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        definition["GlobalSecondaryIndexes"] = list(indexes)
    return definition


def _index(name, partition_key):
    return {
        "IndexName": name,
        "KeySchema": [{"AttributeName": partition_key, "KeyType": "HASH"},
                      {"AttributeName": SORT_KEY, "KeyType": "RANGE"}],
        # ALL: a page of results is one query per shard, no GetItem per record.
        "Projection": {"ProjectionType": "ALL"},
    }


def table_definitions():
    """{"audit" | "replay" | "quarantine": DynamoDB CreateTable arguments (no TableName)}.

    Every table also has TTL on `expires_at` (a separate UpdateTimeToLive call,
    or `TimeToLiveSpecification` in CloudFormation).
    """
    audit_keys = [(attr, "S") for attr, _ in AUDIT_INDEXES.values()] + [(SORT_KEY, "N")]
    return {
        "audit": _table("request_id", audit_keys,
                        [_index(name, attr) for name, (attr, _) in AUDIT_INDEXES.items()]),
        "replay": _table("proof_hash"),
        "quarantine": _table("pk"),
    }


def cloudformation_properties(kind):
    """The `AWS::DynamoDB::Table` Properties of a table kind, without TableName, for templates."""
    props = table_definitions()[kind]
    return dict(props, TimeToLiveSpecification={"AttributeName": TTL_ATTRIBUTE, "Enabled": True})


# ---- the index attributes of an audit record -------------------------------------------


def shard_of(request_id, shards):
    """A stable shard number for a record: the same request ID always lands in the same shard."""
    if shards <= 1:
        return 0
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % shards


def day_of(epoch):
    """The UTC day (YYYY-MM-DD) of a time in seconds since the epoch."""
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d")


def index_attributes(request_id, epoch, principal=None, role=None):
    """The partition-key attributes of the sharded indexes for one record (strings).

    `principal` is the one the by-principal index keys on, as the record's method derived
    it (an AWS session's role ARN, so that a role's sessions share a key).

    `instance` needs none: the record's own `instance` attribute is the key. A record
    without a principal or role is simply absent from that index (a sparse index).
    """
    attributes = {"gsi_time": f"{day_of(epoch)}#{shard_of(request_id, TIME_SHARDS)}"}
    if principal:
        attributes["gsi_principal"] = f"{principal}#{shard_of(request_id, PRINCIPAL_SHARDS)}"
    if role:
        attributes["gsi_role"] = f"{role}#{shard_of(request_id, ROLE_SHARDS)}"
    return attributes


def partition_keys(index, value):
    """Every partition key value of `index` for `value` (a day, a canonical principal, a role,
    an instance): the shards a query fans out over."""
    attr, shards = AUDIT_INDEXES[index]
    if shards == 1:
        return [value]
    return [f"{value}#{s}" for s in range(shards)]
