"""The registry's Deployment (and each pull-through cache's): the pod, its volumes, its probes.

Each builder takes settings plus the Outputs of what it refers to, so references are wired
(``claimName=claim.metadata.name``) rather than retyped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from ..settings import MirrorSettings, RegistrySettings
from .naming import (
    AUTH_MOUNT_PATH,
    CERTIFICATE_HASH_ANNOTATION,
    CERTS_MOUNT_PATH,
    CONTAINER_PORT,
    CONTAINER_PORT_NAME,
    DATA_MOUNT_PATH,
    HTPASSWD_FILE,
    METRICS_PATH,
    METRICS_PORT,
    METRICS_PORT_NAME,
    RUN_AS_ID,
    TMP_MOUNT_PATH,
    UPSTREAM_PASSWORD_KEY,
    UPSTREAM_USERNAME_KEY,
    object_labels,
    pod_labels,
    scanner_exceptions,
)
from .rollout import DEPLOYMENT_READY, WAIT_FOR_ANNOTATION, rollout_timeouts

STORAGE_DELETE = k8s.core.v1.EnvVarArgs(name="REGISTRY_STORAGE_DELETE_ENABLED", value="true")


def delete_environment(enabled: bool) -> list[k8s.core.v1.EnvVarArgs]:
    """distribution's ``storage.delete.enabled``: with it, ``DELETE /v2/<name>/manifests/<digest>``
    (with the credentials) removes a manifest; without it the registry answers 405 UNSUPPORTED.
    A deleted image's blobs stay on the volume until a garbage collection. Said either way: the
    registry:3 image's own config.yml turns deletes on."""
    return [STORAGE_DELETE if enabled else
            k8s.core.v1.EnvVarArgs(name="REGISTRY_STORAGE_DELETE_ENABLED", value="false")]


def image_config_environment(metrics: bool) -> list[k8s.core.v1.EnvVarArgs]:
    """What the registry:3 image's own configuration (/etc/distribution/config.yml, the
    config-example.yml of distribution-library-image) sets and a pod of ours must not keep: its
    debug server with metrics on :5001 on every address of the pod, unless ``metrics`` (then
    metrics_environment sets it: an empty address starts none, registry/registry.go
    configureDebugServer); its ``debug`` log level; and, from its Dockerfile's ENV, traces
    exported nowhere (OTEL_TRACES_EXPORTER=none; distribution 3 otherwise sends them to
    localhost:4318), said here so that it holds for any build of the image."""
    values = {
        **({} if metrics else {"REGISTRY_HTTP_DEBUG_ADDR": ""}),
        "REGISTRY_LOG_LEVEL": "info",
        "OTEL_TRACES_EXPORTER": "none",
    }
    return [k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in values.items()]


def proxy_environment(
    mirror: MirrorSettings, upstream_secret_name: pulumi.Input[str] | None
) -> list[k8s.core.v1.EnvVarArgs]:
    """distribution's proxy mode: a read-only pull-through cache of ``mirror.url``.

    Expiry is a delete: when an entry's ttl runs out, distribution's scheduler deletes the blob or
    manifest through the local store (registry/proxy/proxyregistry.go, OnBlobExpire and
    OnManifestExpire), which refuses unless ``storage.delete.enabled`` (linkedBlobStore.Delete:
    ErrUnsupported); the scheduler then drops the entry anyway, so without it nothing ever leaves
    the volume. Clients still cannot delete from a cache: the proxy stores refuse every Delete.
    """
    env = [
        k8s.core.v1.EnvVarArgs(name="REGISTRY_PROXY_REMOTEURL", value=mirror.url),
        STORAGE_DELETE,
    ]
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



def certificate_fingerprint(certificate_pem: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.from_input(certificate_pem).apply(
        lambda pem: hashlib.sha256(pem.encode()).hexdigest()
    )


def registry_environment(settings: RegistrySettings, authenticated: bool) -> list[k8s.core.v1.EnvVarArgs]:
    values = {
        "REGISTRY_HTTP_ADDR": f":{CONTAINER_PORT}",
        "REGISTRY_HTTP_TLS_CERTIFICATE": f"{CERTS_MOUNT_PATH}/tls.crt",
        "REGISTRY_HTTP_TLS_KEY": f"{CERTS_MOUNT_PATH}/tls.key",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": DATA_MOUNT_PATH,
    }
    if authenticated:
        values |= {
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": f"{settings.hostname} registry",
            "REGISTRY_AUTH_HTPASSWD_PATH": f"{AUTH_MOUNT_PATH}/{HTPASSWD_FILE}",
        }
    return [k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in values.items()]


def metrics_environment() -> list[k8s.core.v1.EnvVarArgs]:
    """distribution's debug server with Prometheus metrics (configuration.go, http.debug), on
    its own port: never on the TLS port, which answers /metrics with 404."""
    values = {
        "REGISTRY_HTTP_DEBUG_ADDR": f":{METRICS_PORT}",
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH": METRICS_PATH,
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


def container_security_context() -> k8s.core.v1.SecurityContextArgs:
    """The restricted Pod Security profile and more: non-root RUN_AS_ID, read-only root, no capability."""
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
    htpasswd_secret_name: pulumi.Input[str] | None = None,
    data_sub_path: str | None = None,
    component: str | None = None,
    extra_env: Sequence[k8s.core.v1.EnvVarArgs] = (),
    extra_scanner_exceptions: Sequence[str] = (),
    metrics: bool = False,
    init_containers: Sequence[k8s.core.v1.ContainerArgs] = (),
    init_volumes: Sequence[k8s.core.v1.VolumeArgs] = (),
) -> k8s.apps.v1.Deployment:
    """``htpasswd_secret_name`` is given exactly when clients must log in (auth on, and not an
    anonymous cache); ``data_sub_path``
    is the directory of the claim that holds the storage root (the whole claim by default).
    A cache is the same Deployment with its own name, ``component`` and proxy ``extra_env``.
    ``metrics``: the debug server with Prometheus metrics on METRICS_PORT. ``init_containers``
    run to their end, in order, before the registry starts (garbage_collection.py); ``init_volumes``
    are the volumes of their own."""
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
        ports=[
            k8s.core.v1.ContainerPortArgs(name=CONTAINER_PORT_NAME, container_port=CONTAINER_PORT, protocol="TCP"),
            *([k8s.core.v1.ContainerPortArgs(name=METRICS_PORT_NAME, container_port=METRICS_PORT, protocol="TCP")]
              if metrics else []),
        ],
        env=[
            *registry_environment(settings, authenticated=htpasswd_secret_name is not None),
            *image_config_environment(metrics),
            *(metrics_environment() if metrics else []),
            *extra_env,
        ],
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
        security_context=container_security_context(),
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
        init_containers=list(init_containers) or None,
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
            *init_volumes,
        ],
    )
    return k8s.apps.v1.Deployment(
        f"{name}-deployment",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=name, namespace=namespace, labels=object_labels(name, component),
            annotations={
                **scanner_exceptions(settings, extra_scanner_exceptions),
                WAIT_FOR_ANNOTATION: DEPLOYMENT_READY,
            },
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
        opts=pulumi.ResourceOptions(parent=parent, custom_timeouts=rollout_timeouts(settings)),
    )


