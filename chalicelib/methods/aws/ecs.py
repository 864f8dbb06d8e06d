"""ECS task claims: a container's task-role session stands for its task.

ECS names a task role's session after the task ID. The client inside a task sends
its task ARN (`ecs_task_arn`, from the task metadata endpoint). The claim holds only
when, in this order (each check security-critical):
1. offline: the ARN is a long-format task ARN, its ID equals the session name, its
   account and partition are the caller's (a task of another account is not the
   caller's), and its region is one the broker reads (BROKER_EC2_REGIONS);
2. `ecs:DescribeTasks` in the caller's account and the ARN's region finds it RUNNING;
3. its task role (the override, else the task definition's) is the caller's role;
4. (facts.py) only ecs-tasks.amazonaws.com may assume that role.
Without `ecs_task_arn`, a session name shaped like a task ID is looked up in the
clusters the rules name; not finding it there is no claim at all (no task facts).
"""

import threading

from ...aws_calls import answer_part, try_call
from ...concurrency import raise_first, settle
from .arn import parse_task_arn
from .model import TaskFacts

_TASK_MISSING = ("ClusterNotFoundException", "InvalidParameterException")


class TaskClaims:
    def __init__(self, regions, clusters):
        self._regions = tuple(regions)
        self._clusters = clusters  # () -> cluster names the rules name (literal ones)
        self._definitions = {}  # task definition ARN -> task role ARN (a revision never changes)
        self._lock = threading.Lock()

    def check_offline(self, arn, task_arn):
        """A reason when the `ecs_task_arn` claim is impossible on its face, else None."""
        if task_arn is None:
            return None
        parsed = parse_task_arn(task_arn)
        if parsed is None:
            return "ecs_task_arn is not a task ARN like arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID"
        if arn.kind != "assumed-role" or arn.session_name != parsed.task_id:
            return (f"ecs_task_arn names task {parsed.task_id}, but the session is "
                    f"{arn.session_name or 'not an assumed role'}: ECS names a task role's session after its task")
        if parsed.account != arn.account:
            return f"ecs_task_arn names a task of account {parsed.account}, the caller is in {arn.account}"
        # SECURITY: the ARN's partition and region pick the endpoint DescribeTasks is sent to.
        # A forged one (another partition, a region that does not exist) would make the
        # call fail and the answer a 503, an outage alarm any caller could trip at will.
        if parsed.partition != arn.partition:
            return f"ecs_task_arn is in partition {parsed.partition}, the caller in {arn.partition}"
        if parsed.region not in self._regions:
            return (f"ecs_task_arn names region {parsed.region}, which is not one the broker reads "
                    f"({', '.join(self._regions)}: BROKER_EC2_REGIONS)")
        return None

    def verify(self, clients, arn, task_arn):
        """(TaskFacts, None) when the claim holds; (None, reason) when an explicit claim fails;
        (None, None) when a task-shaped session name matches no task the rules' clusters run."""
        if task_arn is not None:
            parsed = parse_task_arn(task_arn)
            raw = self._describe(clients, parsed.region, parsed.cluster, task_arn)
            if raw is None:
                return None, f"task {parsed.task_id} does not exist in cluster {parsed.cluster} ({parsed.region})"
            region = parsed.region
        else:
            found = self._search(clients, arn.session_task_id)
            if found is None:
                return None, None
            region, raw = found
        return self._check(clients, arn, region, raw)

    def _search(self, clients, task_id):
        places = [(r, c) for r in self._regions for c in sorted(set(self._clusters()))]
        if not places:
            return None
        found = raise_first(settle(*[(lambda r=r, c=c: self._describe(clients, r, c, task_id)) for r, c in places]))
        return next(((places[i][0], raw) for i, raw in enumerate(found) if raw is not None), None)

    @staticmethod
    def _describe(clients, region, cluster, task):
        ecs = clients.client("ecs", region)
        page, missing = try_call("ecs", _TASK_MISSING, ecs.describe_tasks, cluster=cluster, tasks=[task],
                                 include=["TAGS"])
        if missing:
            return None
        tasks = answer_part("ecs", page, "tasks", list)
        return tasks[0] if tasks else None

    def _check(self, clients, arn, region, raw):
        task_arn = raw.get("taskArn", "")
        parsed = parse_task_arn(task_arn)
        if parsed is None or parsed.task_id != arn.session_name or parsed.account != arn.account:
            return None, f"ECS answered a task ({task_arn}) other than the session's"
        status = raw.get("lastStatus", "UNKNOWN")
        if status != "RUNNING":
            return None, f"task {parsed.task_id} is {status}, not RUNNING"
        definition = raw.get("taskDefinitionArn", "")
        role_arn = (raw.get("overrides") or {}).get("taskRoleArn") or self._task_role(clients, region, definition)
        if not role_arn or not _same_role(role_arn, arn):
            return None, f"task {parsed.task_id} runs with task role {role_arn or 'none'}, not {arn.role_name}"
        family, _, revision = definition.rsplit("/", 1)[-1].partition(":")
        group = raw.get("group") or ""
        tags = {t.get("key"): t.get("value") for t in raw.get("tags") or [] if t.get("key")}
        return TaskFacts(
            task_id=parsed.task_id, task_arn=task_arn, region=region,
            cluster=(raw.get("clusterArn") or parsed.cluster).rsplit("/", 1)[-1],
            service=group[len("service:"):] if group.startswith("service:") else None,
            family=family, revision=int(revision) if revision.isdigit() else 0,
            launch_type=raw.get("launchType"), last_status=status, tags=tags,
        ), None

    def _task_role(self, clients, region, definition):
        with self._lock:
            if definition in self._definitions:
                return self._definitions[definition]
        page, missing = try_call("ecs", ("ClientException",), clients.client("ecs", region).describe_task_definition,
                                 taskDefinition=definition)
        role = None if missing else answer_part("ecs", page, "taskDefinition").get("taskRoleArn")
        with self._lock:
            if len(self._definitions) > 1024:
                self._definitions.clear()
            self._definitions[definition] = role
        return role


def _same_role(role_arn, arn):
    """Is `role_arn` (arn:aws:iam::ACCOUNT:role/PATH/NAME) the session's role?"""
    parts = role_arn.split(":", 5)
    return (len(parts) == 6 and parts[2] == "iam" and parts[4] == arn.account
            and parts[5].startswith("role/") and parts[5].rsplit("/", 1)[-1] == arn.role_name)
