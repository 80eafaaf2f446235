"""Who reaches the registry and what it reaches: its NetworkPolicy and its LoadBalancer Service."""

from __future__ import annotations

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
    object_labels,
    pod_labels,
    upstream_port,
)


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


def create_network_policy(
    name: str,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    component: str | None = None,
    egress: Sequence[k8s.networking.v1.NetworkPolicyEgressRuleArgs] = (),
) -> k8s.networking.v1.NetworkPolicy:
    """The registry port is open to every client and node; the pod itself reaches nothing.

    The registry needs no outbound connection (filesystem storage, no notifications), so a
    compromised pod cannot reach the rest of the network. k3s enforces NetworkPolicies with
    its embedded kube-router. A cache gets ``egress`` (see cache_egress), nothing more.
    """
    return k8s.networking.v1.NetworkPolicy(
        f"{name}-network-policy",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=object_labels(name, component)),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pod_labels(name, component)),
            policy_types=["Ingress", "Egress"],
            ingress=[
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=CONTAINER_PORT, protocol="TCP")]
                )
            ],
            egress=list(egress),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def shared_ip_key(settings: RegistrySettings) -> str | None:
    """MetalLB's sharing key for the registry's IP, when caches share it (else no annotation)."""
    return f"k3s-registry-{settings.namespace}" if settings.mirrors else None


def create_service(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    port: int | None = None,
    component: str | None = None,
) -> k8s.core.v1.Service:
    """``port`` (a cache's) replaces the registry's port, on the same IP."""
    # The IP is requested through MetalLB's annotation: spec.loadBalancerIP is deprecated and
    # MetalLB rejects a Service that sets both.
    annotations = {METALLB_IP_ANNOTATION: settings.load_balancer_ip}
    key = shared_ip_key(settings)
    if key is not None:
        annotations[METALLB_SHARED_IP_ANNOTATION] = key
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
            selector=pod_labels(name, component),
            ports=[
                k8s.core.v1.ServicePortArgs(
                    name=CONTAINER_PORT_NAME, port=port or settings.port, target_port=CONTAINER_PORT_NAME,
                    protocol="TCP",
                )
            ],
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
