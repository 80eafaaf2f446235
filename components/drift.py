"""The module name under which older states pickled their dynamic providers: kept so they load.

Pulumi keeps each dynamic resource's provider in the state, pickled by reference to its class
(``components.drift.NodeScriptsProvider`` for states written before the provider moved to
components/node/scripts_resource.py), and loads that name for a refresh and a delete; an
update writes the new name. ``NodeStepProbeProvider`` belongs to the per-step observations of
the releases up to e734ff7, which the first ``up`` after an upgrade refreshes and deletes.
"""

from __future__ import annotations

from typing import Any

import pulumi.dynamic as dynamic

from .node.scripts_resource import NodeScriptsProvider

__all__ = ["NodeScriptsProvider", "NodeStepProbeProvider"]


class NodeStepProbeProvider(dynamic.ResourceProvider):
    """The provider of the retired per-step observations (``NodeStepObservation``, up to e734ff7).

    A stack made by that release still holds them, with this class pickled by name: the first
    ``pulumi up`` after the upgrade refreshes them (``refresh: always``) and then deletes them,
    and the engine loads ``components.drift.NodeStepProbeProvider`` for both. Without the class
    that ``up`` fails before it changes anything (tests/test_upgrade_real.py, run by the real CLI).
    Observing never left anything on a node: read keeps the state, delete has nothing to undo.
    """

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        return dynamic.ReadResult(id_, props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        pass
