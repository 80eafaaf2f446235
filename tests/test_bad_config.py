"""Realistic configuration mistakes, each run through the whole program under the mocks.

Every row is a mistake someone makes while writing ``Pulumi.<stack>.yaml`` for a home lab.
Each must stop ``pulumi preview`` before any resource is declared, with a message that names
the key (``k3s-registry:<key>:``), the node when a node is wrong, and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from components.config import KNOWN_KEYS, parse_settings

from harness import GUIDE_CONFIG, ProgramFailed, evaluate

# A valid stack, like the guide's cluster with two nodes; every case changes one thing in it.
CONTROL = {"name": "control01", "host": "192.168.0.101", "role": "server"}
CUBE = {"name": "cube01", "host": "192.168.0.111", "port": 2222, "user": "ubuntu", "role": "agent"}
BASE: dict[str, Any] = {**GUIDE_CONFIG, "nodes": [CONTROL, CUBE]}

REMOVE = object()
"""A change that deletes the key from the stack file."""

# Every key has a mistake that fails at preview (sshPrivateKey's content is passed to
# pulumi-command as it is; only that it is a secret is checked).
UNVALIDATED_KEYS: set[str] = set()


@dataclass(frozen=True)
class Mistake:
    story: str
    changes: dict[str, Any]
    key: str
    fragments: tuple[str, ...]
    node: str | None = None
    """How the message must name the node, e.g. "node 'cube01'" or "node #2" (an entry without a name)."""
    extra_keys: frozenset[str] = field(default_factory=frozenset)
    """Other keys the same mistake also (rightly) reports."""


def node(**entry) -> dict[str, Any]:
    """cube01 with some fields changed; a field set to REMOVE is left out."""
    merged = {**CUBE, **entry}
    return {k: v for k, v in merged.items() if v is not REMOVE}


def nodes(*entries) -> dict[str, Any]:
    return {"nodes": [CONTROL, *entries]}


MISTAKES = [
    # hostname
    Mistake("hostname-forgotten", {"hostname": REMOVE}, "hostname", ("is required", "registry.cube.local")),
    Mistake("hostname-left-empty", {"hostname": ""}, "hostname", ("is required",)),
    Mistake("hostname-with-underscore", {"hostname": "docker_registry.cube.local"}, "hostname",
            ("'docker_registry.cube.local' is not a valid DNS name",)),
    Mistake("hostname-with-space-instead-of-dot", {"hostname": "registry cube.local"}, "hostname",
            ("is not a valid DNS name",)),
    Mistake("hostname-as-url", {"hostname": "https://registry.cube.local"}, "hostname", ("is not a valid DNS name",)),
    Mistake("hostname-as-wildcard", {"hostname": "*.cube.local"}, "hostname", ("is not a valid DNS name",)),
    Mistake("hostname-is-the-ip", {"hostname": "192.168.0.202"}, "hostname", ("looks like an IP address",)),
    # loadBalancerIp
    Mistake("loadBalancerIp-forgotten", {"loadBalancerIp": REMOVE}, "loadBalancerIp", ("is required",)),
    Mistake("loadBalancerIp-with-cidr-suffix-/24", {"loadBalancerIp": "192.168.0.202/24"}, "loadBalancerIp",
            ("'192.168.0.202/24' is not an IP address",)),
    Mistake("loadBalancerIp-octet-300", {"loadBalancerIp": "192.168.0.300"}, "loadBalancerIp",
            ("is not an IP address",)),
    Mistake("loadBalancerIp-is-the-hostname", {"loadBalancerIp": "registry.cube.local"}, "loadBalancerIp",
            ("is not an IP address",)),
    Mistake("loadBalancerIp-misspelt-loadbalancerIp", {"loadBalancerIp": REMOVE, "loadbalancerIp": "192.168.0.202"},
            "loadbalancerIp", ("is not a setting of this program", "loadBalancerIp"),
            extra_keys=frozenset({"loadBalancerIp"})),
    # port
    Mistake("port-with-protocol-5000/tcp", {"port": "5000/tcp"}, "port", ("must be a whole number", "'5000/tcp'")),
    Mistake("port-0", {"port": "0"}, "port", ("0 is out of range", "between 1 and 65535")),
    Mistake("port-70000", {"port": "70000"}, "port", ("70000 is out of range",)),
    Mistake("port-negative", {"port": "-5000"}, "port", ("must be a whole number",)),
    Mistake("port-named-https", {"port": "https"}, "port", ("must be a whole number",)),
    # namespace
    Mistake("namespace-upper-case", {"namespace": "Docker-Registry"}, "namespace", ("is not a valid namespace name",)),
    Mistake("namespace-with-underscore", {"namespace": "docker_registry"}, "namespace",
            ("is not a valid namespace name",)),
    Mistake("namespace-64-characters", {"namespace": "registry-" + "x" * 55}, "namespace", ("at most 63",)),
    # storageClass
    Mistake("storageClass-capitalised-Longhorn", {"storageClass": "Longhorn"}, "storageClass", ("use lower case",)),
    Mistake("storageClass-empty-to-mean-default", {"storageClass": ""}, "storageClass",
            ("omit the key to use the cluster's default class",)),
    Mistake("storageClass-with-space", {"storageClass": "local path"}, "storageClass",
            ("is not a valid storage class name",)),
    # storageSize
    Mistake("storageSize-15-space-GB", {"storageSize": "15 GB"}, "storageSize",
            ("'15 GB' is not a storage size", "Kubernetes quantity")),
    Mistake("storageSize-lower-case-gi", {"storageSize": "15gi"}, "storageSize", ("Kubernetes quantity",)),
    Mistake("storageSize-zero", {"storageSize": "0Gi"}, "storageSize", ("Kubernetes quantity",)),
    Mistake("storageSize-negative", {"storageSize": "-15Gi"}, "storageSize", ("Kubernetes quantity",)),
    # nodeSelector
    Mistake("nodeSelector-as-a-string-node-type=worker", {"nodeSelector": "node-type=worker"}, "nodeSelector",
            ("is not valid JSON", "pulumi config set --path")),
    Mistake("nodeSelector-as-a-json-string", {"nodeSelector": '"node-type=worker"'}, "nodeSelector",
            ("must be an object of label: value pairs",)),
    Mistake("nodeSelector-as-a-list", {"nodeSelector": ["node-type=worker"]}, "nodeSelector",
            ("must be an object of label: value pairs",)),
    Mistake("nodeSelector-yaml-boolean-value", {"nodeSelector": {"gpu": True}}, "nodeSelector",
            ("label 'gpu' has value True",)),
    Mistake("nodeSelector-label-key-with-space", {"nodeSelector": {"node type": "worker"}}, "nodeSelector",
            ("'node type' is not a valid label key",)),
    # certDnsNames
    Mistake("certDnsNames-bare-string", {"certDnsNames": "*.cube.local"}, "certDnsNames", ("is not valid JSON",)),
    Mistake("certDnsNames-json-string-not-list", {"certDnsNames": '"*.cube.local"'}, "certDnsNames",
            ("must be a list",)),
    Mistake("certDnsNames-wildcard-in-the-middle", {"certDnsNames": ["cube.*.local"]}, "certDnsNames",
            ("is not a valid DNS name", "wildcard only as the first label")),
    Mistake("certDnsNames-with-an-ip", {"certDnsNames": ["192.168.0.201"]}, "certDnsNames",
            ("looks like an IP address",)),
    Mistake("certDnsNames-empty-entry", {"certDnsNames": ["*.cube.local", ""]}, "certDnsNames",
            ("entries must be DNS names",)),
    # certIpAddresses
    Mistake("certIpAddresses-with-a-hostname", {"certIpAddresses": ["192.168.0.201", "registry.cube.local"]},
            "certIpAddresses", ("'registry.cube.local' is not an IP address",)),
    Mistake("certIpAddresses-with-cidr", {"certIpAddresses": ["192.168.0.0/24"]}, "certIpAddresses",
            ("is not an IP address",)),
    Mistake("certIpAddresses-bare-string", {"certIpAddresses": "192.168.0.201"}, "certIpAddresses",
            ("is not valid JSON",)),
    # certValidityDays
    Mistake("certValidityDays-0", {"certValidityDays": "0"}, "certValidityDays", ("0 is out of range",)),
    Mistake("certValidityDays-negative", {"certValidityDays": "-365"}, "certValidityDays", ("must be a whole number",)),
    Mistake("certValidityDays-huge-100-years", {"certValidityDays": "36500"}, "certValidityDays",
            ("36500 is out of range", "between 2 and 3650")),
    Mistake("certValidityDays-with-unit-1y", {"certValidityDays": "1y"}, "certValidityDays",
            ("must be a whole number",)),
    Mistake("certValidityDays-longer-than-caValidityDays", {"certValidityDays": "730", "caValidityDays": "365"},
            "certValidityDays", ("outlives the CA", "caValidityDays 365")),
    # certRenewalDays
    Mistake("certRenewalDays-equal-to-validity", {"certValidityDays": "90", "certRenewalDays": "90"},
            "certRenewalDays", ("90 days is not shorter than certValidityDays (90)",)),
    Mistake("certRenewalDays-longer-than-default-validity", {"certRenewalDays": "400"}, "certRenewalDays",
            ("is not shorter than certValidityDays (365)",)),
    Mistake("certRenewalDays-0", {"certRenewalDays": "0"}, "certRenewalDays", ("0 is out of range",)),
    # caValidityDays
    Mistake("caValidityDays-0", {"caValidityDays": "0"}, "caValidityDays", ("0 is out of range",)),
    Mistake("caValidityDays-in-words", {"caValidityDays": "ten years"}, "caValidityDays", ("must be a whole number",)),
    # keyAlgorithm
    Mistake("keyAlgorithm-ed25519", {"keyAlgorithm": "ed25519"}, "keyAlgorithm",
            ("'ed25519' is not supported", "use RSA (4096 bits) or ECDSA (P-256)")),
    Mistake("keyAlgorithm-with-bits-RSA4096", {"keyAlgorithm": "RSA4096"}, "keyAlgorithm", ("is not supported",)),
    # auth
    Mistake("auth-yes", {"auth": "yes"}, "auth", ("must be true or false", "'yes'")),
    Mistake("auth-empty", {"auth": ""}, "auth", ("must be true or false",)),
    # authUsername
    Mistake("authUsername-user:password", {"authUsername": "admin:hunter2"}, "authUsername",
            ("'admin:hunter2' is not a usable user name",)),
    Mistake("authUsername-with-space", {"authUsername": "docker admin"}, "authUsername",
            ("is not a usable user name",)),
    # sshPrivateKey: its content is not checked, but it must be a secret
    Mistake("sshPrivateKey-in-plain-text", {"sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "sshPrivateKey",
            ("holds a secret in plain text", "pulumi config set --secret sshPrivateKey")),
    # existingClaim, migrateFromGuide
    Mistake("existingClaim-upper-case", {"existingClaim": "Longhorn-PVC"}, "existingClaim", ("use lower case",)),
    Mistake("existingClaim-a-path", {"existingClaim": "/var/lib/registry"}, "existingClaim",
            ("is not a valid volume claim name",)),
    Mistake("existingClaim-with-storageClass", {"existingClaim": "longhorn-docker-registry-pvc"}, "storageClass",
            ("is used only for the caches' claims when existingClaim is set", "no mirrors are configured",
             "remove storageClass")),
    Mistake("migrateFromGuide-yes", {"migrateFromGuide": "yes"}, "migrateFromGuide", ("must be true or false",)),
    Mistake("osTrustStore-on", {"osTrustStore": "on"}, "osTrustStore", ("must be true or false",)),
    # mirrors (pull-through caches)
    Mistake("mirrors-an-object-not-a-list", {"mirrors": {"upstream": "docker.io"}}, "mirrors", ("must be a list of caches",)),
    Mistake("mirrors-upstream-as-url", {"mirrors": [{"upstream": "https://docker.io"}]}, "mirrors",
            ("upstream must be the registry name",)),
    Mistake("mirrors-unknown-upstream-without-url", {"mirrors": [{"upstream": "registry.example.org"}]}, "mirrors",
            ("not a registry this program knows", "give its API endpoint in url")),
    Mistake("mirrors-http-url", {"mirrors": [{"upstream": "docker.io", "url": "http://registry-1.docker.io"}]},
            "mirrors", ("must be the upstream's https:// address",)),
    Mistake("mirrors-twice-docker-io", {"mirrors": [{"upstream": "docker.io"}, {"upstream": "DOCKER.IO"}]}, "mirrors",
            ("docker.io is listed twice",)),
    Mistake("mirrors-on-the-registry-port", {"mirrors": [{"upstream": "ghcr.io", "port": 5000}]}, "mirrors",
            ("port 5000 is the registry's own port",)),
    Mistake("mirrors-same-port", {"mirrors": [{"upstream": "ghcr.io", "port": 5010}, {"upstream": "quay.io", "port": 5010}]},
            "mirrors", ("caches 'ghcr.io' and 'quay.io' both use port 5010",)),
    Mistake("mirrors-username-without-password", {"mirrors": [{"upstream": "docker.io", "username": "me"}]}, "mirrors",
            ("give both username and password",)),
    Mistake("mirrors-ttl-in-days", {"mirrors": [{"upstream": "docker.io", "ttl": "7d"}], "image": "registry:3.0.0"},
            "mirrors", ("is not a duration",)),
    Mistake("mirrors-size-in-gb", {"mirrors": [{"upstream": "quay.io", "storageSize": "10GB"}]}, "mirrors",
            ("storageSize", "Kubernetes quantity")),
    Mistake("mirrors-anonymous-as-text", {"mirrors": [{"upstream": "docker.io", "anonymous": "yes"}]}, "mirrors",
            ("anonymous must be true or false",)),
    # An anonymous cache with upstream credentials would hand what they can read to the cluster.
    Mistake("mirrors-anonymous-with-upstream-credentials",
            {"mirrors": [{"upstream": "quay.io", "anonymous": True, "username": "robot", "password": "x"}]}, "mirrors",
            ("an anonymous cache cannot hold upstream credentials", "Remove username and password, or anonymous")),
    Mistake("mirrors-anonymous-with-a-node-by-name",
            {"mirrors": [{"upstream": "docker.io", "anonymous": True}], **nodes(node(host="cube01.lan"))}, "mirrors",
            ("admit the cluster's nodes by IP address", "nodes cube01 are given by name")),
    Mistake("mirrors-anonymous-without-nodes", {"mirrors": [{"upstream": "docker.io", "anonymous": True}], "nodes": REMOVE},
            "mirrors", ("no nodes are configured",)),
    Mistake("deleteEnabled-as-a-word", {"deleteEnabled": "sometimes"}, "deleteEnabled", ("true or false",)),
    # clusterCidr
    Mistake("clusterCidr-with-host-bits", {"clusterCidr": "10.42.0.1/16"}, "clusterCidr", ("is not a network in CIDR",)),
    Mistake("clusterCidr-an-address", {"clusterCidr": "10.42.0.0/33"}, "clusterCidr", ("is not a network in CIDR",)),
    Mistake("mirrors-password-in-plain-text", {"mirrors": [{"upstream": "docker.io", "username": "me", "password": "x"}]},
            "mirrors", ("holds a secret in plain text", "--secret --path 'mirrors[0].password'")),
    # k3sRestartTimeout
    Mistake("k3sRestartTimeout-with-unit", {"k3sRestartTimeout": "5m"}, "k3sRestartTimeout", ("must be a whole number",)),
    Mistake("k3sRestartTimeout-zero", {"k3sRestartTimeout": "0"}, "k3sRestartTimeout", ("0 is out of range",)),
    # monitoring
    Mistake("monitoring-yes", {"monitoring": "yes"}, "monitoring", ("true or false",)),
    Mistake("monitoringNamespace-upper-case", {"monitoringNamespace": "Monitoring"}, "monitoringNamespace", ("namespace",)),
    Mistake("monitoringLabels-a-list", {"monitoringLabels": ["release=prometheus"]}, "monitoringLabels",
            ("label: value pairs",)),
    # retention (every key of it: tests/test_retention.py)
    Mistake("retention-no-rule", {"retention": {"protect": ["latest"]}}, "retention", ("neither keepLast nor keepDays",)),
    Mistake("retention-without-deletes", {"deleteEnabled": "false", "retention": {"keepLast": 5}}, "retention",
            ("deleteEnabled is false",)),
    # garbageCollection (every key of it: tests/test_garbage_collection.py)
    Mistake("garbageCollection-sometimes", {"garbageCollection": "3"}, "garbageCollection", ("true, false or an object",)),
    # rolloutTimeout
    Mistake("rolloutTimeout-with-unit", {"rolloutTimeout": "5m"}, "rolloutTimeout", ("must be a whole number",)),
    Mistake("rolloutTimeout-too-short", {"rolloutTimeout": "5"}, "rolloutTimeout", ("5 is out of range",)),
    # image
    Mistake("image-upper-case", {"image": "Registry:2.8.3"}, "image", ("is not an image reference",)),
    Mistake("image-with-space-after-colon", {"image": "registry: 2.8.3"}, "image", ("is not an image reference",)),
    Mistake("image-docker-run-line", {"image": "docker pull registry:2.8.3"}, "image", ("is not an image reference",)),
    # The message asks for "a name with a tag" and the README promises a pinned image.
    Mistake("image-without-tag", {"image": "registry"}, "image", ("use a name with a tag, like registry:3.1.1",)),
    # distribution 2.8: end of life, and its collector deletes an index's platform manifests.
    Mistake("image-registry-2.8.3", {"image": "registry:2.8.3"}, "image", ((
        "registry:2.8.3 is distribution 2, which docker-library no longer builds and whose garbage collector "
        "deletes the platform images of a multi-platform image; the program runs distribution 3. Remove image "
        "to use the default registry:3.1.1 (pulumi config rm image), or name a 3.x tag of your mirror of it. "
        "The volume's images are kept: distribution 3 serves what 2.8 stored"),)),
    Mistake("image-registry-2", {"image": "registry:2"}, "image", ("registry:2 is distribution 2",)),
    Mistake("image-mirrored-2.8", {"image": "mirror.cube.local:5000/library/registry:2.8.2@sha256:" + "a" * 64},
            "image", ("is distribution 2,",)),
    # nodes: the list itself
    Mistake("nodes-a-single-object-not-a-list", {"nodes": CUBE}, "nodes", ("must be a list of nodes",)),
    Mistake("nodes-a-comma-separated-string", {"nodes": "control01,cube01"}, "nodes", ("is not valid JSON",)),
    Mistake("nodes-entry-is-a-bare-hostname", nodes("cube01"), "nodes", ("must be an object",), node="node #2"),
    Mistake("nodes-duplicate-name", nodes(node(name="control01")), "nodes",
            ("nodes 'control01' and 'control01' have the same name",), node="nodes 'control01' and 'control01'"),
    Mistake("nodes-duplicate-host-and-default-port", nodes(node(host="192.168.0.101", port="22")), "nodes",
            ("have the same host and port (192.168.0.101:22)",),
            node="nodes 'control01' and 'cube01'"),
    # nodes: one node's fields
    Mistake("node-host-empty", nodes(node(host="")), "nodes", ("host is empty",), node="node 'cube01'"),
    Mistake("node-host-missing", nodes(node(host=REMOVE)), "nodes", ("host is empty",), node="node 'cube01'"),
    Mistake("node-port-0", nodes(node(port=0)), "nodes", ("port 0 is out of range",), node="node 'cube01'"),
    Mistake("node-port-70000", nodes(node(port=70000)), "nodes", ("port 70000 is out of range",), node="node 'cube01'"),
    Mistake("node-port-ssh", nodes(node(port="ssh")), "nodes", ("port must be a whole number",), node="node 'cube01'"),
    Mistake("node-role-worker", nodes(node(role="worker")), "nodes",
            ("role 'worker' is not known", "use server (runs k3s) or agent"), node="node 'cube01'"),
    Mistake("node-role-old-name-master", nodes(node(role="master")), "nodes", ("role 'master' is not known",),
            node="node 'cube01'"),
    Mistake("node-role-missing", nodes(node(role=REMOVE)), "nodes", ("role None is not known",), node="node 'cube01'"),
    Mistake("node-unknown-key-ip", nodes(node(ip="192.168.0.111")), "nodes", ("unknown key(s) ip",),
            node="node 'cube01'"),
    Mistake("node-name-with-capitals-and-underscore", nodes(node(name="Cube_01")), "nodes", ("name must be",),
            node="node 'Cube_01'"),
    Mistake("node-name-missing", nodes(node(name=REMOVE)), "nodes", ("name must be",), node="node #2"),
    Mistake("node-hostKey-is-a-fingerprint", nodes(node(hostKey="SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s")),
            "nodes", ("hostKey must be the node's ed25519 or ECDSA public host key",), node="node 'cube01'"),
    Mistake("node-hostKey-ssh-rsa", nodes(node(hostKey="ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7")), "nodes",
            ("hostKey is an ssh-rsa key", "OpenSSH 8.8+ refuses", "ssh-keyscan -t ed25519 192.168.0.111"),
            node="node 'cube01'"),
    Mistake("nodes-duplicate-host-in-another-case", nodes(node(host="CUBE01.lan"), node(name="cube02", host="cube01.lan.")),
            "nodes", ("have the same host and port (cube01.lan:2222)",), node="nodes 'cube01' and 'cube02'"),
    Mistake("node-hostKey-type-only", nodes(node(hostKey="ssh-ed25519")), "nodes", ("hostKey must be",),
            node="node 'cube01'"),
    Mistake("node-user-with-space", nodes(node(user="pi user")), "nodes", ("user 'pi user' is not a valid login name",),
            node="node 'cube01'"),
    # The host is only checked for being non-empty: `ssh root@host` and `host:port` habits pass
    # preview and fail at `up` with an SSH connection error.
    Mistake("node-host-with-user-root@", nodes(node(host="root@192.168.0.111")), "nodes",
            ("host 'root@192.168.0.111'",), node="node 'cube01'"),
    Mistake("node-host-with-port-suffix", nodes(node(host="192.168.0.111:2222", port=REMOVE)), "nodes",
            ("host '192.168.0.111:2222'",), node="node 'cube01'"),
    # restartK3s
    Mistake("restartK3s-maybe", {"restartK3s": "maybe"}, "restartK3s", ("must be true or false", "'maybe'")),
    Mistake("restartK3s-yes", {"restartK3s": "yes"}, "restartK3s", ("must be true or false",)),
]


def stack_with(changes: dict[str, Any]) -> dict[str, Any]:
    config = dict(BASE)
    for key, value in changes.items():
        if value is REMOVE:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def reported_keys(message: str) -> set[str]:
    return set(re.findall(r"^  - k3s-registry:([^:]+):", message, flags=re.MULTILINE))


def test_the_base_stack_is_valid_so_each_failure_is_the_cases_own():
    """Every case changes one thing in BASE; BASE itself must deploy."""
    evaluation = evaluate(BASE)
    assert evaluation.outputs["configuredNodes"] == ["control01", "cube01"]
    assert len(evaluation.of_type("command:remote:Command")) == 8  # trust, hosts, k3s, restart per node


def test_the_table_covers_every_key_of_the_program():
    covered = {mistake.key for mistake in MISTAKES} | {k for m in MISTAKES for k in m.extra_keys}
    assert set(KNOWN_KEYS) - UNVALIDATED_KEYS - covered == set()
    assert len(MISTAKES) >= 25
    assert len({mistake.story for mistake in MISTAKES}) == len(MISTAKES)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[mistake.story for mistake in MISTAKES])
def test_a_mistake_fails_at_preview_naming_the_key_and_nothing_is_declared(mistake: Mistake):
    with pytest.raises(ProgramFailed) as failure:
        evaluate(stack_with(mistake.changes))
    message = str(failure.value)
    assert f"k3s-registry:{mistake.key}:" in message
    # Only this mistake is reported: the rest of the stack is valid.
    assert reported_keys(message) == {mistake.key} | mistake.extra_keys, message
    line = next(line for line in message.splitlines() if f"k3s-registry:{mistake.key}:" in line)
    for fragment in mistake.fragments:
        assert fragment in line, message
    if mistake.node is not None:
        assert mistake.node in line, message
    assert failure.value.declared == []


def test_a_trailing_space_or_dot_in_hostname_is_trimmed_not_carried_into_the_certificate():
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in BASE.items()}
    settings = parse_settings({**raw, "hostname": " Registry.Cube.Local. "})
    assert settings.registry.hostname == "registry.cube.local"
    assert settings.registry.certificate.dns_names[0] == "registry.cube.local"
