"""The cluster side: a private registry served over TLS, as one component."""

from __future__ import annotations

from typing import Optional

import pulumi

from . import cluster
from .certificates import create_registry_certificate
from .config import RegistrySettings


class Registry(pulumi.ComponentResource):
    """A TLS registry on the cluster: certificate, Secret, volume, Deployment and Service."""

    address: pulumi.Output[str]
    """``hostname:port``, the name images are tagged and pulled with."""

    trust_anchor_pem: pulumi.Output[str]
    """The certificate clients and nodes trust (public)."""

    namespace: pulumi.Output[str]
    """The namespace holding every object of the registry."""

    load_balancer_ip: pulumi.Output[str]
    """The address MetalLB is asked to give the Service."""

    def __init__(self, name: str, args: RegistrySettings, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("k3s-registry:index:Registry", name, None, opts)
        settings = args

        namespace = cluster.create_namespace(name, settings, parent=self)
        namespace_name = namespace.metadata.name
        certificate = create_registry_certificate(name, settings.certificate, parent=self)
        secret = cluster.create_tls_secret(
            name, namespace_name, certificate.certificate_pem, certificate.private_key_pem, parent=self
        )
        claim = cluster.create_storage_claim(name, settings, namespace_name, parent=self)
        self.deployment = cluster.create_deployment(
            name,
            settings,
            namespace=namespace_name,
            secret_name=secret.metadata.name,
            claim_name=claim.metadata.name,
            certificate_pem=certificate.certificate_pem,
            parent=self,
        )
        self.service = cluster.create_service(name, settings, namespace_name, parent=self)

        self.address = pulumi.Output.from_input(settings.address)
        self.trust_anchor_pem = certificate.trust_anchor_pem
        self.namespace = namespace_name
        self.load_balancer_ip = pulumi.Output.from_input(settings.load_balancer_ip)
        self.register_outputs(
            {
                "address": self.address,
                "trustAnchorPem": self.trust_anchor_pem,
                "namespace": self.namespace,
                "loadBalancerIp": self.load_balancer_ip,
            }
        )
