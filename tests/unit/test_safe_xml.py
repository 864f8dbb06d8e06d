"""chalicelib/safe_xml.py: AWS answers parse; every way to smuggle a DTD or an entity is refused."""

import pytest

from chalicelib import safe_xml

STS = (b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
       b"<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/a</Arn></GetCallerIdentityResult>"
       b"</GetCallerIdentityResponse>")
DOCTYPE = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>'


def test_an_aws_answer_parses_with_its_namespace_or_by_local_names():
    root = safe_xml.parse(STS)
    assert root.tag == "{https://sts.amazonaws.com/doc/2011-06-15/}GetCallerIdentityResponse"
    local = safe_xml.parse(STS, namespaces=False)
    assert local.tag == "GetCallerIdentityResponse"
    assert local.find("GetCallerIdentityResult").find("Arn").text == "arn:aws:iam::123456789012:user/a"


def test_an_xml_declaration_and_character_references_are_fine():
    root = safe_xml.parse(b'<?xml version="1.0" encoding="UTF-8"?><r a="1">caf&#233; &amp; &lt;x&gt;</r>')
    assert root.text == "caf\u00e9 & <x>"


@pytest.mark.parametrize("data", [
    DOCTYPE.encode(),                                               # external entity
    b'<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>',  # expansion
    b"<r><!-- a comment --></r>",                                   # AWS sends none
    b"<r><![CDATA[x]]></r>",
    DOCTYPE.replace("UTF-8", "UTF-16").encode("utf-16"),             # a DTD hidden by UTF-16 (with BOM)
    DOCTYPE.encode("utf-16-le"),                                     # ... and without a BOM
    DOCTYPE.encode("utf-32"),
    b"<r>&e;</r>",                                                   # an undeclared entity
    b"<r>\xff\xfe</r>",                                              # not UTF-8
    b"<r>a\x00b</r>",
    b"<r><unclosed></r>",
    b"",
    b"not xml at all",
])
def test_refused(data):
    assert safe_xml.parse(data) is None
    assert safe_xml.parse(data, namespaces=False) is None


def test_an_encoding_declaration_cannot_change_how_the_text_is_read():
    # Declared Latin-1 but sent as UTF-8: read as UTF-8 (the text is checked as UTF-8, so
    # the parser must read the same characters the check saw).
    root = safe_xml.parse('<?xml version="1.0" encoding="ISO-8859-1"?><r>\u00e9</r>'.encode())
    assert root is not None and root.text == "\u00e9"
