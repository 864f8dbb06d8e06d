"""Loopback ports for tests."""

import socket

_HELD = []


def closed_port() -> int:
    """A loopback port where nothing listens, for the rest of the session: the socket
    stays bound (never listening), so a server started meanwhile by another test or
    stack can't take the port and answer where a test expects a refused connection."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]
