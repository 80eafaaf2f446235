"""The registry's Kubernetes objects: namespace, TLS Secret, volume claim, Deployment, Service.

Each builder takes settings plus the Outputs of what it refers to, so references are wired
(``claimName=claim.metadata.name``) rather than retyped.

With ``existingClaim`` (a cluster set up by the manual guide) two objects are not ours: the
claim, which holds the images, is only mounted; and the namespace, which the claim lives in,
is only labelled (a NamespacePatch), so that ``pulumi destroy`` can never delete the
namespace and, with it, the claim and its data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional
from urllib.parse import urlsplit

import pulumi
import pulumi_kubernetes as k8s

from .config import MirrorSettings, RegistrySettings

# The namespace admits only pods that meet the Kubernetes "restricted" Pod Security Standard.
POD_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
}

CONTAINER_PORT = 5000
CONTAINER_PORT_NAME = "https"
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
        "CKV_K8S_15=IfNotPresent on purpose: the registry pod must restart without internet access;"
        " the image is pinned (a tag by default, or a digest via the image setting)",
    ]
    if "@sha256:" not in settings.image:
        reasons.insert(0, "CKV_K8S_43=the image is the pinned tag from the image setting;"
                          " set image to name:tag@sha256:<digest> to pin a digest")
    reasons += extra
    return {f"checkov.io/skip{number}": reason for number, reason in enumerate(reasons, start=1)}


def pod_labels(name: str, component: Optional[str] = None) -> dict[str, str]:
    """A cache's ``name`` is its own (``<registry>-cache-<slug>``): no selector of the
    registry's, which matches on ``instance``, ever picks a cache's pods up, nor the reverse."""
    labels = {"app.kubernetes.io/name": "registry", "app.kubernetes.io/instance": name}
    if component is not None:
        labels["app.kubernetes.io/component"] = component
    return labels


def object_labels(name: str, component: Optional[str] = None) -> dict[str, str]:
    return {**pod_labels(name, component), "app.kubernetes.io/managed-by": "pulumi"}


def cache_name(name: str, mirror: MirrorSettings) -> str:
    """``<registry>-cache-<slug>``, shortened with a hash to fit a Service name (63 characters)."""
    full = f"{name}-cache-{mirror.slug}"
    if len(full) <= 63:
        return full
    return f"{full[:54].rstrip('-')}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def upstream_port(mirror: MirrorSettings) -> int:
    """The TCP port of the upstream's https URL (443 unless the URL names one)."""
    return urlsplit(mirror.url).port or 443


def create_namespace(
    name: str, settings: RegistrySettings, parent: pulumi.Resource
) -> k8s.core.v1.Namespace | k8s.core.v1.NamespacePatch:
    """Our namespace, or, with an existing claim, our labels on the namespace that holds it.

    A claim lives in a namespace, so with ``existingClaim`` the namespace exists already (the
    guide made it with kubectl). pulumi-kubernetes 4.29+ refuses to create an object that
    exists (AlreadyExists); and a Namespace resource that had adopted it would delete it on
    ``destroy``, and every object in it, the claim and its images included. A NamespacePatch
    applies only our labels (server-side apply) and on delete gives them up, nothing more.
    """
    labels = {**object_labels(name), **POD_SECURITY_LABELS}
    if settings.existing_claim is not None:
        return k8s.core.v1.NamespacePatch(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaPatchArgs(name=settings.namespace, labels=labels),
            opts=pulumi.ResourceOptions(parent=parent),
        )
    return k8s.core.v1.Namespace(
        f"{name}-namespace",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=settings.namespace, labels=labels),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def create_tls_secret(
    name: str,
    namespace: pulumi.Input[str],
    certificate_pem: pulumi.Input[str],
    private_key_pem: pulumi.Input[str],
    parent: pulumi.Resource,
) -> k8s.core.v1.Secret:
    # No fixed metadata.name: a new certificate replaces the Secret under a new name, which
    # the Deployment then references, so there is never a moment with a half-updated Secret.
    return k8s.core.v1.Secret(
        f"{name}-tls",
        metadata=k8s.meta.v1.ObjectMetaArgs(namespace=namespace, labels=object_labels(name)),
        type="kubernetes.io/tls",
        string_data={
            "tls.crt": certificate_pem,
            "tls.key": pulumi.Output.secret(private_key_pem),
        },
        opts=pulumi.ResourceOptions(parent=parent),
    )


