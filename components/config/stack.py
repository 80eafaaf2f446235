"""The stack configuration, read once: every key, validated together into ``StackSettings``.

Every key lives in the ``k3s-registry:`` namespace. Every problem is collected and reported
together, each naming the key and the fix, so a bad stack file fails at ``pulumi preview``
before any resource is declared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pulumi

from ..cluster import rotation
from ..settings import (
    DEFAULT_AUTH_USERNAME,
    DEFAULT_CA_VALIDITY_DAYS,
    DEFAULT_CERT_RENEWAL_DAYS,
    DEFAULT_CERT_VALIDITY_DAYS,
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_IMAGE,
    DEFAULT_K3S_RESTART_TIMEOUT,
    DEFAULT_KEY_ALGORITHM,
    DEFAULT_MONITORING_NAMESPACE,
    DEFAULT_NAMESPACE,
    DEFAULT_PORT,
    DEFAULT_ROLLOUT_TIMEOUT,
    DEFAULT_STORAGE_SIZE,
    RETENTION_USERNAME,
    AuthSettings,
    CertificateSettings,
    GarbageCollectionSettings,
    MonitoringSettings,
    NodeAccessSettings,
    NodeSettings,
    RegistrySettings,
    StackSettings,
)
from .entries import mirrors_parser, parse_nodes
from .garbage_collection import parse_garbage_collection
from .reader import PROJECT, ConfigError, Reader
from .retention import parse_retention
from .values import (
    is_ip_address,
    parse_auth_username,
    parse_bool,
    parse_cidr,
    parse_claim_name,
    parse_dns_name_or_wildcard,
    parse_hostname,
    parse_image,
    parse_int,
    parse_ip,
    parse_key_algorithm,
    parse_namespace,
    parse_node_selector,
    parse_quantity,
    parse_storage_class,
    parse_string_list,
)

KNOWN_KEYS = (
    "hostname",
    "loadBalancerIp",
    "port",
    "namespace",
    "storageClass",
    "storageSize",
    "nodeSelector",
    "certDnsNames",
    "certIpAddresses",
    "certValidityDays",
    "keyAlgorithm",
    "caValidityDays",
    "certRenewalDays",
    "auth",
    "authUsername",
    "image",
    "nodes",
    "sshPrivateKey",
    "restartK3s",
    "k3sRestartTimeout",
    "rolloutTimeout",
    "monitoring",
    "monitoringNamespace",
    "monitoringLabels",
    "existingClaim",
    "migrateFromGuide",
    "osTrustStore",
    "mirrors",
    "clusterCidr",
    "deleteEnabled",
    "retention",
    "garbageCollection",
)


SECRET_KEYS = ("sshPrivateKey",)


def parse_settings(
    raw: Mapping[str, str | None],
    ssh_private_key: pulumi.Output[str] | None = None,
    now: dt.datetime | None = None,
    secret_keys: frozenset[str] | None = None,
) -> StackSettings:
    """Turns raw config strings (key without namespace -> value) into validated settings.

    ``now`` places the evaluation in a certificate rotation period (default: the clock).
    ``secret_keys``: the keys the stack sets as secrets; a key holding a secret (the SSH key, a
    cache's password) must be one of them. None: not known, not checked.
    """
    read = Reader(raw)
    for key in sorted(set(raw) - set(KNOWN_KEYS)):
        read.problem(key, f"is not a setting of this program; known settings: {', '.join(KNOWN_KEYS)}")

    def require_secret(key: str, how: str) -> None:
        # Pulumi.yaml cannot declare these `secret: true` (the CLI would then require them).
        if secret_keys is not None and key not in secret_keys:
            read.problem(key, f"holds a secret in plain text in the stack file; remove it and set it encrypted: {how}")

    if ssh_private_key is not None:
        require_secret("sshPrivateKey", "pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519")

    hostname = read.required("hostname", parse_hostname, hint="set the registry's DNS name, e.g. registry.cube.local")
    load_balancer_ip = read.required(
        "loadBalancerIp", parse_ip, hint="set the IP MetalLB should give the registry, e.g. 192.168.0.202"
    )
    port = read.value("port", parse_int(1, 65535, "a TCP port"), DEFAULT_PORT, json_value=False)
    no_names: tuple[str, ...] = ()
    dns_names = read.value("certDnsNames", parse_string_list(parse_dns_name_or_wildcard), no_names, json_value=True)
    ip_addresses = read.value("certIpAddresses", parse_string_list(parse_ip), no_names, json_value=True)
    validity_days = read.value(
        "certValidityDays", parse_int(2, 3650, "a number of days"), DEFAULT_CERT_VALIDITY_DAYS, json_value=False
    )
    renewal_days = read.value(
        "certRenewalDays", parse_int(1, 3649, "a number of days"), DEFAULT_CERT_RENEWAL_DAYS, json_value=False
    )
    ca_validity_days = read.value(
        "caValidityDays", parse_int(1, 36500, "a number of days"), DEFAULT_CA_VALIDITY_DAYS, json_value=False
    )
    if renewal_days >= validity_days:
        read.problem(
            "certRenewalDays",
            f"{renewal_days} days is not shorter than certValidityDays ({validity_days}); "
            "renew some days before the certificate expires, e.g. 30 of 365",
        )
    elif validity_days > ca_validity_days:
        read.problem(
            "certValidityDays",
            f"{validity_days} days outlives the CA (caValidityDays {ca_validity_days}); "
            "make the serving certificate shorter-lived than the CA",
        )
    certificate = CertificateSettings(
        common_name=hostname or "",
        dns_names=_unique((hostname, *dns_names) if hostname else dns_names),
        ip_addresses=_unique((load_balancer_ip, *ip_addresses) if load_balancer_ip else ip_addresses),
        validity_days=validity_days,
        key_algorithm=read.value("keyAlgorithm", parse_key_algorithm, DEFAULT_KEY_ALGORITHM, json_value=False),
        ca_validity_days=ca_validity_days,
        renewal_days=renewal_days,
        rotation=rotation.rotation_number(now or rotation.utcnow(), validity_days, renewal_days)
        if renewal_days < validity_days
        else 0,
    )
    auth_enabled = read.value("auth", parse_bool, True, json_value=False)
    # The CLI injects Pulumi.yaml's default into every stack, so "set" cannot be told from
    # "defaulted": with auth off the user name is simply not used.
    auth_username = read.value("authUsername", parse_auth_username, DEFAULT_AUTH_USERNAME, json_value=False)
    nodes: tuple[NodeSettings, ...] = read.value("nodes", parse_nodes, (), json_value=True)
    registry = RegistrySettings(
        hostname=hostname or "",
        load_balancer_ip=load_balancer_ip or "",
        port=port,
        namespace=read.value("namespace", parse_namespace, DEFAULT_NAMESPACE, json_value=False),
        storage_class=read.value("storageClass", parse_storage_class, None, json_value=False),
        storage_size=read.value("storageSize", parse_quantity, DEFAULT_STORAGE_SIZE, json_value=False),
        node_selector=read.value("nodeSelector", parse_node_selector, (), json_value=True),
        image=read.value("image", parse_image, DEFAULT_IMAGE, json_value=False),
        certificate=certificate,
        auth=AuthSettings(enabled=auth_enabled, username=auth_username),
        existing_claim=read.value("existingClaim", parse_claim_name, None, json_value=False),
        delete_enabled=read.value("deleteEnabled", parse_bool, True, json_value=False),
        mirrors=read.value("mirrors", mirrors_parser(port), (), json_value=True),
        node_addresses=tuple(node.host for node in nodes if is_ip_address(node.host)),
        cluster_cidr=read.value("clusterCidr", parse_cidr, DEFAULT_CLUSTER_CIDR, json_value=False),
        rollout_timeout_seconds=read.value(
            "rolloutTimeout", parse_int(10, 3600, "a number of seconds"), DEFAULT_ROLLOUT_TIMEOUT, json_value=False
        ),
        monitoring=MonitoringSettings(
            enabled=read.value("monitoring", parse_bool, False, json_value=False),
            namespace=read.value(
                "monitoringNamespace", parse_namespace, DEFAULT_MONITORING_NAMESPACE, json_value=False
            ),
            labels=read.value("monitoringLabels", parse_node_selector, (), json_value=True),
        ),
        retention=read.value("retention", parse_retention, None, json_value=True),
        garbage_collection=read.value(
            "garbageCollection", parse_garbage_collection, GarbageCollectionSettings(), json_value=True
        ),
    )
    if registry.retention is not None and auth_enabled and auth_username == RETENTION_USERNAME:
        read.problem(
            "authUsername",
            f"{RETENTION_USERNAME!r} is the retention job's own registry user; choose another name, e.g. registry",
        )
    if registry.retention is not None and not registry.retention.dry_run and not registry.delete_enabled:
        read.problem(
            "retention",
            "deletes tags, but deleteEnabled is false (the registry refuses every delete); "
            "set deleteEnabled to true, or retention.dryRun to true to only list what would go",
        )
    anonymous = [mirror.upstream for mirror in registry.mirrors if mirror.anonymous]
    named = [node.name for node in nodes if not is_ip_address(node.host)]
    if anonymous and (named or not nodes):
        read.problem(
            "mirrors",
            f"the anonymous cache(s) {', '.join(anonymous)} admit the cluster's nodes by IP address, but "
            + (f"nodes {', '.join(named)} are given by name; give each node's IP address as its host"
               if named else "no nodes are configured; list the nodes in nodes, by IP address"),
        )
    if any(mirror.password is not None for mirror in registry.mirrors):
        # A nested secret (set with --secret --path) makes the whole key a secret.
        require_secret("mirrors", "pulumi config set --secret --path 'mirrors[0].password'")
    # With existingClaim the class is only the caches' (the registry's claim has its class already).
    if registry.existing_claim is not None and registry.storage_class is not None and not registry.mirrors:
        read.problem(
            "storageClass",
            f"is used only for the caches' claims when existingClaim is set ({registry.existing_claim} already "
            "has its class), and no mirrors are configured; remove storageClass",
        )
    node_access = NodeAccessSettings(
        nodes=nodes,
        restart_k3s=read.value("restartK3s", parse_bool, True, json_value=False),
        restart_timeout_seconds=read.value(
            "k3sRestartTimeout", parse_int(5, 3600, "a number of seconds"), DEFAULT_K3S_RESTART_TIMEOUT,
            json_value=False,
        ),
        migrate_from_guide=read.value("migrateFromGuide", parse_bool, False, json_value=False),
        os_trust_store=read.value("osTrustStore", parse_bool, False, json_value=False),
        ssh_private_key=ssh_private_key,
    )
    if read.problems:
        raise ConfigError(read.problems)
    return StackSettings(registry=registry, node_access=node_access)


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def load_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Reads this project's stack configuration from Pulumi and validates it."""
    from pulumi.runtime import config as runtime_config

    config = config or pulumi.Config(PROJECT)
    present = _configured_keys()
    raw = {key: config.get(key) for key in present if key not in SECRET_KEYS}
    ssh_private_key = config.get_secret("sshPrivateKey") if "sshPrivateKey" in present else None
    secret_keys = frozenset(key for key in present if runtime_config.is_config_secret(f"{PROJECT}:{key}"))
    return parse_settings(raw, ssh_private_key, secret_keys=secret_keys)


def _configured_keys() -> set[str]:
    """Keys set for this project, including unknown ones, so typos are reported, not ignored."""
    from pulumi.runtime import config as runtime_config

    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{PROJECT}:"
    keys = {name[len(prefix):] for name in names if name.startswith(prefix)}
    return keys | {key for key in KNOWN_KEYS if runtime_config.get_config(prefix + key) is not None}
