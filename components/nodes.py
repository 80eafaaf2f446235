"""The node side: every k3s node trusts the registry, resolves its name and pulls from it.

One ``NodeConfiguration`` per node, each with three independent steps (trust store,
/etc/hosts, k3s registries.yaml) run over SSH by pulumi-command. Nodes never depend on one
another, so ``pulumi up --continue-on-error`` configures every reachable node when one is down.

pulumi-command cannot read a node back, so each step also has an observation
(components/drift.py) that a refresh re-reads: when someone changed the node behind
Pulumi's back, the observation differs, its repair count rises, and that count is part of
the step's command text, so the next `up` re-runs exactly that step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_command as command

from . import drift, drift_probes, node_scripts
from .config import NodeAccessSettings, NodeSettings, RegistrySettings
from .node_scripts import NodeTarget, as_command


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
    ssh_private_key: Optional[pulumi.Input[str]] = None
    registry_credentials: Optional[pulumi.Input[str]] = None
    """JSON ``{"username", "password"}`` for registries.yaml, secret; None without auth."""
    restart_timeout_seconds: int = node_scripts.DEFAULT_RESTART_TIMEOUT
    restart_after: Sequence[pulumi.Resource] = ()
    """What must be in place before k3s restarts here: the registry's workloads, and on a
    server the previous server's restart (servers restart one at a time)."""
    migrate_from_guide: bool = False
    """Remove the manual guide's leftovers (key, certificate, hosts line, registries.yaml entry)."""


