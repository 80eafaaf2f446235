"""The node side: every k3s node trusts the registry, resolves its name and pulls from it.

One ``NodeConfiguration`` per node: a ``NodeScripts`` resource (components/node/scripts_resource.py)
writes the node's step scripts once and observes the node on refresh, in one SSH session each;
then the steps (components/node/steps/: trust store, /etc/hosts, k3s registries.yaml, and the
k3s restart that applies it) run by pulumi-command, each a short line that runs its script by
digest (components/node/runner.py). Nodes never depend on one another except for the servers'
restarts, so ``pulumi up --continue-on-error`` configures every reachable node when one is down.

pulumi-command cannot read a node back: when a refresh finds a step drifted, that step's
repair count rises, and the count is part of the step's command text, so the next `up`
re-runs exactly that step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from ..settings import NodeAccessSettings, NodeSettings, RegistrySettings
from .k3s_service import DEFAULT_RESTART_TIMEOUT
from .plan import NodePlan
from .runner import command_texts
from .scripts_resource import NodeScripts, connection_props
from .steps import NODE_STEPS
from .steps.registries import settings_generation
from .steps.restart import STEP as RESTART_STEP


def instance_id_for(project: str, stack: str) -> str:
    """Names this program's files on a node; distinct per stack so two registries can coexist."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{project}-{stack}".lower()).strip("-")


@dataclass(frozen=True)
class NodeConfigurationArgs:
    node: NodeSettings
    registry: RegistrySettings
    trust_anchor_pem: pulumi.Input[str]
    instance_id: str
    restart_k3s: bool
    ssh_private_key: pulumi.Input[str] | None = None
    registry_credentials: pulumi.Input[str] | None = None
    """JSON ``{"username", "password"}`` for registries.yaml, secret; None without auth."""
    restart_timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
    restart_after: Sequence[pulumi.Resource] = ()
    """What must be in place before k3s restarts here: the registry's workloads, and on a
    server the previous server's restart (servers restart one at a time)."""
    migrate_from_guide: bool = False
    """Remove the manual guide's leftovers (key, certificate, hosts line, registries.yaml entry)."""
    os_trust_store: bool = False
    """Also put the CA in the node's OS trust store (otherwise our CA is kept out of it)."""


class NodeConfiguration:
    """The registry's trust, name and k3s settings on one node, and the k3s restart that applies them.

    Declares the node's resources under ``parent`` (the ClusterNodes component), named after
    ``name``. Not a component of its own: a file backend rewrites the whole checkpoint after
    every resource, so a component per node would cost a write per node on every update of
    every node, for a level in the preview tree that the names already give.
    """

    scripts: NodeScripts
    steps: dict[str, command.remote.Command]
    """By step name (components/node/steps/), in the order they run."""

    def __init__(self, name: str, args: NodeConfigurationArgs, parent: pulumi.Resource, owner: pulumi.Output[str]):
        node = args.node
        registry = args.registry
        caches = tuple((mirror.upstream, registry.mirror_address(mirror)) for mirror in registry.mirrors)
        anonymous_caches = tuple(registry.mirror_address(mirror) for mirror in registry.mirrors if mirror.anonymous)
        plan = pulumi.Output.all(owner, args.trust_anchor_pem).apply(
            lambda values: NodePlan(
                node_name=node.name, role=node.role, instance_id=args.instance_id, owner=str(values[0]),
                certificate_pem=values[1], hostname=registry.hostname, ip_address=registry.load_balancer_ip,
                address=registry.address, caches=caches, anonymous_caches=anonymous_caches,
                migrate_from_guide=args.migrate_from_guide,
                os_trust_store=args.os_trust_store,
                restart_k3s=args.restart_k3s, restart_timeout_seconds=args.restart_timeout_seconds,
            )
        )
        private_key = pulumi.Output.secret(args.ssh_private_key) if args.ssh_private_key is not None else None
        connection = command.remote.ConnectionArgs(
            host=node.host, port=node.port, user=node.user, private_key=private_key, host_key=node.host_key,
        )
        # The Commands must not be its dependencies: they read its repairs and run its scripts.
        self.scripts = NodeScripts(
            f"{name}-scripts",
            connection=connection_props(node.host, node.port, node.user, args.ssh_private_key, node.host_key),
            plan=plan.apply(lambda p: p.to_props()),
            credentials=args.registry_credentials,
            opts=pulumi.ResourceOptions(parent=parent),
        )
        step_options = pulumi.ResourceOptions(parent=parent, delete_before_replace=True, depends_on=[self.scripts])

        # The Commands' texts come from what the resource wrote: its directory and each step's
        # digest (a Command re-runs exactly when its step's scripts changed) and repair count.
        texts = pulumi.Output.all(self.scripts.scripts_dir, self.scripts.digests, self.scripts.repairs).apply(
            lambda values: command_texts(values[0], values[1] or {}, values[2] or {}, node.user)
        )

        def text(key: str) -> pulumi.Output[str]:
            return texts.apply(lambda all_texts: all_texts[key])

        self.steps = {}
        for node_step in NODE_STEPS:
            create = text(f"{node_step.name}/create")
            depends_on: list[pulumi.Resource] = []
            if node_step.applies is not None:
                # Runs whenever the step it applies changed its settings (the generation is in
                # the text), only after the registry is up and, on a server, after the
                # previous server is back.
                applied = self.steps[node_step.applies]
                create = pulumi.Output.all(create, applied.stdout).apply(
                    lambda values: f"{values[0]}\n# k3s settings generation {settings_generation(values[1])}"
                )
                depends_on = [applied, *args.restart_after]
            self.steps[node_step.name] = command.remote.Command(
                f"{name}-{node_step.name}",
                connection=connection,
                create=create,
                delete=text(f"{node_step.name}/delete"),
                # Secrets travel on stdin: the provider prints the command text when it fails.
                stdin=args.registry_credentials if node_step.reads_credentials else None,
                add_previous_output_in_env=False,
                # Moving a node to another address undoes the old host before configuring the new.
                triggers=[node.host, node.port],
                opts=pulumi.ResourceOptions.merge(step_options, pulumi.ResourceOptions(depends_on=depends_on)),
            )

    @property
    def restart(self) -> command.remote.Command:
        """The k3s restart, which the next server's restart waits for."""
        return self.steps[RESTART_STEP.name]


