"""The k3s restart that applies the k3s step: once per new settings generation, servers one by one.

install restarts k3s (and waits until it is back) when the k3s step recorded a change; remove
gives registries.yaml back and restarts k3s to apply that, before the k3s step's delete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..k3s_service import DEFAULT_RESTART_TIMEOUT, restart_function
from ..shell import header, q
from ..step import INSTALL, REMOVE, NodeStep
from ..target import NodeTarget
from .registries import GIVE_BACK_FUNCTION, registries_common

if TYPE_CHECKING:
    from ..plan import NodePlan


def restart_script(target: NodeTarget, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT) -> str:
    """Applies new registry settings by restarting k3s, when the k3s step recorded a change."""
    return (
        header(target, restart_function(target, restart, timeout_seconds))
        + f"""\
state={q(target.state_dir)}
if [ -e "$state/restart-pending" ]; then
  restart_k3s
  # The pending generation is now the one k3s runs with.
  mv -f "$state/restart-pending" "$state/generation"
else
  echo "registries.yaml unchanged since k3s last started: no restart"
fi
"""
    )


def restart_remove_script(
    target: NodeTarget, address: str, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
) -> str:
    """Takes the registry out of registries.yaml and restarts k3s; runs before the k3s step's delete."""
    return (
        registries_common(target, restart_function(target, restart, timeout_seconds), GIVE_BACK_FUNCTION)
        + f"""\
address={q(address)}
leave_if_owned_by_another
if [ ! -d "$state" ]; then
  echo "registries.yaml: nothing to undo"
  exit 0
fi
give_back_and_restart
"""
    )



def render(plan: NodePlan) -> dict[str, str]:
    restart = (plan.restart_k3s, plan.restart_timeout_seconds)
    return {
        "install": restart_script(plan.target, *restart),
        "remove": restart_remove_script(plan.target, plan.address, *restart),
    }


# The restart leaves nothing to observe: it applies the k3s step.
STEP = NodeStep("restart", render, actions=(INSTALL, REMOVE), applies="k3s")
