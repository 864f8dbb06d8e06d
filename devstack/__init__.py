"""The secret-zero broker's local stack: OpenBao dev server, moto server with
SigV4 verification on (two AWS accounts, ECS), the simulated Google, their seed,
and the broker under ``chalice local``.

    from devstack import Stack
    with Stack.start(tmpdir, with_broker=True) as stack:
        stack.broker_url, stack.broker_env(), stack.assume("demo-node", "i-123") ...
        stack.run_task({"vault-role": "web"}), stack.launch_instance(..., account=SECOND_ACCOUNT_ID)

Command line: ``python -m devstack up|down|status [--dir .stack]``, and on a running
stack ``as-instance|as-task|as-gce|as-role|as-operator`` (a machine's environment).
"""

from .aws import ACCOUNT_ID, REGION, SECOND_ACCOUNT_ID, Keys
from .procs import StackError
from .stack import SERVER_ID, STS_ENDPOINTS, Stack

__all__ = ["Stack", "StackError", "Keys", "ACCOUNT_ID", "SECOND_ACCOUNT_ID", "REGION", "SERVER_ID", "STS_ENDPOINTS"]
