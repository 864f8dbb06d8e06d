"""The credentials a lean client signs with.

The broker's own: in Lambda (and wherever both are set) AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), read at every call, as botocore's first
provider would; anywhere else botocore's whole provider chain (profiles, container and
instance credentials), imported only then, its refreshable credentials frozen per call.
A reader role's: the fixed keys its AssumeRole returned.
"""

import os
import threading
from typing import NamedTuple


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self):  # never the secret key or the token
        return f"Credentials(access_key={self.access_key!r})"


class FixedCredentials:
    def __init__(self, access_key, secret_key, token=None):
        self._credentials = Credentials(access_key, secret_key, token)

    def get(self):
        return self._credentials


class OwnCredentials:
    """The broker's own credentials, resolved again at each call (they rotate)."""

    def __init__(self, environ=None):
        self._environ = environ  # None: os.environ as it is at each call (chalice.test swaps the object)
        self._chain = None
        self._lock = threading.Lock()

    def get(self):
        env = os.environ if self._environ is None else self._environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            # AWS_SECURITY_TOKEN: the older name botocore's environment provider still reads
            return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None)
        return self._from_chain()

    def _from_chain(self):
        if self._chain is None:
            with self._lock:
                if self._chain is None:
                    import botocore.session

                    self._chain = botocore.session.get_session().get_credentials()
        if self._chain is None:
            raise NoCredentials()
        frozen = self._chain.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)


class NoCredentials(Exception):
    """No AWS credentials anywhere: named, like botocore's NoCredentialsError."""

    def __init__(self):
        super().__init__("no AWS credentials found (environment, profile, container or instance)")
