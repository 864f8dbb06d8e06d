"""Who may assume a role: read from its trust policy (pure; the document comes from iam:GetRole).

An assumed-role session named after an EC2 instance (or an ECS task) stands for that
machine only when nobody but EC2 (or ECS) could have made the session: anyone else
allowed to assume the role could name a session after any running instance of it and
borrow that instance's tags. So a claim is honoured only when every statement that
allows an assume action names the one service principal and nothing else.
"""

import json
from urllib.parse import unquote

from ...policy.fields import glob_match

EC2_SERVICE = "ec2.amazonaws.com"
ECS_TASKS_SERVICE = "ecs-tasks.amazonaws.com"
# Every action that hands out a session of the role (the caller picks the session name).
_ASSUME_ACTIONS = ("sts:assumerole", "sts:assumerolewithwebidentity", "sts:assumerolewithsaml")


def only_service_may_assume(document, service):
    """None when only `service` may assume the role, else why not (names the statement)."""
    doc = _document(document)
    if doc is None:
        return "its trust policy is unreadable"
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        return "its trust policy is unreadable"
    granting = 0
    for index, st in enumerate(statements, start=1):
        if not isinstance(st, dict):
            return "its trust policy is unreadable"
        if st.get("Effect") == "Deny":
            continue  # a Deny only narrows who may assume
        # SECURITY: anything but an exact "Deny" counts as a grant ("allow", a missing
        # Effect): a statement this parser misreads must never hide a second principal.
        label = st.get("Sid") or f"statement #{index}"
        if "NotAction" in st or "NotPrincipal" in st:
            return f"its trust policy's {label} uses NotAction/NotPrincipal"
        if not _grants_assume(st.get("Action")):
            continue
        granting += 1
        others = _other_principals(st.get("Principal"), service)
        if others:
            return f"its trust policy's {label} lets {others} assume it, not only {service}"
    if not granting:
        return f"its trust policy lets nobody assume it ({service} included)"
    return None


def _document(document):
    if isinstance(document, dict):
        return document
    if isinstance(document, str):  # IAM returns it URL-encoded when botocore does not decode it
        try:
            doc = json.loads(unquote(document))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def _grants_assume(actions):
    if isinstance(actions, str):
        actions = [actions]
    if not isinstance(actions, list):
        return True  # unreadable: assume the worst
    return any(isinstance(a, str) and any(glob_match(wanted, a.lower()) for wanted in _ASSUME_ACTIONS)
               for a in actions)


def _other_principals(principal, service):
    """A description of every principal besides `service`, or '' when there is none."""
    if principal == "*" or not isinstance(principal, dict):
        return "any principal"
    others = []
    for kind, values in principal.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list):
            return "an unreadable principal"
        for value in values:
            if not (kind == "Service" and value == service):
                others.append(f"{kind} {value}")
    return ", ".join(others)


def lets_others_assume(document):
    """True when someone besides one service whose session names the broker honours (EC2,
    ECS) may assume the role: a session made now could be named after any of its machines."""
    return (only_service_may_assume(document, EC2_SERVICE) is not None
            and only_service_may_assume(document, ECS_TASKS_SERVICE) is not None)


def max_session_seconds(role):
    """The role's MaxSessionDuration (IAM GetRole), within IAM's 1..12 h; 12 h when unreadable."""
    value = role.get("MaxSessionDuration", 3600)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return 12 * 3600
    return min(value, 12 * 3600)


def recently_open(sighting, read_at, now, max_session):
    """(why a claim must wait, the close to record) for a role whose trust policy, read at
    `read_at`, is service-only now; (None, None) when no session made under a more open
    policy the broker saw can still be alive.

    `sighting` (stores/trust_history.Sighting) says when a policy that let others assume
    the role was last read, and when a service-only one was first read after that: the
    policy was closed at the latest then, and a session made before lives at most
    `max_session` seconds more. No close recorded yet: this read is the first."""
    from datetime import datetime, timezone

    if sighting is None or sighting.open_seen is None:
        return None, None

    def when(t):
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    if sighting.open_seen >= read_at:
        return (f"its trust policy let others than the service assume it at {when(sighting.open_seen)}, "
                "after the broker's last read of it"), None
    recorded = sighting.closed_after_open
    closed = min(recorded, int(read_at)) if recorded is not None else int(read_at)
    until = closed + max_session
    if now >= until:
        return None, None
    return (f"its trust policy let others than the service assume it (last seen {when(sighting.open_seen)}, "
            f"service-only since {when(closed)} at the latest), and a session made then may be named after "
            f"any of its machines until {when(until)} (MaxSessionDuration {max_session} s)"), \
        (None if recorded is not None and recorded <= read_at else int(read_at))
