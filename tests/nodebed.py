"""Runs the node steps the program declared, over real SSH, the way pulumi-command would.

The command text, the user, the port and stdin all come from the captured Command resources;
nothing of the scripts is retyped here.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from harness import Evaluation, Resource
from testbed.sshexec import ClientKey, ssh_run
from testbed.sshnodes import TestNode, start_node

COMMAND = "command:remote:Command"
STEPS = ("trust", "hosts", "k3s", "restart")


@dataclass
class StepRun:
    node: str
    step: str
    exit_status: int
    stdout: str
    stderr: str

    def check(self) -> "StepRun":
        assert self.exit_status == 0, f"{self.node}/{self.step} failed ({self.exit_status}):\n{self.stderr}\n{self.stdout}"
        return self


def node_steps(evaluation: Evaluation, node_name: str) -> dict[str, Resource]:
    prefix = f"nodes-{node_name}-"
    return {r.name[len(prefix):]: r for r in evaluation.of_type(COMMAND) if r.name.startswith(prefix)}


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
        runs += [run_step(node, steps[step], phase, client_key).check() for step in order]
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
    init: str = "systemd"
    files: dict[str, bytes] | None = None


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
            )
        yield started
    finally:
        for node in started.values():
            node.stop()
