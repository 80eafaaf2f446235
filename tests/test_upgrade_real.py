"""An upgrade from the release before the scripts moved onto the nodes, by the real `pulumi`.

That release declared per node a ``NodeConfiguration`` component, three drift observations and
four Commands whose texts were the whole scripts. This one declares a ``NodeScripts`` resource
and four Commands with short texts, all directly under ``ClusterNodes``: every URN changes. The
real engine creates the new resources during the ``up`` and deletes the old ones at its end
(the old Commands' deletes run their own, old, texts from the state). The node must stay
configured through it, a second ``up`` must change nothing, and a ``destroy`` must give the
node back byte for byte.

The previous release's program is its own tree (``git archive`` of that commit), run by the
same CLI, providers and venv on the same stack; then the stack's program is this clone's.
"""

from __future__ import annotations

import base64
import json

import pytest

from nodebed import NodeSpec, free_addresses, running_nodes, units_for
from pulumi_real import PROJECT_DIR, RealStack
from releases import release_tree

PREVIOUS_RELEASE = "e734ff7"  # the last commit with the scripts in the command texts
FLAT_LAYOUT = "38fef85"  # the last commit with every module in one components/ folder
LAYOUT_CHANGE = "e7616a0"  # the commit that split it into components/cluster/ and components/node/
OLD_OBSERVATION = "pulumi-python:dynamic/k3s-registry:NodeStepObservation"
NEW_SCRIPTS = "pulumi-python:dynamic/k3s-registry:NodeScripts"
HOSTNAME = "registry.upgrade.test"
GARBAGE_COLLECTION_OBJECTS = {f"registry-maintenance-{kind}" for kind in (
    "service-account", "role", "role-binding", "network-policy", "cron-job",
    "admission-policy", "admission-policy-binding")}
REGISTRY_IP = "127.0.0.190"  # only written into /etc/hosts; nothing connects to it
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(191, 196)]
HOSTS = b"127.0.0.1\tlocalhost\n"
SNAPSHOT_PATHS = ("/etc/hosts", "/etc/rancher", "/usr/local/share/ca-certificates", "/var/lib/k3s-registry")
STACK = "upgrade"
ANCHOR = f"/usr/local/share/ca-certificates/k3s-registry-k3s-registry-{STACK}.crt"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"


def previous_release_tree(tmp_path, commit=PREVIOUS_RELEASE):
    return release_tree(tmp_path, commit)


def snapshot(node) -> dict[str, bytes]:
    return {p: v for p, v in node.snapshot(SNAPSHOT_PATHS).items() if not p.startswith("/etc/ssl")}


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    ips = free_addresses(CANDIDATE_IPS, 2)
    specs = [NodeSpec("control01", ips[0], HOSTS), NodeSpec("cube01", ips[1], HOSTS, units=units_for("agent"))]
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as nodes:
        for node in nodes.values():
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        yield nodes


def types_of(stack):
    return {resource["type"] for resource in stack.resources()}


def configure(stack, cluster, client_key):
    stack.config_set("hostname", HOSTNAME)
    stack.config_set("loadBalancerIp", REGISTRY_IP)
    stack.config_set("k3sRestartTimeout", 10)
    stack.config_set("sshPrivateKey", client_key.private_key_text, secret=True)
    stack.config_set("nodes", [{"name": name, "host": node.ip, "role": "server" if name.startswith("control") else
                                "agent"} for name, node in cluster.items()])


