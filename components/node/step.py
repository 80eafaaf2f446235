"""What a node step is: a name, its scripts by action, and what its Command needs.

Each step is one module in components/node/steps/ that renders its scripts from the node's
plan and declares a ``NodeStep``; components/node/steps/__init__.py lists them in the order
they run. Everything else (the scripts directory, the digests, the runner, the refresh, the
Commands) is derived from that list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import NodePlan

INSTALL, REMOVE, PROBE = "install", "remove", "probe"


@dataclass(frozen=True)
class NodeStep:
    name: str
    """Names the step's Command (``<node>-<name>``), its scripts' directory on the node and its digest."""

    render: Callable[[NodePlan], Mapping[str, str]]
    """The step's scripts by action (``actions``), from the node's plan."""

    actions: tuple[str, ...] = (INSTALL, REMOVE, PROBE)
    """install (the Command's create), remove (its delete) and, for a step that leaves something
    to observe, probe (read by a refresh)."""

    reads_credentials: bool = False
    """Its install and probe read the registry's credentials on stdin."""

    applies: str | None = None
    """The step whose settings this one applies (the k3s restart applies the k3s step): it runs
    after that step and the registry's workloads, and again whenever that step printed a new
    settings generation."""

    @property
    def observed(self) -> bool:
        return PROBE in self.actions
