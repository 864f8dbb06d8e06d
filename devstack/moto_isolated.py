"""``moto_server`` whose DynamoDB writes are isolated from its transactions, and whose
per-request costs don't grow with the tables or the number of moto's modules.

moto runs TransactWriteItems by applying each item and, when one condition fails,
restoring a copy of every table it touched, taken before: a write another request made
to those tables meanwhile is undone, and a refused transaction's own items can come back
through another one's restore. DynamoDB's transactions are isolated. The local stack
serves many requests at once (issuances racing a revocation), so here every DynamoDB
write and transaction of the server holds one lock. Used as ``python -m devstack.moto_isolated``
with moto_server's own arguments.

The speed-ups change no answer moto gives (docs/performance.md, "moto's own time"):
they bring its time per call closer to the in-region figures the benchmarks pad to,
so that what the benchmarks measure is the broker, not moto.
"""

import copy
import functools
import sys
import threading

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item",
          "transact_get_items")


def isolate_dynamodb_writes():
    from moto.dynamodb.models import DynamoDBBackend

    back_up_items_not_tables()
    lock = threading.RLock()
    for name in WRITES:
        original = getattr(DynamoDBBackend, name, None)
        if original is None:
            continue

        def locked(self, *args, __original=original, **kwargs):
            with lock:
                return __original(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)


def back_up_items_not_tables():
    """moto backs a transaction up with ``copy.deepcopy`` of every table it touches, the
    whole table every time, and puts the copies back when an item fails. That copy grows
    with the table (the replay table gains an item per issuance): in the benchmarks it was
    a quarter of moto's CPU, and one TransactWriteItems took 28 ms on a quiet machine.
    Under the write lock nothing else writes meanwhile, so keeping just the items the
    transaction names, and putting those back, restores the same state at a cost that
    does not grow with the table (tests/service/test_moto_isolated.py)."""
    import moto.dynamodb.models as models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    class TablesKeptInPlace:
        """``copy`` as moto's transaction code sees it: a table's "copy" is the table itself
        (its restore then changes nothing); the items are kept by ``transact`` below."""

        def __getattr__(self, name):
            return getattr(copy, name)

        @staticmethod
        def deepcopy(obj, memo=None):
            return obj if isinstance(obj, Table) else copy.deepcopy(obj, memo)

    models.copy = TablesKeptInPlace()
    original = DynamoDBBackend.transact_write_items

    def transact(self, transact_items, *args, **kwargs):
        kept = _items_named(self, transact_items)
        try:
            return original(self, transact_items, *args, **kwargs)
        except BaseException:
            _put_back(kept)
            raise

    DynamoDBBackend.transact_write_items = transact


def _items_named(backend, transact_items):
    """(table, hash key, range key, a copy of the item or None) for each item of a transaction."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    kept = []
    for entry in transact_items:
        try:
            ((_, op),) = entry.items()
            table = backend.tables[op["TableName"]]
            attrs = op["Item"] if "Item" in op else op["Key"]
            hash_key = DynamoType(attrs[table.hash_key_attr])
            range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
        except (KeyError, ValueError, TypeError, AttributeError):
            continue  # moto refuses this item before it writes it
        kept.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    return kept


def _put_back(kept):
    for table, hash_key, range_key, item in reversed(kept):  # the first copy of a key wins
        if item is None:
            table.delete_item(hash_key, range_key)
        elif range_key is not None:
            table.items[hash_key][range_key] = item
        else:
            table.items[hash_key] = item


def cache_per_request_lookups():
    """Two lookups moto makes on every request, whose answers never change while it runs:
    the list of its service modules (a directory listing and a stat of each entry, about
    0.5 ms), and the method names of the handler's class (``inspect.getmembers``)."""
    import moto.backends
    import moto.core.responses

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules
    moto.core.responses.method_names_from_class = functools.cache(moto.core.responses.method_names_from_class)


if __name__ == "__main__":
    isolate_dynamodb_writes()
    cache_per_request_lookups()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
