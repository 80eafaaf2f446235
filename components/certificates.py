"""The registry's TLS identity: a private key and the certificate clients verify.

Replaces the guide's ``openssl req -x509 ...``: the SANs are derived from the same settings
that give the Service its IP and the nodes their /etc/hosts line, so the certificate can no
longer name a different address than the one the registry is served on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from .config import CertificateSettings

HOURS_PER_DAY = 24
SERVER_USES = ("digital_signature", "key_encipherment", "server_auth")


@dataclass(frozen=True)
class RegistryCertificate:
    private_key: tls.PrivateKey
    certificate: tls.SelfSignedCert

    @property
    def certificate_pem(self) -> pulumi.Output[str]:
        return self.certificate.cert_pem

    @property
    def private_key_pem(self) -> pulumi.Output[str]:
        return self.private_key.private_key_pem

    @property
    def trust_anchor_pem(self) -> pulumi.Output[str]:
        """What clients and nodes must trust: the self-signed certificate itself."""
        return self.certificate.cert_pem


def private_key_arguments(algorithm: str) -> dict:
    if algorithm == "ECDSA":
        return {"algorithm": "ECDSA", "ecdsa_curve": "P256"}
    return {"algorithm": "RSA", "rsa_bits": 4096}


def create_registry_certificate(
    name: str, settings: CertificateSettings, parent: pulumi.Resource
) -> RegistryCertificate:
    key = tls.PrivateKey(
        f"{name}-key",
        **private_key_arguments(settings.key_algorithm),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    certificate = tls.SelfSignedCert(
        f"{name}-cert",
        private_key_pem=key.private_key_pem,
        subject=tls.SelfSignedCertSubjectArgs(common_name=settings.common_name),
        dns_names=list(settings.dns_names),
        ip_addresses=list(settings.ip_addresses),
        allowed_uses=list(SERVER_USES),
        validity_period_hours=settings.validity_days * HOURS_PER_DAY,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return RegistryCertificate(private_key=key, certificate=certificate)
