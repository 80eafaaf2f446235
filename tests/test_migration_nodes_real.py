"""Nodes set up by the manual guide: migrateFromGuide removes exactly the guide's leftovers.

The guide left on every node: its self-signed `registry.crt` AND the registry's private key
`registry.key` in /usr/local/share/ca-certificates (trusted via update-ca-certificates), the
line `<ip> registry <hostname>` in /etc/hosts, and a registries.yaml whose `configs` entry is
keyed by the bare host name with `ca_file` and `key_file` pointing at those two files. One
`up` with migrateFromGuide takes exactly those out, configures the node as usual, and a
destroy afterwards does not put them back. Real sshd hosts, the real registry, curl.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from components.node.steps.trust import signature_line

from harness import evaluate
from nodebed import NodeSpec, declared_plan, run_phase, running_nodes, units_for
from pod import registry_pod
from testbed.certs import self_signed_cert

HOSTNAME = "registry.guide.test"
REGISTRY_IP = "127.0.0.206"
ADDRESS = f"{HOSTNAME}:5000"
ANCHORS = "/usr/local/share/ca-certificates"
GUIDE_CERT, GUIDE_KEY = f"{ANCHORS}/registry.crt", f"{ANCHORS}/registry.key"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/]")
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
GUIDE_HOSTS_LINE = f"{REGISTRY_IP} registry {HOSTNAME}".encode()
OTHER_HOSTS = b"127.0.0.1\tlocalhost\n# the lab\n10.0.0.5\tnas.guide.test nas\n"
GUIDE_REGISTRIES = f"""# written by hand, following the guide
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.guide.test:5000"
  {ADDRESS}:
    endpoint:
      - "https://{ADDRESS}"
configs:
  {HOSTNAME}:
    tls:
      ca_file: "{GUIDE_CERT}"
      key_file: "{GUIDE_KEY}"
  "mirror.guide.test:5000":
    tls:
      ca_file: "/etc/ssl/certs/mirror-ca.pem"
""".encode()

GUIDE = self_signed_cert(HOSTNAME, dns_names=[HOSTNAME, "*.guide.test"], ip_addresses=[REGISTRY_IP])
UNRELATED = self_signed_cert("ca.corp.test")  # the admin's own CA: stays
NODES: dict[str, dict[str, Any]] = {
    # A node exactly as the guide left it, with one more CA of the admin's own.
    "guided01": {"ip": "127.0.0.91", "files": {GUIDE_CERT: GUIDE.cert_pem, GUIDE_KEY: GUIDE.key_pem,
                                              f"{ANCHORS}/corp-root.crt": UNRELATED.cert_pem,
                                              REGISTRIES: GUIDE_REGISTRIES}},
    # A registry.crt of another registry (not the guide's for this name) is not ours to take.
    "guided02": {"ip": "127.0.0.92", "files": {GUIDE_CERT: UNRELATED.cert_pem, GUIDE_KEY: GUIDE.key_pem,
                                              REGISTRIES: GUIDE_REGISTRIES}},
}


def stack_config(**overrides):
    nodes = [{"name": name, "host": spec["ip"], "role": "agent"} for name, spec in NODES.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "certDnsNames": ["*.guide.test"],
            "nodes": nodes, "migrateFromGuide": "true", **overrides}


@pytest.fixture(scope="module")
def declared():
    return evaluate(stack_config())


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, spec["ip"], OTHER_HOSTS + GUIDE_HOSTS_LINE + b"\n", files=spec["files"], units=units_for("agent"))
             for name, spec in NODES.items()]
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as nodes:
        for node in nodes.values():  # the guide ran update-ca-certificates
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
            assert in_bundle(node, GUIDE.cert_pem) == (node.name == "guided01")
        yield nodes


@pytest.fixture(scope="module")
def registry(declared, tmp_path_factory):
    with registry_pod(declared, tmp_path_factory.mktemp("registry-pod"), REGISTRY_IP) as running:
        yield running


@pytest.fixture(scope="module")
def migrated(declared, cluster, client_key):
    run_phase(declared, cluster.values(), "create", client_key)
    return {name: node.snapshot() for name, node in cluster.items()}


def in_bundle(node, cert_pem: bytes) -> bool:
    return signature_line(cert_pem.decode()).encode() in (node.read_file(BUNDLE) or b"")


def registries(node) -> dict:
    return yaml.safe_load(node.read_file(REGISTRIES))


def test_the_guides_private_key_leaves_every_node(migrated, cluster):
    for node in cluster.values():
        assert not node.exists(GUIDE_KEY), node.name
        # A key, not a mention: the node's scripts look for the guide's key by its PEM header.
        assert not any(PEM_PRIVATE_KEY.search(content) for content in node.snapshot().values()), node.name


def test_the_guides_certificate_leaves_the_trust_store_and_the_bundle(migrated, cluster):
    node = cluster["guided01"]
    assert not node.exists(GUIDE_CERT)
    assert not in_bundle(node, GUIDE.cert_pem)
    assert node.read_file(f"{ANCHORS}/corp-root.crt") == UNRELATED.cert_pem
    assert in_bundle(node, UNRELATED.cert_pem), "the admin's own CA is still trusted"


def test_a_registry_crt_for_another_name_stays(migrated, cluster):
    node = cluster["guided02"]
    assert node.read_file(GUIDE_CERT) == UNRELATED.cert_pem
    assert in_bundle(node, UNRELATED.cert_pem)


def test_the_guides_hosts_line_gives_way_to_the_managed_one(migrated, cluster):
    for node in cluster.values():
        lines = node.read_file("/etc/hosts").split(b"\n")
        assert lines[0].startswith(f"{REGISTRY_IP}\t{HOSTNAME}\t# managed by k3s-registry".encode())
        assert GUIDE_HOSTS_LINE not in lines
        assert b"\n".join(lines[1:]) == OTHER_HOSTS, "every other line is untouched"


def test_registries_yaml_loses_only_the_guides_bare_hostname_entry(migrated, cluster):
    for node in cluster.values():
        document = registries(node)
        assert HOSTNAME not in document["configs"], node.name
        assert document["configs"]["mirror.guide.test:5000"] == {"tls": {"ca_file": "/etc/ssl/certs/mirror-ca.pem"}}
        assert document["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.guide.test:5000"]}
        ours = document["configs"][ADDRESS]
        assert set(ours["tls"]) == {"ca_file"} and "key_file" not in str(document)


def curl_status(node, *trust: str):
    return node.run_local(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", *trust,
                           f"https://{ADDRESS}/v2/"])


def test_after_the_migration_every_node_reaches_the_registry_over_verified_tls(migrated, cluster, registry):
    """Through the CA file registries.yaml gives k3s's containerd: osTrustStore is off by default."""
    for node in cluster.values():
        result = curl_status(node, "--cacert", registries(node)["configs"][ADDRESS]["tls"]["ca_file"])
        assert result.returncode == 0, (node.name, result.stderr)
        assert result.stdout == b"401", "verified TLS; the registry asks for the credentials"


