"""k3s-registry: a private TLS registry on k3s that every node trusts and pulls from."""

import gc

import pulumi

from components.cluster.registry import Registry
from components.config import load_settings
from components.node.nodes import ClusterNodes, ClusterNodesArgs, instance_id_for

# Pulumi keeps every resource's futures alive until the run ends; at the collector's default
# thresholds it rescans them so often that evaluation grew faster than the node count
# (./scripts/bench: 300 nodes took 6.7 s, now about 4 s).
gc.set_threshold(10_000, 10, 10)

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
pulumi.export("servingCertificateExpires", registry.serving_certificate_expires)
if registry.username is not None:
    pulumi.export("registryUsername", registry.username)
    pulumi.export("registryPassword", registry.password)
