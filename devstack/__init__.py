"""The secret-zero broker's local stack: OpenBao dev server, moto server with
SigV4 verification on, their seed, and the broker under ``chalice local``.

    from devstack import Stack
    with Stack.start(tmpdir, with_broker=True) as stack:
        stack.broker_url, stack.broker_env(), stack.assume("demo-node", "i-123") ...

Command line: ``python -m devstack up|down|status [--dir .stack]``.
"""

from .aws import ACCOUNT_ID, REGION, Keys
from .procs import StackError
from .stack import SERVER_ID, STS_ENDPOINTS, Stack

__all__ = ["Stack", "StackError", "Keys", "ACCOUNT_ID", "REGION", "SERVER_ID", "STS_ENDPOINTS"]