@dataclass(frozen=True)
class ClusterNodesArgs:
    registry: RegistrySettings
    access: NodeAccessSettings
    trust_anchor_pem: pulumi.Input[str]
    instance_id: str
    username: pulumi.Input[str] | None = None
    password: pulumi.Input[str] | None = None
    """The registry's credentials, which k3s needs to pull; None when authentication is off."""
    restart_after: Sequence[pulumi.Resource] = ()
    """The registry's workloads: k3s restarts only once they are in place."""


def owner_of(component_urn: pulumi.Output[str | None], node_name: str) -> pulumi.Output[str]:
    """Who manages a node's steps: the ClusterNodes component's URN and the node's name."""
    return component_urn.apply(lambda urn: f"{urn}#{node_name}")


def credentials_json(username: pulumi.Input[str], password: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.secret(
        pulumi.Output.all(username, password).apply(
            lambda values: json.dumps({"username": values[0], "password": values[1]}, sort_keys=True)
        )
    )


class ClusterNodes(pulumi.ComponentResource):
    """Configures every node listed in the stack for the registry."""

    node_names: pulumi.Output[list[str]]
    """The nodes this stack configures."""

    def __init__(self, name: str, args: ClusterNodesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("k3s-registry:index:ClusterNodes", name, None, opts)
        credentials = (
            credentials_json(args.username, args.password)
            if args.username is not None and args.password is not None
            else None
        )
        # A node's steps are owned by this component's URN and the node's name: a renamed node or
        # a new parent is a new owner, and the old resources' deletes leave what the new ones
        # configured. Only the URN's value is wanted: depending on this component would mean
        # depending on its own children (a cycle), so the value is taken without the dependency.
        urn_value = pulumi.Output(set(), self.urn.future(), self.urn.is_known(), self.urn.is_secret())
        self.nodes: dict[str, NodeConfiguration] = {}
        previous_server_restart: list[pulumi.Resource] = []
        for node in args.access.nodes:
            configured = NodeConfiguration(
                f"{name}-{node.name}",
                NodeConfigurationArgs(
                    node=node,
                    registry=args.registry,
                    trust_anchor_pem=args.trust_anchor_pem,
                    instance_id=args.instance_id,
                    restart_k3s=args.access.restart_k3s,
                    ssh_private_key=args.access.ssh_private_key,
                    registry_credentials=credentials,
                    restart_timeout_seconds=args.access.restart_timeout_seconds,
                    migrate_from_guide=args.access.migrate_from_guide,
                    os_trust_store=args.access.os_trust_store,
                    # Agents restart in parallel; servers one after the other, so an HA
                    # control plane (embedded etcd) keeps its quorum.
                    restart_after=[*args.restart_after, *(previous_server_restart if node.role == "server" else [])],
                ),
                parent=self,
                owner=owner_of(urn_value, node.name),
            )
            self.nodes[node.name] = configured
            if node.role == "server":
                previous_server_restart = [configured.restart]
        self.node_names = pulumi.Output.from_input([node.name for node in args.access.nodes])
        self.register_outputs({"nodeNames": self.node_names})
