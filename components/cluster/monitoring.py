"""The registry's health for Prometheus (``monitoring: true``): a ServiceMonitor and alerts.

The Prometheus Operator's objects (monitoring.coreos.com/v1; kube-prometheus-stack installs
their CRDs): the ServiceMonitor has Prometheus scrape the registry's metrics Service (its debug
port, network.create_metrics_service), and the PrometheusRule holds these alerts:

- RegistryVolumeNearlyFull: a claim of the registry or a cache under 10 % free for 15 minutes,
  from the kubelet's volume statistics (which a CSI volume such as Longhorn's reports; a
  hostPath volume, k3s's local-path, reports none: see the README);
- RegistryDown: no scrape of the registry succeeded for 5 minutes (also when it has no
  target at all), unless its garbage collector is running: the registry is away on purpose
  then, for as long as the collection of a large volume takes (kube-state-metrics'
  kube_pod_init_container_status_running);
- RegistryGarbageCollectionFailed (with garbageCollection on): the collector failed when the
  registry's pod started (its init container ended with an error once and ran again:
  garbage_collection.py), from kube-state-metrics' kube_pod_init_container_status_restarts_total;
  it lasts as long as that pod, until a start whose collection succeeds;
- RegistryCertificateExpiresSoon: the serving certificate is inside its renewal window, which
  only happens when no `pulumi up` ran in it. Nothing exports the certificate's expiry, so the
  rule carries it: every renewal (an `up`) rewrites the rule with the new date.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from ..settings import RegistrySettings
from .garbage_collection import CONTAINER_NAME as COLLECTOR
from .naming import METRICS_PATH, METRICS_PORT_NAME, metrics_service_labels, object_labels
from .rotation import SECONDS_PER_DAY

VOLUME_FREE_FRACTION = 0.10


def expiry_epoch(rfc3339: str) -> int:
    """A certificate's validity end (``2027-12-03T15:32:18.287709414Z``) in Unix seconds
    (fromisoformat drops the digits past microseconds)."""
    return int(dt.datetime.fromisoformat(rfc3339).timestamp())


def alert_rules(
    namespace: str, claims: Sequence[str], metrics_service: str, certificate_expires: int, renewal_days: int,
    collects: bool = True,
) -> dict[str, Any]:
    """The PrometheusRule's spec: one group, the alerts (see the module's docstring); ``collects``:
    the registry's pod has the garbage collector."""
    volume = f'namespace="{namespace}",persistentvolumeclaim=~"{"|".join(claims)}"'
    scraped = f'up{{namespace="{namespace}",service="{metrics_service}"}}'
    collector = f'namespace="{namespace}",container="{COLLECTOR}"'
    down = f"absent({scraped} == 1)"
    if collects:
        down += f" unless on() (kube_pod_init_container_status_running{{{collector}}} == 1)"
    collection_failed = [{
        "alert": "RegistryGarbageCollectionFailed",
        "expr": f"kube_pod_init_container_status_restarts_total{{{collector}}} > 0",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "The registry's garbage collector failed when pod {{ $labels.pod }} started.",
            "description": f"The registry serves, uncollected: no space was freed. kubectl -n {namespace} logs "
                           f"{{{{ $labels.pod }}}} -c {COLLECTOR} --previous says why (most often a manifest it "
                           "cannot read). The alert ends with the next start whose collection succeeds.",
        },
    }] if collects else []
    return {"groups": [{"name": "k3s-registry", "rules": [
        {
            "alert": "RegistryVolumeNearlyFull",
            "expr": f"kubelet_volume_stats_available_bytes{{{volume}}}"
                    f" / kubelet_volume_stats_capacity_bytes{{{volume}}} < {VOLUME_FREE_FRACTION}",
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The registry's claim {{ $labels.persistentvolumeclaim }} is over 90% full.",
                "description": "Pushes fail with a 500 once it is full. Delete old tags and let garbage "
                               "collection free their layers, or grow the claim (README: Growing the volume).",
            },
        },
        {
            "alert": "RegistryDown",
            "expr": down,
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"The registry in {namespace} has not answered Prometheus for 5 minutes.",
                "description": f"Nodes cannot pull from it. kubectl -n {namespace} describe pod says why.",
            },
        },
        {
            "alert": "RegistryCertificateExpiresSoon",
            "expr": f"vector({certificate_expires} - time()) < {renewal_days * SECONDS_PER_DAY}",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"The registry's serving certificate expires in under {renewal_days} days.",
                "description": "Run `pulumi up` on the registry's stack: it renews the certificate in this "
                               "window, and every node trusts the new one through the same CA.",
            },
        },
        *collection_failed,
    ]}]}


def create_monitoring(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    metrics_service: k8s.core.v1.Service,
    claims: Sequence[pulumi.Input[str]],
    certificate_expires: pulumi.Input[str],
    parent: pulumi.Resource,
) -> list[pulumi.Resource]:
    labels = {**object_labels(name), **dict(settings.monitoring.labels)}
    monitor = k8s.apiextensions.CustomResource(
        f"{name}-service-monitor",
        api_version="monitoring.coreos.com/v1",
        kind="ServiceMonitor",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels),
        spec={
            "selector": {"matchLabels": metrics_service_labels(name)},
            "namespaceSelector": {"matchNames": [settings.namespace]},
            "endpoints": [{"port": METRICS_PORT_NAME, "path": METRICS_PATH, "scheme": "http", "interval": "30s"}],
        },
        opts=pulumi.ResourceOptions(parent=parent),
    )
    spec = pulumi.Output.all(metrics_service.metadata.name, certificate_expires, *claims).apply(
        lambda values: alert_rules(
            settings.namespace, values[2:], values[0], expiry_epoch(values[1]), settings.certificate.renewal_days,
            collects=settings.garbage_collection.enabled,
        )
    )
    rule = k8s.apiextensions.CustomResource(
        f"{name}-alerts",
        api_version="monitoring.coreos.com/v1",
        kind="PrometheusRule",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels),
        spec=spec,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return [monitor, rule]
