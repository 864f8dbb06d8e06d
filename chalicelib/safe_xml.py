"""Parse AWS's XML answers (the forwarded STS proof's) safely, with the C parser.

AWS answers are UTF-8 documents with no DTD, no comments and no CDATA. Anything else
is refused before parsing:
- SECURITY: no "<!" at all, so no DOCTYPE and no entity declarations: no external
  entities, no entity expansion (billion laughs). An undeclared entity reference is a
  parse error in expat;
- the text must be UTF-8 without NUL characters, and is parsed as text (the parser then
  reads it as UTF-8 whatever its declaration says), so another encoding can't hide a
  "<!" from the check above.

defusedxml gave the same refusals through ElementTree's pure-Python parser (about four
times the CPU of this module on a DescribeInstances answer; docs/performance.md).
"""

from xml.etree.ElementTree import ParseError, XML


def parse(data, *, namespaces=True):
    """The root element, or None for anything unreadable or refused. With
    `namespaces=False` every tag is its local name ("{ns}Arn" -> "Arn")."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError:
        return None
    if not isinstance(text, str) or "<!" in text or "\x00" in text:
        return None
    try:
        root = XML(text)
    except (ParseError, ValueError, LookupError, RecursionError):
        return None
    if not namespaces:
        for element in root.iter():
            tag = element.tag
            if isinstance(tag, str) and tag[:1] == "{":
                element.tag = tag.rsplit("}", 1)[-1]
    return root
