"""Runs the node steps the program declared, over real SSH, the way pulumi-command would.

The command text, the user, the port and stdin all come from the captured Command resources;
nothing of the scripts is retyped here.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.node.plan import NodePlan
from components.node.scripts_resource import NodeScriptsProvider

from harness import Evaluation, Resource
from testbed.sshexec import ClientKey, ssh_run
from testbed.sshnodes import K3S_AGENT, K3S_SERVER, Init, TestNode, Unit, start_node

COMMAND = "command:remote:Command"
STEPS = ("trust", "hosts", "k3s", "restart")


@dataclass
class StepRun:
    node: str
    step: str
    exit_status: int
    stdout: str
    stderr: str

    def check(self) -> StepRun:
        assert self.exit_status == 0, f"{self.node}/{self.step} failed ({self.exit_status}):\n{self.stderr}\n{self.stdout}"
        return self


def outs(result: Any) -> dict[str, Any]:
    """A provider call's outputs (the SDK types them optional; ours always returns them)."""
    assert result.outs is not None, f"{type(result).__name__} without outputs"
    return result.outs


def node_steps(evaluation: Evaluation, node_name: str) -> dict[str, Resource]:
    prefix = f"nodes-{node_name}-"
    return {r.name[len(prefix):]: r for r in evaluation.of_type(COMMAND) if r.name.startswith(prefix)}


def scripts_resource(evaluation: Evaluation, node_name: str) -> Resource:
    """The node's NodeScripts resource (components/node/scripts_resource.py): writes its scripts, observes it."""
    return evaluation.named(f"nodes-{node_name}-scripts")


def provider_props(resource: Resource, client_key: ClientKey) -> dict:
    """The inputs the program declared, as the provider gets them."""
    return with_client_key(resource.inputs, client_key)


def with_client_key(props: dict, client_key: ClientKey) -> dict:
    """``props`` whose connection has a key: without one in the stack the provider uses the SSH
    agent, which here is the test bed's client key."""
    return {**props, "connection": {"private_key": client_key.private_key_text, **props["connection"]}}


def plan_of(resource: Resource) -> NodePlan:
    """The plan a NodeScripts resource was declared with (its scripts are rendered from it)."""
    return NodePlan.from_props(resource.inputs["plan"])


def declared_plan(evaluation: Evaluation, node_name: str) -> NodePlan:
    return plan_of(scripts_resource(evaluation, node_name))


def scripts_dir_of(resource: Resource) -> str:
    """Where the resource writes its scripts: the key of its state in ``node.engine_state``."""
    return plan_of(resource).scripts_dir


def write_scripts(resource: Resource, node: TestNode, client_key: ClientKey) -> str:
    """What the engine does with a NodeScripts resource on an `up`: create it the first time;
    later, update it when its Diff says so (olds: the outputs in the state). Returns what it did:
    created, updated or unchanged; the outputs become the node's ``engine_state``."""
    provider = NodeScriptsProvider()
    props = provider_props(resource, client_key)
    directory = scripts_dir_of(resource)
    if directory in node.engine_state:
        resource_id, olds = node.engine_state[directory]
        if not provider.diff(resource_id, olds, props).changes:
            return "unchanged"
        outputs, done = provider.update(resource_id, olds, props).outs, "updated"
    else:
        created = provider.create(props)
        resource_id, outputs, done = created.id, created.outs, "created"
    node.engine_state[directory] = (resource_id, outputs)
    return done


def scripts_outputs(resource: Resource, node: TestNode) -> dict:
    """The outputs the state holds for the node's NodeScripts resource (what a program run sees)."""
    return node.engine_state[scripts_dir_of(resource)][1]


def refresh_scripts(resource: Resource, node: TestNode, client_key: ClientKey) -> dict:
    """A refresh: the provider's read of the outputs in the state, which become the state."""
    directory = scripts_dir_of(resource)
    resource_id, olds = node.engine_state[directory]
    outputs = outs(NodeScriptsProvider().read(resource_id, with_client_key(olds, client_key)))
    node.engine_state[directory] = (resource_id, {**outputs, "connection": olds["connection"]})
    return outputs


