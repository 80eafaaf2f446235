"""Every node trusts and uses the registry: the declared steps, run over real SSH on real hosts.

The story of one cluster: a server, an agent that already has its own registries.yaml and a
hosts file without a final newline, an OpenRC agent reached as a non-root user with sudo, and
a machine the program does not manage. `up`, a second `up`, a changed address, `destroy`.
"""

import json
import re

import pytest
import yaml

from harness import evaluate
from nodebed import NodeSpec, file_times, node_steps, run_phase, running_nodes, scripts_resource, write_scripts
from pod import registry_pod
from testbed.oci import build_oci_layout, skopeo_copy
from testbed.sshnodes import DEFAULT_MANAGED_PATHS

HOSTNAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.203"
ADDRESS = f"{HOSTNAME}:5000"
MARKER = "# managed by k3s-registry (k3s-registry-dev)"
EXISTING_REGISTRIES = b"""# mirrors we had before
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.cube.test:5000"
"""
NODES = {
    "server01": {"ip": "127.0.0.11", "role": "server", "user": "root", "init": "systemd",
                 "hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tserver01\n", "files": {}},
    "agent01": {"ip": "127.0.0.12", "role": "agent", "user": "root", "init": "systemd",
                "hosts": b"127.0.0.1 localhost\n127.0.1.1 agent01\n10.9.9.9 registry.cube.test", "files": {
                    "/etc/rancher/k3s/registries.yaml": EXISTING_REGISTRIES}},
    "agent02": {"ip": "127.0.0.13", "role": "agent", "user": "deploy", "init": "openrc",
                "hosts": b"127.0.0.1 localhost agent02\n", "files": {}},
}
OUTSIDER = {"ip": "127.0.0.14", "hosts": f"127.0.0.1 localhost outsider\n{REGISTRY_IP} {HOSTNAME}\n".encode()}


def stack_config(**overrides):
    nodes = [{"name": name, "host": spec["ip"], "role": spec["role"], "user": spec["user"]} for name, spec in NODES.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": nodes, **overrides}


@pytest.fixture(scope="module")
def declared():
    return evaluate(stack_config())


@pytest.fixture(scope="module")
def registry(declared, tmp_path_factory):
    with registry_pod(declared, tmp_path_factory.mktemp("registry-pod"), REGISTRY_IP) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, spec["ip"], spec["hosts"], spec["init"], spec["files"]) for name, spec in NODES.items()]
    specs.append(NodeSpec("outsider", OUTSIDER["ip"], OUTSIDER["hosts"]))
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as started:
        yield started


@pytest.fixture(scope="module")
def managed(cluster):
    return [cluster[name] for name in NODES]


@pytest.fixture(scope="module")
def before(managed):
    # A test node starts with the machine's bundle but an empty local CA folder; one rebuild
    # makes its trust store consistent, as it is on any real node.
    for node in managed:
        assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
    return {node.name: node.snapshot() for node in managed}


@pytest.fixture(scope="module")
def java_before(managed, before):
    return {node.name: java_trusted(node) for node in managed}


