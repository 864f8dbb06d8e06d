"""chalicelib.ids.uuid4 writes what str(uuid.uuid4()) writes: version 4, RFC 4122, random."""

import uuid

from chalicelib.ids import uuid4


def test_uuid4_text_is_a_version_4_rfc_4122_uuid_in_canonical_form():
    for _ in range(200):
        text = uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_uuid4_is_random():
    ids = {uuid4() for _ in range(10_000)}
    assert len(ids) == 10_000
    # every one of the 122 random bits takes both values
    ints = [uuid.UUID(i).int for i in list(ids)[:2000]]
    fixed = (0xF << 76) | (0x3 << 62)  # the version and variant bits
    varying = 0
    for a in ints:
        varying |= a ^ ints[0]
    assert varying == ((1 << 128) - 1) & ~fixed