def create_htpasswd_secret(
    name: str, namespace: pulumi.Input[str], htpasswd: pulumi.Input[str], parent: pulumi.Resource
) -> k8s.core.v1.Secret:
    """The registry's user list: one user with a bcrypt hash (htpasswd format)."""
    return k8s.core.v1.Secret(
        f"{name}-htpasswd",
        metadata=k8s.meta.v1.ObjectMetaArgs(namespace=namespace, labels=object_labels(name)),
        type="Opaque",
        string_data={HTPASSWD_FILE: pulumi.Output.secret(htpasswd)},
        opts=pulumi.ResourceOptions(parent=parent),
    )


def create_upstream_secret(
    name: str, mirror: MirrorSettings, namespace: pulumi.Input[str], parent: pulumi.Resource
) -> k8s.core.v1.Secret:
    """A cache's credentials for its upstream; the pod gets them only through secretKeyRefs.

    Auto-named: pulumi-kubernetes replaces a Secret whose data changes, so new credentials
    come under a new name, which changes the pod template and restarts the cache with them.
    """
    assert mirror.username is not None and mirror.password is not None
    return k8s.core.v1.Secret(
        f"{name}-upstream",
        metadata=k8s.meta.v1.ObjectMetaArgs(namespace=namespace, labels=object_labels(name, CACHE_COMPONENT)),
        type="Opaque",
        string_data={
            UPSTREAM_USERNAME_KEY: mirror.username,
            UPSTREAM_PASSWORD_KEY: pulumi.Output.secret(mirror.password.value),
        },
        opts=pulumi.ResourceOptions(parent=parent),
    )


def proxy_environment(
    mirror: MirrorSettings, upstream_secret_name: Optional[pulumi.Input[str]]
) -> list[k8s.core.v1.EnvVarArgs]:
    """distribution's proxy mode: a read-only pull-through cache of ``mirror.url``."""
    env = [k8s.core.v1.EnvVarArgs(name="REGISTRY_PROXY_REMOTEURL", value=mirror.url)]
    if upstream_secret_name is not None:
        env += [
            k8s.core.v1.EnvVarArgs(
                name=f"REGISTRY_PROXY_{key.upper()}",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=upstream_secret_name, key=key)
                ),
            )
            for key in (UPSTREAM_USERNAME_KEY, UPSTREAM_PASSWORD_KEY)
        ]
    if mirror.ttl is not None:
        env.append(k8s.core.v1.EnvVarArgs(name="REGISTRY_PROXY_TTL", value=mirror.ttl))
    return env


def create_storage_claim(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    storage_size: Optional[str] = None,
    component: Optional[str] = None,
) -> k8s.core.v1.PersistentVolumeClaim:
    """``storage_size`` (a cache's) overrides the registry's."""
    return k8s.core.v1.PersistentVolumeClaim(
        f"{name}-data",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=f"{name}-data", namespace=namespace, labels=object_labels(name, component)
        ),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=settings.storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(
                requests={"storage": storage_size or settings.storage_size}
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def certificate_fingerprint(certificate_pem: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.from_input(certificate_pem).apply(
        lambda pem: hashlib.sha256(pem.encode()).hexdigest()
    )


def registry_environment(settings: RegistrySettings) -> list[k8s.core.v1.EnvVarArgs]:
    values = {
        "REGISTRY_HTTP_ADDR": f":{CONTAINER_PORT}",
        "REGISTRY_HTTP_TLS_CERTIFICATE": f"{CERTS_MOUNT_PATH}/tls.crt",
        "REGISTRY_HTTP_TLS_KEY": f"{CERTS_MOUNT_PATH}/tls.key",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": DATA_MOUNT_PATH,
    }
    if settings.auth.enabled:
        values |= {
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": f"{settings.hostname} registry",
            "REGISTRY_AUTH_HTPASSWD_PATH": f"{AUTH_MOUNT_PATH}/{HTPASSWD_FILE}",
        }
    return [k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in values.items()]


def _https_probe(initial_delay: int, period: int) -> k8s.core.v1.ProbeArgs:
    # "/" answers 200 with or without authentication; "/v2/" would answer 401 once auth is on.
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path="/", port=CONTAINER_PORT_NAME, scheme="HTTPS"),
        initial_delay_seconds=initial_delay,
        period_seconds=period,
        timeout_seconds=3,
        failure_threshold=3,
    )