@pytest.fixture(scope="module")
def pushed_image(registry, declared, cluster, tmp_path_factory):
    """An image pushed by a user before the nodes were configured."""
    work = tmp_path_factory.mktemp("push")
    layout = build_oci_layout(work / "image", "1.0", b"built on a laptop\n")
    (work / "certs").mkdir()
    (work / "certs" / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    credentials = f"{declared.outputs['registryUsername']}:{declared.outputs['registryPassword']}"
    result = skopeo_copy(f"oci:{layout}:1.0", f"docker://{ADDRESS}/apps/hello:1.0",
                         extra_args=["--dest-cert-dir", str(work / "certs"), "--dest-creds", credentials],
                         run=cluster["outsider"].run_local)
    assert result.returncode == 0, result.stderr.decode()
    return f"{ADDRESS}/apps/hello:1.0"


@pytest.fixture(scope="module")
def up(declared, managed, before, java_before, client_key, pushed_image):
    for node in managed:
        node.clear_restart_log()
    return run_phase(declared, managed, "create", client_key)


def k3s_credentials(node) -> str:
    """The credentials k3s would use: read from the node's own registries.yaml."""
    auth = yaml.safe_load(node.read_file("/etc/rancher/k3s/registries.yaml"))["configs"][ADDRESS]["auth"]
    return f"{auth['username']}:{auth['password']}"


def curl_catalog(node, credentials=None):
    user = ["--user", credentials] if credentials else []
    return node.run_local(["curl", "-sS", "--fail", "--max-time", "10", *user, f"https://{ADDRESS}/v2/_catalog"])


def managed_lines(hosts: bytes) -> list[bytes]:
    return [line for line in hosts.split(b"\n") if line.endswith(MARKER.encode())]


def restarts(node):
    return [line for line in node.restart_log() if re.search(r"\brestart\b", line)]


# ------------------------------------------------------------------ after `pulumi up`

def test_every_node_reaches_the_registry_over_verified_tls_without_cacert(up, managed, registry):
    for node in managed:
        result = curl_catalog(node, k3s_credentials(node))
        assert result.returncode == 0, (node.name, result.stderr.decode())
        assert json.loads(result.stdout)["repositories"] == ["apps/hello"]


def test_without_the_credentials_the_registry_refuses_even_a_trusting_node(up, managed):
    result = curl_catalog(managed[0])
    assert result.returncode == 22 and b"401" in result.stderr  # curl --fail: HTTP error


def test_every_node_pulls_the_image_pushed_earlier_with_its_k3s_credentials(up, managed, pushed_image, tmp_path):
    for node in managed:
        pulled = node.run_local(["skopeo", "copy", "--src-creds", k3s_credentials(node),
                                 f"docker://{pushed_image}", f"dir:{tmp_path / node.name}"])
        assert pulled.returncode == 0, (node.name, pulled.stderr.decode())


def test_a_node_the_program_did_not_configure_fails_on_the_certificate(up, cluster):
    result = curl_catalog(cluster["outsider"])
    assert result.returncode == 60, result.stderr.decode()  # curl: peer certificate cannot be authenticated


def test_hosts_has_exactly_one_managed_line_first_and_nothing_else_changed(up, managed, before):
    for node in managed:
        hosts = node.read_file("/etc/hosts")
        assert managed_lines(hosts) == [f"{REGISTRY_IP}\t{HOSTNAME}\t{MARKER}".encode()]
        first_line, rest = hosts.split(b"\n", 1)
        assert first_line.endswith(MARKER.encode()), "our line comes first so it wins over older mappings"
        assert rest == before[node.name]["/etc/hosts"]


def test_names_resolve_to_the_registry_ip(up, managed):
    for node in managed:
        resolved = node.run_local(["getent", "hosts", HOSTNAME]).stdout.decode().split()
        assert resolved[0] == REGISTRY_IP, node.name


def test_registries_yaml_has_mirror_and_ca_keyed_by_host_and_port(up, managed):
    for node in managed:
        document = yaml.safe_load(node.read_file("/etc/rancher/k3s/registries.yaml"))
        assert document["mirrors"][ADDRESS] == {"endpoint": [f"https://{ADDRESS}"]}
        config = document["configs"][ADDRESS]
        assert set(config) == {"tls", "auth"} and set(config["tls"]) == {"ca_file"}
        assert set(config["auth"]) == {"username", "password"}
        mode = node.run_local(["stat", "-c", "%a", "/etc/rancher/k3s/registries.yaml"]).stdout.strip()
        assert mode == b"600", "registries.yaml holds the password: root only"
        ca_file = node.read_file(config["tls"]["ca_file"]).decode()
        assert "BEGIN CERTIFICATE" in ca_file and "PRIVATE" not in ca_file
        assert HOSTNAME not in document["configs"], "the configs key must carry the port"


def test_an_existing_docker_io_mirror_is_kept(up, cluster):
    document = yaml.safe_load(cluster["agent01"].read_file("/etc/rancher/k3s/registries.yaml"))
    assert document["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.cube.test:5000"]}


def test_no_private_key_lands_on_any_node(up, managed):
    for node in managed:
        for path, content in node.snapshot().items():
            assert b"PRIVATE KEY" not in content, (node.name, path)


def test_k3s_restarted_once_on_the_service_for_the_nodes_role(up, cluster):
    assert restarts(cluster["server01"]) == ["restart k3s"]
    assert restarts(cluster["agent01"]) == ["restart k3s-agent"]
    assert restarts(cluster["agent02"]) == ["k3s-agent restart"]  # OpenRC: rc-service k3s-agent restart


def test_the_non_root_user_went_through_sudo(up, declared):
    connection = node_steps(declared, "agent02")["k3s"].inputs["connection"]
    assert connection["user"] == "deploy"


# ------------------------------------------------------------------ a second `pulumi up`

@pytest.fixture(scope="module")
def second_up(up, declared, managed, client_key):
    snapshots = {node.name: node.snapshot() for node in managed}
    times = {node.name: file_times(node, DEFAULT_MANAGED_PATHS) for node in managed}
    for node in managed:
        node.clear_restart_log()
    runs = run_phase(declared, managed, "update", client_key)
    return snapshots, times, runs


