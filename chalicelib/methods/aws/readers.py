"""Clients that read a caller's facts in the caller's own account.

An account is a partition and its 12 digits: `123456789012` in `aws` and in `aws-cn`
are two accounts, with nothing in common but the digits. The broker's own account (in
its own partition, which its region says) is read with the broker's own credentials.
Any other account only through the reader role configured for it
(BROKER_ACCOUNT_READERS: role ARN + external ID, like Vault's per-account STS
configuration; the role ARN's partition is the account's); its credentials are cached
until shortly before they expire. An account with neither gets no reader at all: the
broker never reads one account's resources to decide about a caller of another (a
same-named role in the broker's account, or in an account of another partition with
the same digits, is not the caller's role).
"""

import threading
import time

from ...aws_calls import call

# Assume the reader role again when its credentials have less than this left.
REFRESH_MARGIN = 300
SESSION_SECONDS = 3600
SESSION_NAME = "secret-zero-broker-reader"


class AccountClients:
    """Botocore clients of one account, made on first use and kept."""

    def __init__(self, account, make_client, credentials=None, expires_at=float("inf"), partition="aws"):
        self.account = account
        self.partition = partition
        self.expires_at = expires_at
        self._make = make_client
        self._credentials = credentials or {}
        self._clients = {}
        self._lock = threading.Lock()

    def client(self, service, region=None):
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._make(service, region, **self._credentials)
            return self._clients[key]


class AccountReaders:
    def __init__(self, settings, make_client, clock=time.time):
        # {(partition, account): Reader}: a reader role reads the partition its ARN names
        self._readers = {(reader.partition, reader.account): reader for reader in settings.readers.values()}
        self._make = make_client
        self._clock = clock
        self._own_account = settings.own_account
        self.own_partition = settings.own_partition
        self._own = None
        self._assumed = {}
        self._lock = threading.Lock()
        # One lock per account: a slow or failing AssumeRole in one account must not hold
        # up the callers of every other.
        self._account_locks = {account: threading.Lock() for account in self._readers}

    @property
    def own_account(self):
        """The broker's own account: configured (BROKER_ACCOUNT_ID) or asked of STS once."""
        if self._own_account is None:
            with self._lock:
                if self._own_account is None:
                    identity = call("sts", self._make("sts").get_caller_identity)
                    self._own_account = identity["Account"]
        return self._own_account

    def accounts(self):
        """The digits of every account whose facts the broker can read (what rules name)."""
        return {self.own_account, *(account for _, account in self._readers)}

    def for_account(self, account, partition=None):
        """Clients reading `account` of `partition` (None: the broker's own partition), or
        None when the broker has no way to read it: an account of a partition the broker
        doesn't read has no reader, whatever its digits."""
        partition = self.own_partition if partition is None else partition
        if partition == self.own_partition and account == self.own_account:
            if self._own is None:
                self._own = AccountClients(account, self._make, partition=partition)
            return self._own
        key = (partition, account)
        reader = self._readers.get(key)
        if reader is None:
            return None
        with self._account_locks[key]:
            clients = self._assumed.get(key)
            if clients is None or clients.expires_at - REFRESH_MARGIN <= self._clock():
                clients = self._assume(reader)
                self._assumed[key] = clients
            return clients

    def _assume(self, reader):
        kwargs = {"RoleArn": reader.role_arn, "RoleSessionName": SESSION_NAME, "DurationSeconds": SESSION_SECONDS}
        if reader.external_id:
            kwargs["ExternalId"] = reader.external_id
        answer = call(f"reader role of {reader.account}", self._make("sts").assume_role, **kwargs)
        creds = answer["Credentials"]
        expires_at = _epoch(creds.get("Expiration")) or self._clock() + SESSION_SECONDS
        return AccountClients(reader.account, self._make, {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }, expires_at, partition=reader.partition)


def _epoch(expiration):
    """Seconds since the epoch of an STS Expiration: a datetime, or the ISO-8601 text the
    broker's clients keep (chalicelib/aws_clients.py); None when unreadable."""
    if hasattr(expiration, "timestamp"):
        return expiration.timestamp()
    if isinstance(expiration, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