def test_an_upgrade_from_the_previous_release_keeps_every_node_configured(cluster, client_key, kube_cluster, tmp_path):
    before = {name: snapshot(node) for name, node in cluster.items()}
    stack = RealStack(tmp_path / "stack", STACK, kubeconfig=kube_cluster.kubeconfig_path,
                      render_dir=tmp_path / "rendered", source=previous_release_tree(tmp_path))
    configure(stack, cluster, client_key)
    stack.up().check()
    assert OLD_OBSERVATION in types_of(stack), "the previous release observed each step on its own"
    configured = {name: snapshot(node) for name, node in cluster.items()}
    old_urns = {r["urn"] for r in stack.resources() if r["urn"].rsplit("::", 1)[-1].startswith("nodes-")}
    ca = stack.outputs()["caCertificatePem"]

    stack.use_program(PROJECT_DIR)
    # The previous release always put the CA in the OS store; it is opt-in now (README, Upgrading).
    stack.config_set("osTrustStore", True)
    upgraded = stack.up().check()

    assert stack.outputs()["caCertificatePem"] == ca, "the CA stays: it lives in the state"
    assert OLD_OBSERVATION not in types_of(stack) and NEW_SCRIPTS in types_of(stack)
    new_urns = {r["urn"] for r in stack.resources() if r["urn"].rsplit("::", 1)[-1].startswith("nodes-")}
    assert not new_urns & old_urns, "every node resource has a new URN"
    for node in cluster:
        for step in ("trust", "hosts", "k3s", "restart"):
            assert f"nodes-{node}-{step}" in upgraded.stdout
    for name, node in cluster.items():
        assert node.exists(ANCHOR) and f"{HOSTNAME}:5000" in node.read_file(REGISTRIES).decode(), name
        after = snapshot(node)
        changed = {path for path in after.keys() | configured[name].keys()
                   if after.get(path) != configured[name].get(path)}
        # The configuration itself is as the previous release left it: only our bookkeeping moved
        # (the new owner, the scripts directory).
        assert all(path.startswith("/var/lib/k3s-registry/") for path in changed), (name, sorted(changed))
    stack.up("--expect-no-changes").check()
    stack.destroy().check()
    for name, node in cluster.items():
        assert snapshot(node) == before[name], name


def test_a_stack_made_before_the_layout_change_sees_no_changes(cluster, client_key, kube_cluster, tmp_path):
    """The modules moved (components/cluster/, components/node/) in one commit that changed no
    resource, URN, input or node script: a stack made by the flat layout previews and updates
    with that commit's program with no change. Its refresh loads the NodeScripts provider
    pickled under the old module name (components/drift.py keeps it, in this clone too)."""
    before = {name: snapshot(node) for name, node in cluster.items()}
    stack = RealStack(tmp_path / "stack", STACK, kubeconfig=kube_cluster.kubeconfig_path,
                      render_dir=tmp_path / "rendered", source=previous_release_tree(tmp_path, FLAT_LAYOUT))
    configure(stack, cluster, client_key)
    stack.config_set("mirrors", [{"upstream": "docker.io"}, {"upstream": "quay.io", "port": 5090}])
    stack.config_set("migrateFromGuide", True)
    stack.up().check()
    made = {r["urn"] for r in stack.resources()}
    # The SDK keeps the pickled provider as a secret: exported with --show-secrets as {"plaintext": JSON}.
    pickled = [base64.b64decode(json.loads(r["inputs"]["__provider"]["plaintext"]))
               for r in stack.resources(show_secrets=True) if r["type"] == NEW_SCRIPTS]
    assert pickled and all(b"components.drift" in provider for provider in pickled), "the old module name"
    configured = {name: snapshot(node) for name, node in cluster.items()}

    stack.use_program(previous_release_tree(tmp_path, LAYOUT_CHANGE))
    stack.preview("--expect-no-changes").check()
    stack.up("--expect-no-changes").check()
    assert {r["urn"] for r in stack.resources()} == made, "no URN changed"
    for name, node in cluster.items():
        assert snapshot(node) == configured[name], name
    # And this clone's program, whose node scripts have changed since, still refreshes the
    # old pickles (through components/drift.py) and converges in one up.
    stack.use_program(PROJECT_DIR)
    stack.up().check()
    now = {r["urn"] for r in stack.resources()}
    assert now >= made, "no URN changed"
    # What came since: the maintenance restart of garbage collection (on by default), and the
    # admission policy that lets its token do nothing else.
    assert {urn.rsplit("::", 1)[1] for urn in now - made} == GARBAGE_COLLECTION_OBJECTS
    stack.up("--expect-no-changes").check()
    stack.destroy().check()
    for name, node in cluster.items():
        assert snapshot(node) == before[name], name
