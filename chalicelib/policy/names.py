"""Names the rules file and the API share: one pattern each, used by server and client."""

import re

# An AppRole name as Vault accepts it in a path segment (and the broker in its API).
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
