"""A node's plan: everything its scripts are rendered from, the scripts, and their digests.

The plan travels as the ``NodeScripts`` resource's input (components/node/scripts_resource.py),
which renders it on the node's behalf: each step's module (components/node/steps/) turns it into
that step's scripts. Nothing in a plan is secret (credentials travel on stdin).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .k3s_service import DEFAULT_RESTART_TIMEOUT
from .runner import digest, runner_script
from .steps import ACTIONS, NODE_STEPS
from .target import STATE_ROOT, NodeTarget


@dataclass(frozen=True)
class NodePlan:
    """Everything a node's scripts are rendered from; no secret (credentials travel on stdin)."""

    node_name: str
    role: str
    instance_id: str
    owner: str
    certificate_pem: str
    hostname: str
    ip_address: str
    address: str
    caches: tuple[tuple[str, str], ...] = ()
    anonymous_caches: tuple[str, ...] = ()
    """Addresses of the caches nodes read without credentials."""
    migrate_from_guide: bool = False
    os_trust_store: bool = False
    restart_k3s: bool = True
    restart_timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
    _rendered: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)
    """The rendered scripts, once asked for: its own per plan (not an init field, so a copy made
    with dataclasses.replace renders again)."""

    @property
    def target(self) -> NodeTarget:
        return NodeTarget(node_name=self.node_name, role=self.role, instance_id=self.instance_id, owner=self.owner)

    @property
    def scripts_dir(self) -> str:
        return scripts_dir(self.instance_id, self.owner)

    def to_props(self) -> dict[str, Any]:
        """The plan as the resource's input (JSON-like); settings at their default are left out,
        as every byte of it is kept in the state and rewritten with every checkpoint."""
        props: dict[str, Any] = {
            "node_name": self.node_name, "role": self.role, "instance_id": self.instance_id, "owner": self.owner,
            "certificate_pem": self.certificate_pem, "hostname": self.hostname, "ip_address": self.ip_address,
            "address": self.address,
        }
        if self.caches:
            props["caches"] = [list(cache) for cache in self.caches]
        if self.anonymous_caches:
            props["anonymous_caches"] = list(self.anonymous_caches)
        if self.migrate_from_guide:
            props["migrate_from_guide"] = True
        if self.os_trust_store:
            props["os_trust_store"] = True
        if not self.restart_k3s:
            props["restart_k3s"] = False
        if self.restart_timeout_seconds != DEFAULT_RESTART_TIMEOUT:
            props["restart_timeout_seconds"] = self.restart_timeout_seconds
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, Any]) -> NodePlan:
        """Back from the wire, where numbers are doubles and lists may be tuples."""
        return cls(
            node_name=str(props["node_name"]), role=str(props["role"]), instance_id=str(props["instance_id"]),
            owner=str(props["owner"]), certificate_pem=str(props["certificate_pem"]),
            hostname=str(props["hostname"]), ip_address=str(props["ip_address"]), address=str(props["address"]),
            caches=tuple((str(upstream), str(address)) for upstream, address in props.get("caches") or ()),
            anonymous_caches=tuple(str(address) for address in props.get("anonymous_caches") or ()),
            migrate_from_guide=bool(props.get("migrate_from_guide")),
            os_trust_store=bool(props.get("os_trust_store")),
            restart_k3s=bool(props.get("restart_k3s", True)),
            restart_timeout_seconds=int(props.get("restart_timeout_seconds") or DEFAULT_RESTART_TIMEOUT),
        )

    def scripts(self) -> dict[str, str]:
        """Every script by ``<step>/<action>``, rendered once per plan."""
        if not self._rendered:
            self._rendered.update(render_scripts(self))
        return dict(self._rendered)

    def step_digests(self) -> dict[str, str]:
        """Per step: the digest of the runner and the step's scripts (ACTIONS order), as the node computes it."""
        scripts = self.scripts()
        runner = runner_script(self.scripts_dir)
        return {step: digest(runner + "".join(scripts[f"{step}/{action}"] for action in actions))
                for step, actions in ACTIONS.items()}


def scripts_dir(instance_id: str, owner: str) -> str:
    """Named after the owner (whose URN names the project and stack), so short: the state and every
    command line carry it; its ``id`` file and the scripts' own text say whose it is."""
    return f"{STATE_ROOT}/scripts-{hashlib.sha256(f'{instance_id} {owner}'.encode()).hexdigest()[:10]}"


def render_scripts(plan: NodePlan) -> dict[str, str]:
    """Every step's scripts by ``<step>/<action>``, in the order the steps run."""
    scripts = {}
    for step in NODE_STEPS:
        rendered = step.render(plan)
        if tuple(rendered) != step.actions:
            raise RuntimeError(f"the {step.name} step renders {tuple(rendered)} but declares {step.actions}")
        scripts.update({f"{step.name}/{action}": text for action, text in rendered.items()})
    # Exactly the bytes the installer writes (a here-document ends in one newline).
    return {name: text.rstrip("\n") + "\n" for name, text in scripts.items()}