def delete_scripts(resource: Resource, node: TestNode, client_key: ClientKey) -> None:
    """The engine deletes it after the node's Commands (they depend on it)."""
    resource_id, outputs = node.engine_state.pop(scripts_dir_of(resource))
    NodeScriptsProvider().delete(resource_id, with_client_key(outputs, client_key))


def run_step(node: TestNode, step: Resource, phase: str, client_key: ClientKey) -> StepRun:
    """``phase`` is create, update or delete: the text pulumi-command would run for it."""
    inputs = step.inputs
    command = inputs.get(phase) or inputs["create"]
    connection = inputs["connection"]
    assert connection["port"] == 22, "test nodes listen on 22"
    status, stdout, stderr = ssh_run(
        node, command, user=connection.get("user", "root"), pkey=client_key.pkey(), stdin=inputs.get("stdin", "")
    )
    return StepRun(node.name, step.name.rsplit("-", 1)[1], status, stdout.decode(), stderr.decode())


def run_phase(
    evaluation: Evaluation, nodes: Iterable[TestNode], phase: str, client_key: ClientKey
) -> list[StepRun]:
    """Runs every step of every node for one phase; destroy undoes the steps in reverse order."""
    order = tuple(reversed(STEPS)) if phase == "delete" else STEPS
    runs = []
    for node in nodes:
        steps = node_steps(evaluation, node.name)
        if phase != "delete":
            write_scripts(scripts_resource(evaluation, node.name), node, client_key)
        runs += [run_step(node, steps[step], phase, client_key).check() for step in order]
        if phase == "delete" and scripts_dir_of(scripts_resource(evaluation, node.name)) in node.engine_state:
            delete_scripts(scripts_resource(evaluation, node.name), node, client_key)
    return runs


def file_times(node: TestNode, paths: Iterable[str]) -> dict[str, str]:
    """Modification time of every file below ``paths``: proves that a no-op run rewrote nothing."""
    listing = node.run_local(["find", *paths, "-printf", "%p %T@\\n"]).stdout.decode()
    return dict(line.rsplit(" ", 1) for line in listing.splitlines() if line)


def port_22_free(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.5):
            return False
    except OSError:
        return True


def free_addresses(candidates: list[str], count: int) -> list[str]:
    """Free addresses in a test file's own range, so two runs of the suite at once do not collide."""
    free = [ip for ip in candidates if port_22_free(ip)]
    assert len(free) >= count, f"need {count} free addresses among {candidates}"
    return free[:count]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str
    hosts: bytes
    init: Init = "systemd"
    files: dict[str, bytes] | None = None
    units: tuple[Unit, ...] = (K3S_SERVER,)
    """The k3s units the node has: a server's unless it is an agent (units_for)."""


def units_for(role: str) -> tuple[Unit, ...]:
    """The unit install.sh makes for a node of ``role``: k3s on a server, k3s-agent on an agent."""
    return (K3S_SERVER,) if role == "server" else (K3S_AGENT,)


@contextlib.contextmanager
def running_nodes(
    specs: Iterable[NodeSpec], client_key: ClientKey, workdir_for: Callable[[str], Path]
) -> Iterator[dict[str, TestNode]]:
    """Real test hosts for the length of a ``with`` block; every one is stopped, even on failure."""
    started: dict[str, TestNode] = {}
    try:
        for spec in specs:
            started[spec.name] = start_node(
                spec.name, spec.ip, workdir_for(spec.name), hosts_content=spec.hosts,
                authorized_pubkey=client_key.public_key_line, init=spec.init, extra_files=spec.files,
                units=spec.units,
            )
        yield started
    finally:
        for node in started.values():
            node.stop()
