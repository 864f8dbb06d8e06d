"""``moto_server`` whose DynamoDB writes are isolated from its transactions.

moto runs TransactWriteItems by applying each item and, when one condition fails,
restoring a copy of every table it touched, taken before: a write another request made
to those tables meanwhile is undone, and a refused transaction's own items can come back
through another one's restore. DynamoDB's transactions are isolated. The local stack
serves many requests at once (issuances racing a revocation), so here every DynamoDB
write and transaction of the server holds one lock. Used as ``python -m devstack.moto_isolated``
with moto_server's own arguments.
"""

import sys
import threading


def isolate_dynamodb_writes():
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item",
                 "transact_get_items"):
        original = getattr(DynamoDBBackend, name, None)
        if original is None:
            continue

        def locked(self, *args, __original=original, **kwargs):
            with lock:
                return __original(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)


if __name__ == "__main__":
    isolate_dynamodb_writes()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
