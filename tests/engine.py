"""An `up` of what the program declared, in the order the Pulumi engine runs it, on real test hosts.

The engine's rules (pkg/resource/deploy in pulumi/pulumi; ../shared/notes/pulumi-engine.md):
- a resource starts once every resource it depends on is done; independent ones run in parallel;
- a resource whose URN is new is created; one whose inputs changed is updated (pulumi-command
  runs its ``update`` text); an unchanged one is left alone;
- a URN that is gone (a renamed node, a new parent) is deleted at the END of the update, after
  every create and update, dependents first: the old delete runs after the new create.

Commands run over SSH on the test host whose address is the command's connection host, and a
node's NodeScripts resource runs its real provider (create, or Diff then Update; delete); the
registry's Deployment and Service "take" ``workload_seconds`` (pulumi-kubernetes awaits them),
so a test can see what ran before they were in place. A failed resource fails its dependents,
which never start, as in the engine.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from harness import NODE_SCRIPTS, Evaluation, Resource
from nodebed import delete_scripts, refresh_scripts, write_scripts
from testbed.sshexec import ClientKey, ssh_run
from testbed.sshnodes import TestNode

COMMAND = "command:remote:Command"
SCRIPTS = NODE_SCRIPTS
WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Service")


@dataclass
class Step:
    name: str
    operation: str  # create, update or delete
    started: float = 0.0
    finished: float = 0.0
    exit_status: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    skipped: str = ""  # why it never ran (a dependency failed)


@dataclass
class UpdateLog:
    steps: dict[str, Step] = field(default_factory=dict)
    """By resource name; in-place steps (create/update) first, then the old URNs' deletes."""

    def failed(self) -> list[Step]:
        return [s for s in self.steps.values() if s.exit_status not in (None, 0)]

    def check(self) -> "UpdateLog":
        failures = self.failed()
        assert not failures, "\n".join(f"{s.name} ({s.operation}): {s.stderr}{s.stdout}" for s in failures)
        return self


def up(
    new: Evaluation,
    nodes: dict[str, TestNode],
    client_key: ClientKey,
    old: Optional[Evaluation] = None,
    *,
    workload_seconds: float = 0.0,
    before_deletes=None,
) -> UpdateLog:
    """Runs the update from ``old`` (None: an empty stack) to ``new``; ``nodes`` by name."""
    by_ip = {node.ip: node for node in nodes.values()}
    previous = {r.urn: r for r in old.resources} if old else {}
    log = UpdateLog()
    planned = {r.urn: r for r in new.resources}
    done: dict[str, threading.Event] = {urn: threading.Event() for urn in planned}
    ok: dict[str, bool] = {}

    def apply(resource: Resource) -> None:
        try:
            waits = [d for d in resource.dependencies if d in done]
            for dependency in waits:
                done[dependency].wait()
            broken = [d for d in waits if not ok.get(d)]
            operation = "create" if resource.urn not in previous else "update"
            if broken:
                log.steps[resource.name] = Step(resource.name, operation, skipped=f"a dependency failed: {broken}")
                ok[resource.urn] = False
                return
            if resource.type == COMMAND:
                if operation == "update" and previous[resource.urn].inputs == resource.inputs:
                    ok[resource.urn] = True
                    return
                step = run_command(resource, operation, by_ip, client_key)
                log.steps[resource.name] = step
                ok[resource.urn] = step.exit_status == 0
            elif resource.type == SCRIPTS:
                step = run_provider(write_scripts, resource, operation, by_ip, client_key)
                if step.stdout != "unchanged":
                    log.steps[resource.name] = step
                ok[resource.urn] = step.exit_status == 0
            else:
                if resource.type in WORKLOADS and operation == "create":
                    started = time.time()
                    time.sleep(workload_seconds)
                    log.steps[resource.name] = Step(resource.name, operation, started, time.time(), 0)
                ok[resource.urn] = True
        finally:
            done[resource.urn].set()

    with ThreadPoolExecutor(max_workers=max(1, len(planned))) as pool:
        list(pool.map(apply, planned.values()))

    if before_deletes is not None:
        before_deletes()
    gone = [r for r in old.resources if r.urn not in planned] if old else []
    for resource in delete_order(gone):
        if resource.type == COMMAND:
            log.steps[f"{resource.name} (old)"] = run_command(resource, "delete", by_ip, client_key)
        elif resource.type == SCRIPTS:
            log.steps[f"{resource.name} (old)"] = run_provider(delete_scripts, resource, "delete", by_ip, client_key)
    return log


def destroy(evaluation: Evaluation, nodes: dict[str, TestNode], client_key: ClientKey) -> UpdateLog:
    log = UpdateLog()
    by_ip = {node.ip: node for node in nodes.values()}
    for resource in delete_order(evaluation.resources):
        if resource.type == COMMAND:
            log.steps[resource.name] = run_command(resource, "delete", by_ip, client_key)
        elif resource.type == SCRIPTS:
            log.steps[resource.name] = run_provider(delete_scripts, resource, "delete", by_ip, client_key)
    return log


def refresh(evaluation: Evaluation, nodes: dict[str, TestNode], client_key: ClientKey) -> dict[str, dict]:
    """A refresh: every NodeScripts resource read at once (the engine reads resources in parallel);
    what each observed off, by resource name. The answers become the state, as in the engine."""
    by_ip = {node.ip: node for node in nodes.values()}
    found = evaluation.of_type(SCRIPTS)

    def read(resource: Resource) -> dict:
        return refresh_scripts(resource, by_ip[resource.inputs["connection"]["host"]], client_key)["observed"]

    with ThreadPoolExecutor(max_workers=max(1, len(found))) as pool:
        return dict(zip((r.name for r in found), pool.map(read, found)))


def delete_order(resources: list[Resource]) -> list[Resource]:
    """Dependents before what they depend on (the engine's delete order), else declaration order."""
    remaining = list(resources)
    ordered: list[Resource] = []
    while remaining:
        urns = {r.urn for r in remaining}
        depended_on = {d for r in remaining for d in r.dependencies if d in urns}
        leaves = [r for r in remaining if r.urn not in depended_on]
        assert leaves, "a dependency cycle"
        ordered += leaves
        remaining = [r for r in remaining if r.urn in depended_on]
    return ordered


def run_command(resource: Resource, operation: str, by_ip: dict[str, TestNode], client_key: ClientKey) -> Step:
    inputs = resource.inputs
    connection = inputs["connection"]
    node = by_ip[connection["host"]]
    text = inputs.get(operation) or inputs["create"]
    step = Step(resource.name, operation, started=time.time())
    status, stdout, stderr = ssh_run(
        node, text, user=connection.get("user", "root"), pkey=client_key.pkey(),
        stdin="" if operation == "delete" else inputs.get("stdin", ""),
    )
    step.finished, step.exit_status = time.time(), status
    step.stdout, step.stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    return step


def run_provider(action, resource: Resource, operation: str, by_ip: dict[str, TestNode], client_key: ClientKey) -> Step:
    """A NodeScripts provider call as a step; its error, as the engine would report it, fails the step."""
    node = by_ip[resource.inputs["connection"]["host"]]
    step = Step(resource.name, operation, started=time.time())
    try:
        step.stdout = action(resource, node, client_key) or ""
        step.exit_status = 0
    except Exception as error:  # the engine reports any provider error as the step's failure
        step.exit_status, step.stderr = 1, f"{type(error).__name__}: {error}"
    step.finished = time.time()
    return step
