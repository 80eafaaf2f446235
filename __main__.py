"""k3s-registry: a private TLS registry on k3s that every node trusts and pulls from."""

import pulumi

from components.config import load_settings
from components.nodes import ClusterNodes, ClusterNodesArgs, instance_id_for
from components.registry import Registry

settings = load_settings()

registry = Registry("registry", settings.registry)
nodes = ClusterNodes(
    "nodes",
    ClusterNodesArgs(
        registry=settings.registry,
        access=settings.node_access,
        trust_anchor_pem=registry.trust_anchor_pem,
        instance_id=instance_id_for(pulumi.get_project(), pulumi.get_stack()),
        username=registry.username,
        password=registry.password,
        restart_after=registry.workloads,
    ),
)

pulumi.export("registryAddress", registry.address)
pulumi.export("caCertificatePem", registry.trust_anchor_pem)
pulumi.export("namespace", registry.namespace)
pulumi.export("loadBalancerIp", registry.load_balancer_ip)
pulumi.export("configuredNodes", nodes.node_names)
pulumi.export("mirrors", registry.mirrors)
if registry.username is not None:
    pulumi.export("registryUsername", registry.username)
    pulumi.export("registryPassword", registry.password)
