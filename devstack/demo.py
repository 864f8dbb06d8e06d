"""`make demo`: the broker's main job, told as a short story on the local stack.

First the operator's `broker vault setup` (the real command, as a process) against the
stack's OpenBao and moto: a dry run, then for real, then again (nothing to change).
An EC2 instance boots with no credential but its instance role, runs the real
`broker login` client against the broker under `chalice local`, and reads its
application secret from OpenBao. A second instance, tagged for another role, is
refused. A GCE instance (on the simulated Google) bootstraps the same way with
its identity token. A container on ECS bootstraps with its task role and task
metadata; another one on the same task role, tagged for another role, is refused.
An instance of a second AWS account bootstraps, read there through a reader role.
Then the security team's view: the audit trail searched with `broker audit search`,
the web instance revoked and quarantined after an IDS alert, its Vault token refused
(reading and renewing), and its next attempt refused. KEEP=1 leaves the stack running, and every command shown can be pasted.
``--vault-namespace team-a`` (``make demo VAULT_NAMESPACE=team-a``): the same story with every Vault
object of the stack in that namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import hvac

from devstack import machines
from devstack.broker import PROJECT_DIR
from devstack.procs import StackError
from devstack.stack import Stack

STATE_DIR = PROJECT_DIR / ".stack"


def say(text=""):
    print(textwrap.dedent(text).strip("\n"), flush=True)


def step(number, title):
    print(f"\n\033[1m{number}. {title}\033[0m", flush=True)


# What the demo shows before each command: how to get that machine's (or person's)
# environment in your own shell once `KEEP=1 make demo` has left the stack running.
DEVSTACK = "python -m devstack"


@contextlib.contextmanager
def workspace(keep, name):
    """Where a machine's client writes: a temporary directory, or with KEEP=1 one under
    .stack/demo/ that stays (so the commands shown can be pasted as they are)."""
    if not keep:
        with tempfile.TemporaryDirectory(prefix="secret-zero-demo-") as tmp:
            yield tmp
        return
    path = STATE_DIR / "demo" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    yield str(path)


_shown_env = [None]  # the machine whose environment the pasted commands' shell has
WARNINGS = []  # every warning a command of the demo printed: each one fails the demo


def relay(text):
    """Print a command's output, indented, and keep each warning it printed (a demo that
    prints a warning and then says all went well would be telling an untruth)."""
    for line in text.splitlines():
        print(f"     {line}")
        if "warning:" in line.lower():
            WARNINGS.append(line.strip())


def show(as_cmd, *command):
    """Print ``command`` as a user can paste it after KEEP=1 (with the venv active),
    after the line that gives the shell the environment of the machine it runs on
    (when the previous command ran on another one)."""
    if as_cmd != _shown_env[0]:
        print(f"   $ eval \"$({DEVSTACK} {as_cmd})\"", flush=True)
        _shown_env[0] = as_cmd
    print(f"   $ {shlex.join(command)}", flush=True)


def run_client(env, role, handoff, as_cmd):
    """Run the real client as a process on a machine whose environment (devstack/machines.py)
    is ``env``: only its role's credentials (EC2), its task's agent (ECS) or its metadata
    server (GCE), and the broker's and Vault's addresses."""
    show(as_cmd, "broker", "login", "--role", role, *handoff)
    cmd = [sys.executable, "-m", "broker", "login", "--role", role, "--json", *handoff]
    proc = subprocess.run(cmd, env=machines.process_env(env, base={"PATH": os.environ.get("PATH", "")}),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    relay(proc.stderr)
    summary = {}
    if proc.stdout.strip():
        try:
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
        except ValueError:
            pass
    return proc.returncode, summary


def run_vault_setup(stack, *args):
    """The operator's `broker vault setup` against the stack's OpenBao (its root token) and moto's
    Secrets Manager (the admin's keys). Prints what changes; the rest as one count."""
    from devstack.aws import VAULT_SECRET_ID_SECRET

    shown = ["broker", "vault", "setup", "--secret", VAULT_SECRET_ID_SECRET, *args,
             "--aws-endpoint-url", stack.aws_endpoint_url]
    show("as-operator", *shown)
    env = machines.process_env(machines.operator_env(stack), base={"PATH": os.environ.get("PATH", "")})
    proc = subprocess.run([sys.executable, "-m", *shown, "--json"],
                          env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    same = [line for line in proc.stderr.splitlines() if line.startswith("broker: ok: ")]
    relay("\n".join(line for line in proc.stderr.splitlines() if line not in same))
    if same:
        print(f"     ({len(same)} already as they should be: the approle mount, the policies, the AppRoles, "
              "the stored secret ID)")
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    return proc.returncode, summary


def run_security(env, *args, as_cmd="as-role security-team --session alice"):
    """A security engineer's `broker audit ...` / `broker revoke ...`, signed with her own AWS identity."""
    show(as_cmd, "broker", *args)
    env = machines.process_env(env, base={"PATH": os.environ.get("PATH", "")})
    env["COLUMNS"] = str(max(200, shutil.get_terminal_size((200, 24)).columns - 5))
    proc = subprocess.run([sys.executable, "-m", "broker", *args], env=env, cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)
    relay(proc.stdout + proc.stderr)
    return proc


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vault-namespace", metavar="NS", default=None,
                        help="every Vault object of the stack in this namespace (default: the root namespace)")
    args = parser.parse_args(argv)
    keep = os.environ.get("KEEP") == "1"
    say("""
        The secret-zero broker, on a local stack: OpenBao (Vault's open-source fork),
        moto standing in for AWS (it checks every SigV4 signature and IAM policy), and
        the broker itself under `chalice local`.
    """)
    from devstack.cli import running_stack

    running = running_stack(STATE_DIR)
    if running:  # starting a second stack in .stack/ would rewrite the running one's files
        print(f"A local stack already runs in {STATE_DIR} ({', '.join(sorted(running))}, from `make stack-up` "
              "or `KEEP=1 make demo`). The demo starts its own: stop that one first with `make stack-down`.",
              file=sys.stderr)
        return 1
    try:
        stack = Stack.start(STATE_DIR, with_broker=True, detached=keep, vault_namespace=args.vault_namespace,
                            progress=lambda m: print(f"   {m}"))
    except StackError as e:
        print(f"Could not start the local stack: {e}", file=sys.stderr)
        print("If one already runs, stop it first: make stack-down", file=sys.stderr)
        return 1
    try:
        return story(stack, keep)
    finally:
        if keep:
            stack.write_endpoints(STATE_DIR / "endpoints.json")
            stack.write_broker_env(STATE_DIR / "broker.env")
            say(f"""
                KEEP=1: the stack keeps running ({STATE_DIR / 'endpoints.json'}); stop it with `make stack-down`.
                Every command above can be pasted now, from {PROJECT_DIR}, after `source .venv/bin/activate`:
                each `eval "$(python -m devstack as-...)"` line gives your shell the environment of that
                machine (or person), so the `broker` line after it runs exactly as it did there.
                New machines: python -m devstack as-instance --tags vault-role=web [--account 210987654321]
                              python -m devstack as-task --tags vault-role=web
                              python -m devstack as-gce --labels vault-role=web
                (each prints export lines, or runs the command given after `--` in the machine).
            """)
        else:
            stack.stop()
            say("\nThe local stack is stopped. `KEEP=1 make demo` leaves it running, and then every command "
                "shown above can be pasted into a shell (it says how at the end).")


def rule_text(rules, name):
    block = next((b for b in rules.split("\n[[rule]]\n") if f'name = "{name}"' in b), None)
    return textwrap.indent("[[rule]]\n" + block.strip(), "     ") if block else f"     (no rule {name})"


def story_containers_and_accounts(stack, keep, rules):
    """Steps 6-8 (issue 10): a container on ECS, one on the same task role tagged for
    another role, and an instance of the second account. Returns (failures, request IDs)."""
    failures, requests_made = 0, []

    step(6, "A container boots on ECS")
    task = stack.run_task({"vault-role": "web", "Name": "web-task"})
    task_id = task.rsplit("/", 1)[1]
    say(f"""
        Task {task_id} of task definition demo-web runs in cluster demo-cluster, tagged vault-role=web.
        Its task role demo-task trusts only ecs-tasks.amazonaws.com and carries no grant by itself:
        tasks of other services may share it. ECS hands the container the role's credentials as a
        session named after the task ({task_id}); its task metadata endpoint gives the task ARN.
        The broker finds the task RUNNING with DescribeTasks (by the task ARN the client sends,
        or by the session name in the clusters the rules name), checks that it runs with that
        role, and reads its cluster, family and tags itself. The rule that will decide:
    """)
    print(rule_text(rules, "web-tasks"))
    with workspace(keep, "web-task") as tmp:
        token_file = Path(tmp) / "vault-token"
        code, summary = run_client(machines.task_env(stack, task), "web", ["--sink", str(token_file)],
                                   f"as-task --task-arn {task}")
        requests_made.append(summary.get("request_id"))
        if code != 0:
            print(f"   The client failed with exit code {code}; see {stack.broker.log_path}")
            failures += 1
        else:
            say(f"Issued by rule web-tasks; the token is in {token_file}.")

    step(7, "Another container, same task role, tagged for another role, asks for web")
    other = stack.run_task({"vault-role": "batch", "Name": "batch-task"})
    say(f"Task {other.rsplit('/', 1)[1]} runs the same task definition (task role demo-task), tagged vault-role=batch.")
    with workspace(keep, "batch-task") as tmp:
        code, summary = run_client(machines.task_env(stack, other), "web", ["--out-dir", tmp],
                                   f"as-task --task-arn {other}")
        written = sorted(os.listdir(tmp))
    requests_made.append(summary.get("request_id"))
    say(f"Exit code {code} (4 = refused); files written: {written or 'none'}. The role alone was not enough.")
    failures += code != 4 or bool(written)

    step(8, "An EC2 instance boots in another AWS account")
    second = stack.endpoints["second_account_id"]
    remote = stack.launch_instance({"vault-role": "web", "Name": "web-2"}, profile="demo-node", account=second)
    say(f"""
        Instance {remote} runs in account {second} with that account's instance profile demo-node,
        tagged vault-role=web. The broker reads it in account {second} through the reader role it
        assumes there (secret-zero-reader, external ID secret-zero-local; BROKER_ACCOUNT_READERS),
        never with its own account's view. Rule web-nodes lists both accounts.
    """)
    with workspace(keep, "web-2") as tmp:
        token_file = Path(tmp) / "vault-token"
        code, summary = run_client(machines.instance_env(stack, remote, second), "web",
                                   ["--sink", str(token_file)], f"as-instance --account {second} --instance {remote}")
        requests_made.append(summary.get("request_id"))
        if code != 0:
            print(f"   The client failed with exit code {code}; see {stack.broker.log_path}")
            failures += 1
        else:
            say(f"Issued by rule web-nodes, facts read in account {second}; the token is in {token_file}.")
    return failures, requests_made


def story(stack, keep=False):
    rules = (PROJECT_DIR / "policies" / "rules.toml").read_text()
    failures = 0

    step(0, "The operator sets up OpenBao for the broker")
    if stack.vault_namespace:
        say(f"""
            Everything below is in the Vault namespace {stack.vault_namespace} (VAULT_NAMESPACE for setup and the
            client, BROKER_VAULT_NAMESPACE for the broker); the root namespace holds none of it.
        """)
    say("""
        `broker vault setup` writes what the broker needs in Vault/OpenBao (the approle mount, the
        policies of policies/vault, the broker's AppRole, one AppRole per role the rules serve with
        single-use secret IDs) and keeps the broker's secret ID in Secrets Manager; the stack's
        OpenBao was seeded by the same code. Then someone made web's secret IDs reusable by hand:
    """)
    stack.vault().write_data("auth/approle/role/web", data={"secret_id_num_uses": 0})
    drift = ["update AppRole web: secret_id_num_uses=1"]
    code, plan = run_vault_setup(stack, "--dry-run")
    failures += code != 0 or plan.get("changes") != drift
    code, plan = run_vault_setup(stack)
    failures += code != 0 or plan.get("changes") != drift
    code, plan = run_vault_setup(stack)
    failures += code != 0 or plan.get("changes") != []
    say("Safe to run again: it changes only what differs, and says so first with --dry-run.")

    step(1, "An EC2 instance boots")
    web = stack.launch_instance({"vault-role": "web", "Name": "web-1"}, profile="demo-node")
    say(f"""
        Instance {web} runs with instance profile demo-node and the tag vault-role=web.
        It carries no Vault credential. EC2 hands it its role's credentials as a session
        named after the instance: arn:aws:sts::123456789012:assumed-role/demo-node/{web}
        The rule that will decide (policies/rules.toml):
    """)
    print(textwrap.indent("[[rule]]\n" + rules.split("\n[[rule]]\n")[1].strip(), "     "))

    step(2, "Its user-data runs the broker client")
    with workspace(keep, "web-1") as tmp:
        token_file = Path(tmp) / "vault-token"
        code, summary = run_client(machines.instance_env(stack, web), "web", ["--sink", str(token_file)],
                                   f"as-instance --instance {web}")
        if code != 0:
            print(f"   The client failed with exit code {code}; see {stack.broker.log_path}")
            return 1
        say(f"""
            The client signed GetCallerIdentity, the broker verified it with STS, read the
            instance and its tags itself, matched rule web-nodes, and answered with a wrapped
            role ID and a wrapped single-use secret ID. The client checked both wrapping
            tokens' creation paths, unwrapped them, logged in, and wrote a Vault token to
            {token_file} (mode {oct(token_file.stat().st_mode & 0o777)}).
        """)
        granted_request = summary.get("request_id")
        web_token = token_file.read_text().strip()  # kept (in memory) for the revocation, step 10

        step(3, "The application reads its secret with that token")
        client = hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace,
                             token=token_file.read_text().strip())
        secret = client.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)["data"]["data"]
        say(f"""
            GET secret/web/config -> keys {sorted(secret)}; api_url = {secret['api_url']}
            (the password is there too; a demo doesn't print secrets either)
        """)
        try:
            client.secrets.kv.v2.read_secret_version(path="batch/config", raise_on_deleted_version=True)
            print("   UNEXPECTED: the web token could read batch's secret")
            failures += 1
        except hvac.exceptions.Forbidden:
            say("GET secret/batch/config -> 403 permission denied: the web role reads web's secrets only")

    step(4, "Another instance, tagged for another role, asks for web")
    other = stack.launch_instance({"vault-role": "batch", "Name": "batch-1"}, profile="demo-node")
    say(f"Instance {other} has the same instance profile but the tag vault-role=batch.")
    with workspace(keep, "batch-1") as tmp:
        code, summary = run_client(machines.instance_env(stack, other), "web", ["--out-dir", tmp],
                                   f"as-instance --instance {other}")
        written = sorted(os.listdir(tmp))
    say(f"""
        Exit code {code} (4 = refused by the broker); files written: {written or 'none'}.
        The caller is told which role was refused, never which condition failed.
    """)
    if code != 4 or written:
        failures += 1
    refused_request = summary.get("request_id")

    step(5, "A GCE instance boots, on the other cloud")
    gce = stack.gcp_seed or stack.gcp_instance("web-gce-1")
    say(f"""
        Instance {gce['name']} (ID {gce['id']}) runs in project demo-project, zone us-central1-a, as
        service account demo-node@demo-project.iam.gserviceaccount.com, labelled vault-role=web
        (on the simulated Google of the local stack). Its metadata server hands it identity
        tokens signed by Google; the broker checks them with Google's certificates and reads
        the instance with the Compute API itself. The rule that will decide:
    """)
    gcp_rule = next((block for block in rules.split("\n[[rule]]\n") if 'name = "web-gce"' in block), None)
    if gcp_rule:
        print(textwrap.indent("[[rule]]\n" + gcp_rule.strip(), "     "))
    with workspace(keep, "web-gce-1") as tmp:
        token_file = Path(tmp) / "vault-token"
        code, summary = run_client(machines.gce_env(stack, gce["name"]), "web", ["--sink", str(token_file)],
                                   f"as-gce --instance {gce['name']}")
        gce_request = summary.get("request_id")
        if code != 0:
            print(f"   The client failed with exit code {code}; see {stack.broker.log_path}")
            failures += 1
        else:
            client = hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace,
                                 token=token_file.read_text().strip())
            secret = client.secrets.kv.v2.read_secret_version(path="web/config",
                                                              raise_on_deleted_version=True)["data"]["data"]
            say(f"""
                No --cloud flag: the client found no AWS credentials, found the GCE metadata
                server, fetched an identity token for the broker's audience and sent it.
                Same checks, same unwrap, same hand-off as on AWS. GET secret/web/config ->
                keys {sorted(secret)}.
            """)

    more_failures, more_requests = story_containers_and_accounts(stack, keep, rules)
    failures += more_failures

    step(9, "The security team searches the audit trail")
    engineer = machines.role_env(stack, "security-team", "alice")
    say("""
        Every decision is a DynamoDB record written before the answer; no token or secret ID in it.
        A security engineer (role security-team, listed under [security] in the rules file) asks
        the broker, signing with her own AWS identity; the broker checks it and audits the read.
    """)
    proc = run_security(engineer, "audit", "search", "--since", "15m")
    if proc.returncode != 0:
        failures += 1
    for request_id in (granted_request, refused_request, gce_request, *more_requests):
        if not request_id or request_id not in proc.stdout:
            print(f"   (request {request_id} is missing from the search)")
            failures += 1
    if refused_request:
        say("Why was the second instance refused? The record says it (the caller was only told 403):")
        proc = run_security(engineer, "audit", "show", refused_request)
        failures += proc.returncode != 0

    step(10, "An intrusion detection system flags the web instance")
    proc = run_security(engineer, "revoke", "--instance", web, "--reason", "IDS alert: outbound scan",
                        "--quarantine", "24h")
    if proc.returncode != 0:
        failures += 1
    say("""
        The instance is quarantined first: from that moment the broker refuses it before anything
        is minted. Then everything issued to it that could still be used is killed in OpenBao, by
        accessor, by the broker's revoking identity (its own AppRole, used for nothing else): the
        wrapping tokens, the secret ID ("gone" here: its login used up the single-use secret ID),
        and the Vault token logged in with it (its client registered that token's accessor; the
        others would be found by a scan of every token). A second sweep catches issuances that
        were in flight.
    """)

    step(11, "The token on the flagged instance stops working")
    read = hvac.Client(url=stack.vault_addr, namespace=stack.vault_namespace, token=web_token)
    try:
        read.secrets.kv.v2.read_secret_version(path="web/config", raise_on_deleted_version=True)
        print("   UNEXPECTED: the revoked token still reads secret/web/config")
        failures += 1
    except hvac.exceptions.Forbidden:
        say("GET secret/web/config with the token in its sink -> 403 permission denied")
    try:
        read.auth.token.renew_self()
        print("   UNEXPECTED: the revoked token could still be renewed")
        failures += 1
    except hvac.exceptions.Forbidden:
        say("""
            POST auth/token/renew-self -> 403: an Agent renewing this token is refused the same way,
            and it can't log in again either: its secret ID is spent and the broker won't issue another.
        """)

    step(12, "The flagged instance asks again")
    with workspace(keep, "web-1-flagged") as tmp:
        code, summary = run_client(machines.instance_env(stack, web), "web", ["--out-dir", tmp],
                                   f"as-instance --instance {web}")
    say(f"Exit code {code}: refused ({summary.get('code')}), and that refusal is on the record too.")
    if code != 4 or summary.get("code") != "quarantined":
        failures += 1
    run_security(engineer, "audit", "search", "--instance", web, "--since", "15m")

    if WARNINGS:
        print(f"\nThe demo saw {len(WARNINGS)} warning(s), each a failure:")
        for line in WARNINGS:
            print(f"   {line}")
    if failures or WARNINGS:
        print(f"\nThe demo saw {failures} unexpected outcome(s) and {len(WARNINGS)} warning(s).")
        return 1
    print("\nDone: EC2 instances in two accounts, an ECS task and a GCE instance bootstrapped with no shipped "
          "credential, an instance and a task refused, all on the record; the flagged instance cut off at once: "
          "its token refused, its requests refused.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