class NodeConfiguration(pulumi.ComponentResource):
    """The registry's trust, name and k3s settings on one node, and the k3s restart that applies them."""

    trust: command.remote.Command
    hosts: command.remote.Command
    registries: command.remote.Command
    restart: command.remote.Command

    def __init__(self, name: str, args: NodeConfigurationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("k3s-registry:index:NodeConfiguration", name, None, opts)
        node = args.node
        registry = args.registry
        anchor = pulumi.Output.from_input(args.trust_anchor_pem)
        # The steps are owned by this component's URN: a renamed node or a new parent is a new
        # owner, and the old resources' deletes leave what the new ones configured.
        # Only the URN's value is wanted: depending on this component would mean depending on its
        # own children (a cycle), so the value is taken without the resource dependency.
        urn_value = pulumi.Output(set(), self.urn.future(), self.urn.is_known(), self.urn.is_secret())
        target = urn_value.apply(
            lambda urn: NodeTarget(node_name=node.name, role=node.role, instance_id=args.instance_id, owner=str(urn))
        )
        connection = command.remote.ConnectionArgs(
            host=node.host,
            port=node.port,
            user=node.user,
            private_key=pulumi.Output.secret(args.ssh_private_key) if args.ssh_private_key is not None else None,
            host_key=node.host_key,
        )
        step_options = pulumi.ResourceOptions(parent=self, delete_before_replace=True)

        def script(render) -> pulumi.Output[str]:
            """A script rendered for this node's target and the CA, as the command line for its user."""
            return pulumi.Output.all(target, anchor).apply(lambda values: as_command(render(*values), node.user))

        def step(
            role: str,
            create: pulumi.Input[str],
            delete: pulumi.Input[str],
            probe: pulumi.Input[str],
            stdin: Optional[pulumi.Input[str]] = None,
        ) -> command.remote.Command:
            # The observation must not depend on the Command: the Command reads its repairs.
            observed = drift.observe_step(
                f"{name}-{role}-observed",
                host=node.host,
                port=node.port,
                user=node.user,
                private_key=args.ssh_private_key,
                host_key=node.host_key,
                probe=probe,
                probe_stdin=stdin,
                parent=self,
            )
            text = pulumi.Output.all(create, observed.repairs).apply(
                lambda values: drift.with_repairs(values[0], values[1])
            )
            return command.remote.Command(
                f"{name}-{role}",
                connection=connection,
                create=text,
                update=text,
                delete=delete,
                # Secrets travel on stdin: the provider prints the command text when it fails.
                stdin=stdin,
                add_previous_output_in_env=False,
                # Moving a node to another address undoes the old host before configuring the new.
                triggers=[node.host, node.port],
                opts=step_options,
            )

        probe_target = NodeTarget(node_name=node.name, role=node.role, instance_id=args.instance_id)
        guide_hostname = registry.hostname if args.migrate_from_guide else None
        caches = tuple((mirror.upstream, registry.mirror_address(mirror)) for mirror in registry.mirrors)
        self.trust = step(
            "trust",
            script(lambda t, pem: node_scripts.trust_install_script(t, pem, guide_hostname)),
            script(lambda t, _pem: node_scripts.trust_remove_script(t)),
            probe=anchor.apply(lambda pem: drift_probes.trust_probe_script(probe_target, pem)),
        )
        self.hosts = step(
            "hosts",
            script(
                lambda t, _pem: node_scripts.hosts_install_script(
                    t, registry.hostname, registry.load_balancer_ip, args.migrate_from_guide
                )
            ),
            script(lambda t, _pem: node_scripts.hosts_remove_script(t)),
            probe=drift_probes.hosts_probe_script(probe_target, registry.hostname, registry.load_balancer_ip),
        )
        restart_settings = (args.restart_k3s, args.restart_timeout_seconds)
        self.registries = step(
            "k3s",
            script(
                lambda t, pem: node_scripts.registries_install_script(t, registry.address, pem, guide_hostname, caches)
            ),
            script(lambda t, _pem: node_scripts.registries_remove_script(t, registry.address, *restart_settings)),
            probe=anchor.apply(
                lambda pem: drift_probes.registries_probe_script(probe_target, registry.address, pem, caches)
            ),
            stdin=args.registry_credentials,
        )
        # Runs whenever the k3s step changed registries.yaml (its generation is in the text),
        # only after the registry is up and, on a server, after the previous server is back.
        restart_text = pulumi.Output.all(
            script(lambda t, _pem: node_scripts.restart_script(t, *restart_settings)), self.registries.stdout
        ).apply(lambda values: f"{values[0]}\n# k3s settings generation {node_scripts.settings_generation(values[1])}")
        self.restart = command.remote.Command(
            f"{name}-restart",
            connection=connection,
            create=restart_text,
            update=restart_text,
            delete=script(lambda t, _pem: node_scripts.restart_remove_script(t, registry.address, *restart_settings)),
            add_previous_output_in_env=False,
            triggers=[node.host, node.port],
            opts=pulumi.ResourceOptions.merge(
                step_options, pulumi.ResourceOptions(depends_on=[self.registries, *args.restart_after])
            ),
        )
        self.register_outputs({})


@dataclass(frozen=True)
class ClusterNodesArgs:
    registry: RegistrySettings
    access: NodeAccessSettings
    trust_anchor_pem: pulumi.Input[str]
    instance_id: str
    username: Optional[pulumi.Input[str]] = None
    password: Optional[pulumi.Input[str]] = None
    """The registry's credentials, which k3s needs to pull; None when authentication is off."""
    restart_after: Sequence[pulumi.Resource] = ()
    """The registry's workloads: k3s restarts only once they are in place."""


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

    def __init__(self, name: str, args: ClusterNodesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("k3s-registry:index:ClusterNodes", name, None, opts)
        credentials = (
            credentials_json(args.username, args.password)
            if args.username is not None and args.password is not None
            else None
        )
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
                    # Agents restart in parallel; servers one after the other, so an HA
                    # control plane (embedded etcd) keeps its quorum.
                    restart_after=[*args.restart_after, *(previous_server_restart if node.role == "server" else [])],
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.nodes[node.name] = configured
            if node.role == "server":
                previous_server_restart = [configured.restart]
        self.node_names = pulumi.Output.from_input([node.name for node in args.access.nodes])
        self.register_outputs({"nodeNames": self.node_names})
