"""Who reaches the registry and what it reaches: its NetworkPolicy and its LoadBalancer Service."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from ..settings import MirrorSettings, RegistrySettings
from .naming import (
    CLUSTER_DNS_NAMESPACE,
    CLUSTER_DNS_POD_LABELS,
    CONTAINER_PORT,
    CONTAINER_PORT_NAME,
    METALLB_IP_ANNOTATION,
    METALLB_SHARED_IP_ANNOTATION,
    METRICS_PORT,
    METRICS_PORT_NAME,
    metrics_service_labels,
    object_labels,
    pod_labels,
    upstream_port,
)
from .rollout import rollout_timeouts


def cache_egress(mirror: MirrorSettings) -> list[k8s.networking.v1.NetworkPolicyEgressRuleArgs]:
    """What a cache may reach: its upstream's port (any address: the upstream's IPs are not
    known in advance) and the cluster DNS, to resolve the upstream's name."""
    return [
        k8s.networking.v1.NetworkPolicyEgressRuleArgs(
            ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=upstream_port(mirror), protocol="TCP")]
        ),
        k8s.networking.v1.NetworkPolicyEgressRuleArgs(
            to=[
                k8s.networking.v1.NetworkPolicyPeerArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": CLUSTER_DNS_NAMESPACE}
                    ),
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=CLUSTER_DNS_POD_LABELS),
                )
            ],
            ports=[
                k8s.networking.v1.NetworkPolicyPortArgs(port=53, protocol="UDP"),
                k8s.networking.v1.NetworkPolicyPortArgs(port=53, protocol="TCP"),
            ],
        ),
    ]


def host_networks(addresses: Sequence[str]) -> list[str]:
    """Each address as a one-address network (``/32``, ``/128``)."""
    return [str(ipaddress.ip_network(address)) for address in addresses]


def anonymous_cache_sources(settings: RegistrySettings) -> list[str]:
    """Where an anonymous cache's clients arrive from, as its pod sees them: the nodes' own
    addresses, and the pod network. kube-proxy masquerades a node's connection to a
    LoadBalancer IP (its KUBE-EXT chain marks it), so the pod sees it come from that node's
    address on the pod network (flannel.1 or cni0, inside the cluster CIDR); the Service's
    source ranges, checked before that, keep everything but the nodes out."""
    return [*host_networks(settings.node_addresses), settings.cluster_cidr]


def metrics_ingress(namespace: str) -> k8s.networking.v1.NetworkPolicyIngressRuleArgs:
    return k8s.networking.v1.NetworkPolicyIngressRuleArgs(
        ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=METRICS_PORT, protocol="TCP")],
        from_=[k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": namespace})
        )],
    )


def create_metrics_service(
    name: str, settings: RegistrySettings, namespace: pulumi.Input[str], parent: pulumi.Resource
) -> k8s.core.v1.Service:
    """The metrics port inside the cluster only (ClusterIP), for the ServiceMonitor."""
    return k8s.core.v1.Service(
        f"{name}-metrics-service",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=f"{name}-metrics", namespace=namespace, labels=metrics_service_labels(name)
        ),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            selector=pod_labels(name),
            ports=[k8s.core.v1.ServicePortArgs(
                name=METRICS_PORT_NAME, port=METRICS_PORT, target_port=METRICS_PORT_NAME, protocol="TCP")],
        ),
        opts=pulumi.ResourceOptions(parent=parent, custom_timeouts=rollout_timeouts(settings)),
    )


def create_network_policy(
    name: str,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    component: str | None = None,
    egress: Sequence[k8s.networking.v1.NetworkPolicyEgressRuleArgs] = (),
    sources: Sequence[str] = (),
    metrics_from: str | None = None,
) -> k8s.networking.v1.NetworkPolicy:
    """The registry port is open to every client and node; the pod itself reaches nothing.

    The registry needs no outbound connection (filesystem storage, no notifications), so a
    compromised pod cannot reach the rest of the network. k3s enforces NetworkPolicies with
    its embedded kube-router. A cache gets ``egress`` (see cache_egress), nothing more.
    ``sources`` (an anonymous cache's, see anonymous_cache_sources): the only networks admitted.
    ``metrics_from`` (with monitoring): the namespace whose pods alone reach the metrics port.
    """
    admitted = [
        k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=cidr)) for cidr in sources
    ]
    return k8s.networking.v1.NetworkPolicy(
        f"{name}-network-policy",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=object_labels(name, component)),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pod_labels(name, component)),
            policy_types=["Ingress", "Egress"],
            ingress=[
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=CONTAINER_PORT, protocol="TCP")],
                    from_=admitted or None,  # none: every source
                ),
                *([metrics_ingress(metrics_from)] if metrics_from is not None else []),
            ],
            egress=list(egress),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def shared_ip_key(settings: RegistrySettings) -> str:
    """MetalLB's sharing key for the registry's IP, which its caches' Services share.

    On the registry's Service with or without caches: were it there only with caches, the
    `up` that removes the last one would update the registry's Service first (deletes come
    last), and MetalLB, seeing the IP still held by a cache's Service without a shared key,
    takes the address off the registry's Service; the update then waits for an address that
    comes back only after the delete (seen with MetalLB's controller, tests/test_pulumi_real.py)."""
    return f"k3s-registry-{settings.namespace}"


def create_service(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    port: int | None = None,
    component: str | None = None,
    only_from: Sequence[str] = (),
) -> k8s.core.v1.Service:
    """``port`` (a cache's) replaces the registry's port, on the same IP.

    ``only_from`` (an anonymous cache's: the nodes' addresses): the only clients of the
    LoadBalancer IP: kube-proxy drops every other source (spec.loadBalancerSourceRanges, its
    KUBE-FW chain, before the traffic is masqueraded); no node port is allocated, as a node
    port would take any client past that check."""
    # The IP is requested through MetalLB's annotation: spec.loadBalancerIP is deprecated and
    # MetalLB rejects a Service that sets both.
    annotations = {METALLB_IP_ANNOTATION: settings.load_balancer_ip,
                   METALLB_SHARED_IP_ANNOTATION: shared_ip_key(settings)}
    return k8s.core.v1.Service(
        f"{name}-service",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=namespace,
            labels=object_labels(name, component),
            annotations=annotations,
        ),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="LoadBalancer",
            load_balancer_source_ranges=host_networks(only_from) or None,
            allocate_load_balancer_node_ports=False if only_from else None,
            selector=pod_labels(name, component),
            ports=[
                k8s.core.v1.ServicePortArgs(
                    name=CONTAINER_PORT_NAME, port=port or settings.port, target_port=CONTAINER_PORT_NAME,
                    protocol="TCP",
                )
            ],
        ),
        opts=pulumi.ResourceOptions(parent=parent, custom_timeouts=rollout_timeouts(settings)),
    )