def test_with_the_os_trust_store_off_neither_the_guides_ca_nor_ours_is_in_it(migrated, cluster, registry, declared):
    ca = declared.outputs["caCertificatePem"]
    for node in cluster.values():
        assert not in_bundle(node, ca.encode()), node.name
        assert not in_bundle(node, GUIDE.cert_pem), node.name
        assert [path for path in node.snapshot([ANCHORS]) if "k3s-registry" in path] == [], node.name
        assert curl_status(node).returncode == 60, "curl trusting the OS store refuses the registry"


def test_a_second_up_after_the_migration_changes_nothing(migrated, declared, cluster, client_key):
    run_phase(declared, cluster.values(), "create", client_key)
    for name, node in cluster.items():
        assert node.snapshot() == migrated[name], name


def test_destroy_after_the_migration_does_not_put_the_guides_leftovers_back(migrated, declared, cluster, client_key):
    run_phase(declared, cluster.values(), "delete", client_key)
    for node in cluster.values():
        assert not node.exists(GUIDE_KEY), node.name
        assert GUIDE_HOSTS_LINE not in node.read_file("/etc/hosts").split(b"\n")
        document = registries(node)
        assert HOSTNAME not in document.get("configs", {}) and "key_file" not in str(document), node.name
        assert document["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.guide.test:5000"]}
    assert not cluster["guided01"].exists(GUIDE_CERT)


def test_without_migrate_from_guide_the_leftovers_are_left_alone():
    """The default is to touch nothing of the guide's: the scripts carry no cleanup."""
    plain = evaluate(stack_config(migrateFromGuide="false"))
    migrating = evaluate(stack_config())
    cleanup = {"trust": "guide_key=", "hosts": "\nguide_name=", "k3s": "edit_registries forget-guide"}
    for step, marker in cleanup.items():
        assert marker not in node_scripts_of(plain, "guided01")[f"{step}/install"], step
        assert marker in node_scripts_of(migrating, "guided01")[f"{step}/install"], step


def node_scripts_of(evaluation, node_name: str) -> dict[str, str]:
    """The scripts the node's NodeScripts resource writes, rendered from the plan the program declared."""
    return declared_plan(evaluation, node_name).scripts()
