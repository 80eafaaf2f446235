"""What the registry's Kubernetes objects share: names, labels, annotations, paths, and the
manifest scanner's reviewed exceptions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..settings import MirrorSettings, RegistrySettings

# The namespace admits only pods that meet the Kubernetes "restricted" Pod Security Standard.
POD_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
}

CONTAINER_PORT = 5000
CONTAINER_PORT_NAME = "https"
# distribution's debug server (http.debug): Prometheus metrics at METRICS_PATH, and expvar and
# pprof beside them, so only the monitoring namespace may reach it (see network.py).
METRICS_PORT = 5001
METRICS_PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
# What the ServiceMonitor selects the metrics Service by (the registry's Service has not got it).
METRICS_SERVICE_LABEL = {"k3s-registry.dev/metrics": "true"}
CERTS_MOUNT_PATH = "/certs"
DATA_MOUNT_PATH = "/var/lib/registry"
TMP_MOUNT_PATH = "/tmp"
AUTH_MOUNT_PATH = "/auth"
HTPASSWD_FILE = "htpasswd"
# registry:2 has no USER; any fixed non-root id works because the volumes get fsGroup. A
# high one cannot collide with a user of the node.
RUN_AS_ID = 10001
# The manual guide mounted its claim with ``subPath: registry`` at /var/lib/registry, the
# registry:2 image's default storage root: its images sit under ``registry/docker/registry/v2``
# in the claim. Mounting the same sub-directory at our storage root finds them unchanged.
GUIDE_CLAIM_SUB_PATH = "registry"
METALLB_IP_ANNOTATION = "metallb.universe.tf/loadBalancerIPs"
# MetalLB gives one IP to several Services only when each carries this annotation with the
# same key (and their ports differ): the registry and its caches share the registry's IP.
METALLB_SHARED_IP_ANNOTATION = "metallb.universe.tf/allow-shared-ip"
CACHE_COMPONENT = "pull-through-cache"
UPSTREAM_USERNAME_KEY = "username"
UPSTREAM_PASSWORD_KEY = "password"
# k3s's CoreDNS: pods labelled k8s-app=kube-dns in kube-system (k3s manifests/coredns.yaml).
CLUSTER_DNS_NAMESPACE = "kube-system"
CLUSTER_DNS_POD_LABELS = {"k8s-app": "kube-dns"}
CERTIFICATE_HASH_ANNOTATION = "k3s-registry.dev/certificate-sha256"


# On a cache with upstream credentials only.
UPSTREAM_CREDENTIALS_EXCEPTION = (
    "CKV_K8S_35=distribution takes its upstream credentials only from its config file or the"
    " environment (REGISTRY_PROXY_USERNAME/PASSWORD), never from a file of their own; the environment"
    " gets them from a Secret through secretKeyRef, so they are never in the pod spec"
)


def scanner_exceptions(settings: RegistrySettings, extra: Sequence[str] = ()) -> dict[str, str]:
    """checkov findings that do not fit this program, each with its reason, on the Deployment.

    tests/test_manifest_scan.py runs checkov over every manifest and fails on any other finding.
    """
    reasons = [
        # An edge cluster must be able to restart its registry during an internet outage.
        ("CKV_K8S_15=IfNotPresent on purpose: the registry pod must restart without internet access;"
        " the image is pinned (a tag by default, or a digest via the image setting)"),
    ]
    if "@sha256:" not in settings.image:
        reasons.insert(0, "CKV_K8S_43=the image is the pinned tag from the image setting;"
                          " set image to name:tag@sha256:<digest> to pin a digest")
    reasons += extra
    return {f"checkov.io/skip{number}": reason for number, reason in enumerate(reasons, start=1)}


def pod_labels(name: str, component: str | None = None) -> dict[str, str]:
    """A cache's ``name`` is its own (``<registry>-cache-<slug>``): no selector of the
    registry's, which matches on ``instance``, ever picks a cache's pods up, nor the reverse."""
    labels = {"app.kubernetes.io/name": "registry", "app.kubernetes.io/instance": name}
    if component is not None:
        labels["app.kubernetes.io/component"] = component
    return labels


def job_pod_labels(name: str, component: str) -> dict[str, str]:
    """A CronJob's pods (retention, maintenance): an instance of their own (``<registry>-<component>``),
    so that neither the registry's Service nor its NetworkPolicy, which select on the registry's
    ``instance``, ever take a job's pod for the registry."""
    return pod_labels(f"{name}-{component}", component)


def object_labels(name: str, component: str | None = None) -> dict[str, str]:
    return {**pod_labels(name, component), "app.kubernetes.io/managed-by": "pulumi"}


def metrics_service_labels(name: str) -> dict[str, str]:
    """The metrics Service's labels, which the ServiceMonitor selects it by."""
    return {**object_labels(name), **METRICS_SERVICE_LABEL}


def cache_name(name: str, mirror: MirrorSettings) -> str:
    """``<registry>-cache-<slug>``, shortened with a hash to fit a Service name (63 characters)."""
    full = f"{name}-cache-{mirror.slug}"
    if len(full) <= 63:
        return full
    return f"{full[:54].rstrip('-')}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def upstream_port(mirror: MirrorSettings) -> int:
    """The TCP port of the upstream's https URL (443 unless the URL names one)."""
    return urlsplit(mirror.url).port or 443

