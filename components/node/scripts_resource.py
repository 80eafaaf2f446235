"""Each node's scripts, shipped once, and what ``pulumi refresh`` sees of the node: one resource, one session.

pulumi-command has no Read, so a refresh never notices that someone deleted our CA file or
edited the managed /etc/hosts line. A ``NodeScripts`` resource per node does two things:

- it writes the node's step scripts (components/node/runner.py) in one SSH session, so the
  Commands carry a short line and a digest instead of the scripts (state stays small);
- it observes: on refresh (``read``) ONE SSH session runs every step's read-only probe
  (components/node/steps/) and checks the scripts themselves. A step that is not
  ``in-sync`` makes ``diff`` report a change; ``update`` bumps that step's count in
  ``repairs`` (and puts the scripts back if they changed), and because each Command carries
  its own count in its text (see ``with_repairs``), pulumi-command re-runs exactly the
  drifted steps. Without drift nothing changes, so preview shows nothing.

Ordering: the Commands consume ``repairs`` and run the scripts, so this resource is applied
before them (it never ``depends_on`` them: that would be a cycle), and deleted after them. On
create the node is not configured yet: create writes the scripts (which proves the node is
reachable with this key and host key) and records nothing off, the state the Commands apply
right after it. If they fail, the next refresh reads the truth. A new host or port replaces it
(created first, the old one deleted at the end, after the old Commands' deletes used it).

Pulumi serializes the provider instance with dill into the state and loads it in its own
provider process: the class holds no state, imports paramiko only inside its methods and
captures no Output; it is pickled by reference, so that process imports this module (and
states written before this module had its name load it through components/drift.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pulumi.runtime.rpc import contains_unknowns

from . import runner
from .plan import NodePlan
from .runner import SCRIPTS
from .shell import IN_SYNC
from .ssh import ProbeError, run_on_node, where
from .steps import OBSERVED_STEPS

__all__ = ["NodeScripts", "NodeScriptsProvider", "ProbeError", "connection_props", "outputs_of"]

# The probes' vocabulary (components/node/shell.py): in sync is what every step expects.
EXPECTED = IN_SYNC


class NodeScriptsProvider(dynamic.ResourceProvider):
    """Writes one node's scripts and observes its steps; never changes the steps (the Commands do).

    ``observed`` holds only what is off (step: ``drift: <reasons>``) and ``repairs`` only the
    steps repaired so far (step: count): both empty on a node as applied, as every byte of the
    state is rewritten with every checkpoint.
    """

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        """Writes the scripts; records the state the Commands apply next (nothing off)."""
        resource_id = f"{where(props['connection'])}#{uuid.uuid4().hex[:16]}"
        install(props, resource_id)
        return dynamic.CreateResult(resource_id, outputs_of(props, repairs={}))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        """Refresh: what every step looks like now, in one session. Raises when the node cannot be asked."""
        return dynamic.ReadResult(id_, {**props, "observed": observe(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """A change when a step drifted (as last read) or the scripts or connection changed.

        A new host or port is another machine: replaced (created first), so the old Commands'
        deletes still find their scripts on the old one, which the old resource's delete then removes.
        """
        drifted = bool(olds.get("observed"))
        # In a preview the plan is unknown while what it is made of is (a new CA certificate):
        # the scripts will change, which is all a preview needs to say.
        rescripted = contains_unknowns(news.get("plan")) or \
            olds.get("digests") != NodePlan.from_props(news["plan"]).step_digests()
        changed = [key for key in ("connection", "credentials") if olds.get(key) != news.get(key)]
        old_connection, new_connection = olds.get("connection") or {}, news.get("connection") or {}
        moved = any(old_connection.get(key) != new_connection.get(key) for key in ("host", "port"))
        return dynamic.DiffResult(changes=drifted or rescripted or bool(changed),
                                  replaces=["connection"] if moved else [], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """Puts the scripts back when they changed; counts a repair for each drifted step."""
        observed = dict(olds.get("observed") or {})
        repairs = {step: int(count) for step, count in dict(olds.get("repairs") or {}).items()}
        for step in OBSERVED_STEPS:
            if step in observed:
                repairs[step] = repairs.get(step, 0) + 1
        rescripted = olds.get("digests") != NodePlan.from_props(news["plan"]).step_digests()
        if rescripted or SCRIPTS in observed or olds.get("connection") != news.get("connection"):
            install(news, id_)
        return dynamic.UpdateResult(outputs_of(news, repairs))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Removes the scripts; runs after the Commands' deletes, which use them."""
        run_on_node(props["connection"], runner.remover_script(props["scripts_dir"], id_), "", "remove the scripts")