def _container_security_context() -> k8s.core.v1.SecurityContextArgs:
    return k8s.core.v1.SecurityContextArgs(
        run_as_non_root=True,
        run_as_user=RUN_AS_ID,
        run_as_group=RUN_AS_ID,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def create_deployment(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    secret_name: pulumi.Input[str],
    claim_name: pulumi.Input[str],
    certificate_pem: pulumi.Input[str],
    parent: pulumi.Resource,
    htpasswd_secret_name: Optional[pulumi.Input[str]] = None,
    data_sub_path: Optional[str] = None,
    component: Optional[str] = None,
    extra_env: Sequence[k8s.core.v1.EnvVarArgs] = (),
    extra_scanner_exceptions: Sequence[str] = (),
) -> k8s.apps.v1.Deployment:
    """``htpasswd_secret_name`` is given exactly when authentication is on; ``data_sub_path``
    is the directory of the claim that holds the storage root (the whole claim by default).
    A cache is the same Deployment with its own name, ``component`` and proxy ``extra_env``."""
    labels = pod_labels(name, component)
    auth_mounts, auth_volumes = [], []
    if htpasswd_secret_name is not None:
        auth_mounts = [k8s.core.v1.VolumeMountArgs(name="auth", mount_path=AUTH_MOUNT_PATH, read_only=True)]
        auth_volumes = [
            k8s.core.v1.VolumeArgs(
                name="auth",
                secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=htpasswd_secret_name, default_mode=0o440),
            )
        ]
    container = k8s.core.v1.ContainerArgs(
        name="registry",
        image=settings.image,
        image_pull_policy="IfNotPresent",
        ports=[k8s.core.v1.ContainerPortArgs(name=CONTAINER_PORT_NAME, container_port=CONTAINER_PORT, protocol="TCP")],
        env=[*registry_environment(settings), *extra_env],
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="certs", mount_path=CERTS_MOUNT_PATH, read_only=True),
            k8s.core.v1.VolumeMountArgs(name="data", mount_path=DATA_MOUNT_PATH, sub_path=data_sub_path),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=TMP_MOUNT_PATH),
            *auth_mounts,
        ],
        readiness_probe=_https_probe(initial_delay=2, period=10),
        liveness_probe=_https_probe(initial_delay=10, period=20),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "64Mi"},
            limits={"cpu": "1", "memory": "512Mi"},
        ),
        security_context=_container_security_context(),
    )
    pod_spec = k8s.core.v1.PodSpecArgs(
        node_selector=dict(settings.node_selector) or None,
        automount_service_account_token=False,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True,
            run_as_user=RUN_AS_ID,
            run_as_group=RUN_AS_ID,
            # The kubelet gives the volume's files this group, group read/write and setgid
            # directories, once, when the volume's root is not already so (OnRootMismatch):
            # also the guide's images, written as root:root by its root registry.
            fs_group=RUN_AS_ID,
            fs_group_change_policy="OnRootMismatch",
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        containers=[container],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="certs",
                secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=secret_name, default_mode=0o440),
            ),
            k8s.core.v1.VolumeArgs(
                name="data",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(claim_name=claim_name),
            ),
            k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="64Mi")),
            *auth_volumes,
        ],
    )
    return k8s.apps.v1.Deployment(
        f"{name}-deployment",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=name, namespace=namespace, labels=object_labels(name, component),
            annotations=scanner_exceptions(settings, extra_scanner_exceptions),
        ),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            # RollingUpdate would start the new pod while the old one still holds the
            # ReadWriteOnce volume: on another node it stalls on a Multi-Attach error.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
            revision_history_limit=3,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels=labels,
                    annotations={CERTIFICATE_HASH_ANNOTATION: certificate_fingerprint(certificate_pem)},
                ),
                spec=pod_spec,
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
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
    component: Optional[str] = None,
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


def shared_ip_key(settings: RegistrySettings) -> Optional[str]:
    """MetalLB's sharing key for the registry's IP, when caches share it (else no annotation)."""
    return f"k3s-registry-{settings.namespace}" if settings.mirrors else None


def create_service(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    port: Optional[int] = None,
    component: Optional[str] = None,
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
