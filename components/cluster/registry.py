"""The cluster side: a private registry served over TLS, as one component."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from ..settings import RETENTION_USERNAME, MirrorSettings, RegistrySettings
from . import deployment, garbage_collection, maintenance, monitoring, naming, network, objects, retention
from .certificates import create_registry_certificates

PASSWORD_LENGTH = 32


def htpasswd_lines(users: list[str], bcrypt_hashes: list[str]) -> str:
    """The htpasswd file distribution reads: ``user:hash``, a line each."""
    return "".join(f"{user}:{bcrypt_hash}\n" for user, bcrypt_hash in zip(users, bcrypt_hashes, strict=True))


class Registry(pulumi.ComponentResource):
    """A TLS registry on the cluster: certificates, Secrets, volume, Deployment and Service.

    With ``existing_claim`` set, the volume is that claim (not declared, only mounted) and the
    namespace that holds it is labelled, not owned (see objects.create_namespace).
    """

    address: pulumi.Output[str]
    """``hostname:port``, the name images are tagged and pulled with."""

    trust_anchor_pem: pulumi.Output[str]
    """The CA certificate clients and nodes trust (public)."""

    namespace: pulumi.Output[str]
    """The namespace holding every object of the registry."""

    load_balancer_ip: pulumi.Output[str]
    """The address MetalLB is asked to give the Service."""

    username: pulumi.Output[str] | None
    """The registry user, when authentication is on."""

    password: pulumi.Output[str] | None
    """The registry user's generated password (secret), when authentication is on."""

    mirrors: pulumi.Output[dict[str, str]]
    """upstream -> ``hostname:port`` of its pull-through cache (empty without caches)."""

    serving_certificate_expires: pulumi.Output[str]
    """When the serving certificate expires (RFC 3339): an `up` before then renews it."""

    def __init__(self, name: str, args: RegistrySettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("k3s-registry:index:Registry", name, None, opts)
        settings = args

        namespace = objects.create_namespace(name, settings, parent=self)
        namespace_name = namespace.metadata.name
        certificates = create_registry_certificates(name, settings.certificate, parent=self)
        tls_secret = objects.create_tls_secret(
            name, namespace_name, certificates.certificate_pem, certificates.private_key_pem, parent=self
        )
        htpasswd_secret_name = None
        self.username = self.password = None
        retention_password: pulumi.Output[str] | None = None
        if settings.auth.enabled:
            password = self._password(f"{name}-password")
            self.username = pulumi.Output.from_input(settings.auth.username)
            self.password = pulumi.Output.secret(password.result)
            users = [(settings.auth.username, password)]
            if settings.retention is not None:
                # The retention job's own user (see retention.py).
                job_password = self._password(f"{name}-{retention.COMPONENT}-password")
                retention_password = pulumi.Output.secret(job_password.result)
                users.append((RETENTION_USERNAME, job_password))
            names = [user for user, _ in users]
            htpasswd = pulumi.Output.secret(pulumi.Output.all(  # type: ignore[arg-type]  # SDK typing
                *[user_password.bcrypt_hash for _, user_password in users]
            )).apply(lambda hashes: htpasswd_lines(names, hashes))
            htpasswd_secret_name = objects.create_htpasswd_secret(
                name, namespace_name, htpasswd, parent=self
            ).metadata.name
        claim_name: pulumi.Input[str]
        if settings.existing_claim is None:
            claim_name = objects.create_storage_claim(name, settings, namespace_name, parent=self).metadata.name
            data_sub_path = None
        else:
            # Mounted, never declared: the program cannot delete or resize it, and `destroy`
            # leaves it with its images. Where the guide's registry kept them: see
            # naming.GUIDE_CLAIM_SUB_PATH; fsGroup gives our non-root registry their files.
            claim_name = settings.existing_claim
            data_sub_path = naming.GUIDE_CLAIM_SUB_PATH
        self.deployment = deployment.create_deployment(
            name,
            settings,
            namespace=namespace_name,
            secret_name=tls_secret.metadata.name,
            claim_name=claim_name,
            certificate_pem=certificates.certificate_pem,
            htpasswd_secret_name=htpasswd_secret_name,
            parent=self,
            data_sub_path=data_sub_path,
            extra_env=deployment.delete_environment(settings.delete_enabled),
            metrics=settings.monitoring.enabled,
            init_containers=[garbage_collection.garbage_collect_container(settings, data_sub_path)]
            if settings.garbage_collection.enabled else [],
            init_volumes=[garbage_collection.state_volume()] if settings.garbage_collection.enabled else [],
        )
        if settings.garbage_collection.enabled:
            maintenance.create_maintenance(
                name, settings, settings.garbage_collection, namespace_name, self.deployment.metadata.name, parent=self
            )
        self.service = network.create_service(name, settings, namespace_name, parent=self)
        # k3s on the nodes restarts only once these are in place: a restart takes a server's
        # API away while pulumi-kubernetes creates and awaits them.
        self.workloads: list[pulumi.Resource] = [self.deployment, self.service]
        network.create_network_policy(
            name, namespace_name, parent=self,
            metrics_from=settings.monitoring.namespace if settings.monitoring.enabled else None,
        )
        claim_names = [claim_name]
        for index, mirror in enumerate(settings.mirrors):
            cache_workloads, cache_claim = self._create_cache(
                name, settings, mirror, f"mirrors[{index}]", namespace_name, tls_secret.metadata.name,
                certificates.certificate_pem, htpasswd_secret_name,
            )
            self.workloads += cache_workloads
            claim_names.append(cache_claim)
        if settings.retention is not None:
            retention.create_retention(
                name, settings, settings.retention, namespace_name, certificates.trust_anchor_pem,
                retention_password, parent=self,
            )
        if settings.monitoring.enabled:
            metrics_service = network.create_metrics_service(name, settings, namespace_name, parent=self)
            monitoring.create_monitoring(
                name, settings, namespace_name, metrics_service, claim_names,
                certificates.serving_certificate.validity_end_time, parent=self,
            )

        self.address = pulumi.Output.from_input(settings.address)
        self.trust_anchor_pem = certificates.trust_anchor_pem
        self.serving_certificate_expires = certificates.serving_certificate.validity_end_time
        self.namespace = namespace_name
        self.load_balancer_ip = pulumi.Output.from_input(settings.load_balancer_ip)
        self.mirrors = pulumi.Output.from_input(
            {mirror.upstream: settings.mirror_address(mirror) for mirror in settings.mirrors}
        )
        self.register_outputs(
            {
                "address": self.address,
                "trustAnchorPem": self.trust_anchor_pem,
                "namespace": self.namespace,
                "loadBalancerIp": self.load_balancer_ip,
                "username": self.username,
                "password": self.password,
                "mirrors": self.mirrors,
                "servingCertificateExpires": self.serving_certificate_expires,
            }
        )

    def _password(self, resource_name: str) -> random.RandomPassword:
        return random.RandomPassword(
            resource_name, length=PASSWORD_LENGTH, special=False, opts=pulumi.ResourceOptions(parent=self)
        )

    def _create_cache(
        self,
        name: str,
        settings: RegistrySettings,
        mirror: MirrorSettings,
        mirror_key: str,
        namespace: pulumi.Input[str],
        tls_secret_name: pulumi.Input[str],
        certificate_pem: pulumi.Input[str],
        htpasswd_secret_name: pulumi.Input[str] | None,
    ) -> tuple[list[pulumi.Resource], pulumi.Output[str]]:
        """A pull-through cache of one upstream (distribution's proxy mode takes one each): the
        registry's Deployment with its own name, volume and proxy settings, the same TLS and
        htpasswd Secrets (an anonymous cache: no htpasswd), on its own port of the registry's IP.
        ``mirror_key`` is its entry's config key (``mirrors[0]``). Returns its workloads and its
        claim's name."""
        cache = naming.cache_name(name, mirror)
        component = naming.CACHE_COMPONENT
        upstream_secret_name = None
        if mirror.username is not None:
            upstream_secret_name = objects.create_upstream_secret(cache, mirror, namespace, parent=self).metadata.name
        claim = objects.create_storage_claim(
            cache, settings, namespace, parent=self, storage_size=mirror.storage_size, component=component,
            size_setting=f"{mirror_key}.storageSize",
        )
        cache_deployment = deployment.create_deployment(
            cache,
            settings,
            namespace=namespace,
            secret_name=tls_secret_name,
            claim_name=claim.metadata.name,
            certificate_pem=certificate_pem,
            htpasswd_secret_name=None if mirror.anonymous else htpasswd_secret_name,
            parent=self,
            component=component,
            extra_env=deployment.proxy_environment(mirror, upstream_secret_name),
            extra_scanner_exceptions=[naming.UPSTREAM_CREDENTIALS_EXCEPTION] if upstream_secret_name else [],
        )
        # An anonymous cache: no password (a pod's imagePullSecret would replace it, and the pull
        # would bypass the cache), so only the cluster's nodes may reach it.
        service = network.create_service(
            cache, settings, namespace, parent=self, port=mirror.port, component=component,
            only_from=settings.node_addresses if mirror.anonymous else (),
        )
        network.create_network_policy(
            cache, namespace, parent=self, component=component, egress=network.cache_egress(mirror),
            sources=network.anonymous_cache_sources(settings) if mirror.anonymous else (),
        )
        return [cache_deployment, service], claim.metadata.name