def outputs_of(props: dict[str, Any], repairs: dict[str, int]) -> dict[str, Any]:
    """What the state keeps: what a refresh needs (read gets only the outputs), not the plan.
    Right after create or update the node is as the Commands apply it next: nothing observed off."""
    plan = NodePlan.from_props(props["plan"])
    outs = {key: props[key] for key in ("connection", "credentials") if props.get(key) is not None}
    return {**outs, "scripts_dir": plan.scripts_dir, "digests": plan.step_digests(), "observed": {},
            "repairs": repairs}



def install(props: dict[str, Any], resource_id: str) -> None:
    """Renders the scripts from the plan and writes them to the node in one session."""
    plan = NodePlan.from_props(props["plan"])
    run_on_node(props["connection"], runner.installer_script(plan, resource_id), "write the node's scripts",
                script_on_stdin=True)


def observe(props: dict[str, Any]) -> dict[str, str]:
    """What is off on the node, by step (``scripts`` for the directory itself), from one session."""
    reader = runner.reader_script(props["scripts_dir"], props["digests"])
    stdout = run_on_node(props["connection"], reader, "check for drift", stdin=props.get("credentials") or "")
    answers = runner.parse_observations(stdout)
    if answers is None:
        raise ProbeError(f"drift check on {where(props['connection'])} gave no verdict per step (in-sync or drift: ...)")
    return {step: verdict for step, verdict in answers.items() if verdict != EXPECTED}


# ----------------------------------------------------------------------------- running the probe


class NodeScripts(dynamic.Resource, module="k3s-registry", name="NodeScripts"):
    """One node's step scripts, and what each step looks like on the node as of the last refresh."""

    observed: pulumi.Output[dict]
    """What the last refresh found off, by step (trust, hosts, k3s; ``scripts`` for the directory):
    ``drift: <reasons>``. Empty when the node is as applied."""

    repairs: pulumi.Output[dict]
    """By step: how many drift repairs were ordered (absent: none); each Command carries its own
    count in its text."""

    digests: pulumi.Output[dict]
    """By step: the digest of its scripts on the node; each Command's text carries its own."""

    scripts_dir: pulumi.Output[str]

    def __init__(
        self, name: str, *, connection: pulumi.Input[dict], plan: pulumi.Input[dict],
        credentials: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "connection": connection,
            "plan": plan,
            "digests": None,
            "credentials": pulumi.Output.secret(credentials) if credentials is not None else None,
            "scripts_dir": None,
            "observed": None,
            "repairs": None,
        }
        # The key (in connection) and the registry credentials stay secret in the outputs too.
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["connection", "credentials"])
        super().__init__(PROVIDER, name, props, pulumi.ResourceOptions.merge(opts, secret_outputs))


PROVIDER = NodeScriptsProvider()


def connection_props(
    host: pulumi.Input[str], port: pulumi.Input[int], user: pulumi.Input[str],
    private_key: pulumi.Input[str] | None = None, host_key: pulumi.Input[str] | None = None,
) -> dict[str, Any]:
    """The connection as the provider takes it: the Commands' own values (``private_key`` None: SSH
    agent; ``host_key`` None: any server key is accepted, as pulumi-command does)."""
    connection: dict[str, Any] = {"host": host, "port": port, "user": user}
    if private_key is not None:
        connection["private_key"] = pulumi.Output.secret(private_key)
    if host_key is not None:
        connection["host_key"] = host_key
    return connection
