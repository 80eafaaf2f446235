"""The registry's TLS identity: a long-lived CA that nodes trust, and a serving certificate it signs.

Replaces the guide's ``openssl req -x509 ...``. The SANs are derived from the same settings
that give the Service its IP and the nodes their /etc/hosts line, so the certificate cannot
name a different address than the one the registry is served on.

Why a CA: nodes trust the CA, not the serving certificate, so renewing the serving
certificate only rolls the registry pod and never touches a node or opens a trust gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from ..settings import CertificateSettings

HOURS_PER_DAY = 24
SERVER_USES = ("digital_signature", "key_encipherment", "server_auth")
CA_USES = ("cert_signing", "crl_signing", "digital_signature")


@dataclass(frozen=True)
class RegistryCertificates:
    ca_certificate: tls.SelfSignedCert
    serving_key: tls.PrivateKey
    serving_certificate: tls.LocallySignedCert

    @property
    def certificate_pem(self) -> pulumi.Output[str]:
        """What the registry serves."""
        return self.serving_certificate.cert_pem

    @property
    def private_key_pem(self) -> pulumi.Output[str]:
        return self.serving_key.private_key_pem

    @property
    def trust_anchor_pem(self) -> pulumi.Output[str]:
        """What clients and nodes trust: the CA certificate (public)."""
        return self.ca_certificate.cert_pem


def private_key_arguments(algorithm: str) -> dict:
    if algorithm == "ECDSA":
        return {"algorithm": "ECDSA", "ecdsa_curve": "P256"}
    return {"algorithm": "RSA", "rsa_bits": 4096}


def create_registry_certificates(
    name: str, settings: CertificateSettings, parent: pulumi.Resource
) -> RegistryCertificates:
    options = pulumi.ResourceOptions(parent=parent)
    ca_key = tls.PrivateKey(f"{name}-ca-key", **private_key_arguments(settings.key_algorithm), opts=options)
    ca_certificate = tls.SelfSignedCert(
        f"{name}-ca",
        private_key_pem=ca_key.private_key_pem,
        is_ca_certificate=True,
        subject=tls.SelfSignedCertSubjectArgs(
            common_name=f"{settings.common_name} registry CA", organization="k3s-registry"
        ),
        allowed_uses=list(CA_USES),
        validity_period_hours=settings.ca_validity_days * HOURS_PER_DAY,
        opts=options,
    )
    serving_key = tls.PrivateKey(f"{name}-key", **private_key_arguments(settings.key_algorithm), opts=options)
    request = tls.CertRequest(
        f"{name}-csr",
        private_key_pem=serving_key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(
            common_name=settings.common_name,
            # Changes once per rotation period, so an ordinary `pulumi up` in a new period
            # issues a new certificate (pulumi-tls never renews one by itself).
            serial_number=f"rotation-{settings.rotation}",
        ),
        dns_names=list(settings.dns_names),
        ip_addresses=list(settings.ip_addresses),
        opts=options,
    )
    serving_certificate = tls.LocallySignedCert(
        f"{name}-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=ca_key.private_key_pem,
        ca_cert_pem=ca_certificate.cert_pem,
        allowed_uses=list(SERVER_USES),
        validity_period_hours=settings.validity_days * HOURS_PER_DAY,
        opts=options,
    )
    return RegistryCertificates(
        ca_certificate=ca_certificate, serving_key=serving_key, serving_certificate=serving_certificate
    )
