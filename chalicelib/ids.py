"""Random IDs: request IDs, revocation IDs, DynamoDB's ClientRequestToken (UUID version 4 text).

Not `uuid.uuid4()`: importing uuid imports platform, 3 to 5 ms of a cold start for what
these few lines do. os.urandom, as uuid4 uses: safe after a SnapStart restore
(chalicelib/snapstart.py).
"""

import os


def uuid4():
    """A random UUID (RFC 4122 version 4), as `str(uuid.uuid4())` writes it."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
