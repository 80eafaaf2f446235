"""The node steps, in the order they run; adding a step is a module here and a line in NODE_STEPS."""

from __future__ import annotations

from ..step import NodeStep
from . import hosts, registries, restart, trust

NODE_STEPS: tuple[NodeStep, ...] = (
    trust.STEP,
    hosts.STEP,
    registries.STEP,
    restart.STEP,
)

STEPS = tuple(step.name for step in NODE_STEPS)
ACTIONS = {step.name: step.actions for step in NODE_STEPS}
OBSERVED_STEPS = tuple(step.name for step in NODE_STEPS if step.observed)
"""The steps a refresh observes (the restart leaves nothing to observe: it applies the k3s step)."""