def test_a_second_up_changes_no_file_and_restarts_nothing(second_up, managed):
    snapshots, times, _ = second_up
    for node in managed:
        assert node.snapshot() == snapshots[node.name], node.name
        assert file_times(node, DEFAULT_MANAGED_PATHS) == times[node.name], node.name
        assert restarts(node) == [], node.name


# ------------------------------------------------------------------ the registry moves to a new IP

@pytest.fixture(scope="module")
def moved(second_up, managed, client_key):
    evaluation = evaluate(stack_config(loadBalancerIp="127.0.0.204"))
    for node in managed:
        node.clear_restart_log()
    return evaluation, run_phase(evaluation, managed, "update", client_key)


def test_a_new_ip_rewrites_the_managed_line_and_leaves_k3s_alone(moved, managed, before):
    for node in managed:
        hosts = node.read_file("/etc/hosts")
        assert managed_lines(hosts) == [f"127.0.0.204\t{HOSTNAME}\t{MARKER}".encode()]
        assert hosts.split(b"\n", 1)[1] == before[node.name]["/etc/hosts"]
        assert restarts(node) == [], "registries.yaml did not change, so k3s keeps running"


def test_a_new_ip_leaves_the_trusted_ca_alone(moved, managed, declared):
    """The nodes trust the CA, which names the host, not the IP: nothing to re-trust."""
    evaluation, runs = moved
    assert evaluation.outputs["caCertificatePem"] == declared.outputs["caCertificatePem"]
    for node in managed:
        anchors = node.snapshot(["/usr/local/share/ca-certificates"])
        assert list(anchors.values()) == [declared.outputs["caCertificatePem"].encode()], node.name
    assert all("trust store: unchanged" in run.stdout for run in runs if run.step == "trust")


# ------------------------------------------------------------------ `pulumi destroy`

@pytest.fixture(scope="module")
def destroyed(moved, managed, client_key):
    evaluation, _ = moved
    for node in managed:
        node.clear_restart_log()
    return run_phase(evaluation, managed, "delete", client_key)


JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"


def java_trusted(node) -> list[str]:
    """The Java keystore's entries (alias and certificate), without its per-entry import dates."""
    if not node.exists(JAVA_KEYSTORE):
        return []
    listing = node.run_local(["keytool", "-list", "-rfc", "-keystore", JAVA_KEYSTORE, "-storepass", "changeit"])
    assert listing.returncode == 0, listing.stderr.decode()
    return [line for line in listing.stdout.decode().splitlines() if not line.startswith("Creation date")]


def test_destroy_returns_every_node_to_its_starting_bytes(destroyed, managed, before):
    for node in managed:
        after = node.snapshot()
        # A JKS keystore stamps each entry with its import time, and the trust store rebuild
        # re-imports every entry: compare what it trusts, not its bytes.
        after.pop(JAVA_KEYSTORE, None)
        assert after == {k: v for k, v in before[node.name].items() if k != JAVA_KEYSTORE}, node.name


def test_destroy_leaves_javas_keystore_trusting_what_it_trusted_before(destroyed, managed, java_before):
    for node in managed:
        assert java_trusted(node) == java_before[node.name], node.name


def test_destroy_restarts_k3s_because_registries_yaml_changed_back(destroyed, cluster):
    assert restarts(cluster["server01"]) == ["restart k3s"]
    assert restarts(cluster["agent01"]) == ["restart k3s-agent"]
    assert restarts(cluster["agent02"]) == ["k3s-agent restart"]


def test_after_destroy_nodes_no_longer_trust_the_registry(destroyed, managed):
    for node in managed:
        node.write_file("/etc/hosts", f"{REGISTRY_IP} {HOSTNAME}\n".encode())
        assert curl_catalog(node).returncode == 60, node.name


def test_destroy_twice_is_harmless(destroyed, moved, managed, client_key):
    """Every delete run again, as a destroy retried after an interruption would: the node's scripts
    are still there then (the engine deletes them last), so they are put back first."""
    evaluation, _ = moved
    snapshots = {node.name: node.snapshot() for node in managed}
    for node in managed:
        node.clear_restart_log()
        write_scripts(scripts_resource(evaluation, node.name), node, client_key)
    run_phase(evaluation, managed, "delete", client_key)
    for node in managed:
        assert node.snapshot() == snapshots[node.name], node.name
        assert restarts(node) == [], node.name
