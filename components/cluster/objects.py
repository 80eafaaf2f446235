"""The registry's namespace, Secrets and volume claim.

With ``existingClaim`` (a cluster set up by the manual guide) two objects are not ours: the
claim, which holds the images, is only mounted; and the namespace, which the claim lives in,
is only labelled (a NamespacePatch), so that ``pulumi destroy`` can never delete the
namespace and, with it, the claim and its data.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from ..settings import MirrorSettings, RegistrySettings
from . import claim_size
from .naming import (
    CACHE_COMPONENT,
    HTPASSWD_FILE,
    POD_SECURITY_LABELS,
    UPSTREAM_PASSWORD_KEY,
    UPSTREAM_USERNAME_KEY,
    object_labels,
)


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


def create_storage_claim(
    name: str,
    settings: RegistrySettings,
    namespace: pulumi.Input[str],
    parent: pulumi.Resource,
    storage_size: str | None = None,
    component: str | None = None,
    size_setting: str = "storageSize",
) -> k8s.core.v1.PersistentVolumeClaim:
    """``storage_size`` (a cache's) overrides the registry's; ``size_setting`` is the config key
    it comes from, which claim_size's hooks name when the cluster cannot resize the claim."""
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
        opts=pulumi.ResourceOptions(parent=parent, hooks=claim_size.size_hooks(f"{name}-data", size_setting)),
    )


