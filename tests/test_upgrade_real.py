"""An upgrade from the release before the scripts moved onto the nodes, on a real test host.

That release declared per node a ``NodeConfiguration`` component, three drift observations and
four Commands whose texts were the whole scripts. This one declares a ``NodeScripts`` resource
and four Commands with short texts, all directly under ``ClusterNodes``: every URN changes. The
engine then creates the new resources during the ``up`` and deletes the old ones at its end
(the old Commands' deletes run their own, old, texts from the state). The node must stay
configured through it, a second ``up`` must change nothing, and a ``destroy`` must give the
node back byte for byte.

The previous release's program is evaluated from its own tree (``git archive`` of that commit,
its own harness) with the same keys and certificates, which a real stack keeps in its state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

import harness
from engine import SCRIPTS, destroy, refresh, up
from harness import PROJECT_DIR, Evaluation, Resource, evaluate
from nodebed import NodeSpec, free_addresses, running_nodes

PREVIOUS_RELEASE = "e734ff7"  # the last commit with the scripts in the command texts
OLD_OBSERVATION = "pulumi-python:dynamic/k3s-registry:NodeStepObservation"
HOSTNAME = "registry.upgrade.test"
REGISTRY_IP = "127.0.0.190"  # only written into /etc/hosts; nothing connects to it
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(191, 196)]
HOSTS = b"127.0.0.1\tlocalhost\n"
SNAPSHOT_PATHS = ("/etc/hosts", "/etc/rancher", "/usr/local/share/ca-certificates", "/var/lib/k3s-registry")
ANCHOR = "/usr/local/share/ca-certificates/k3s-registry-k3s-registry-dev.crt"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"

# Runs in the previous release's tree: its program under its own harness, and the keys its mocks
# made (what pulumi-tls keeps in a real stack's state), as JSON on stdout.
DUMP_PREVIOUS = """
import json, sys
sys.path[:0] = [".", "tests"]
import harness
config = json.loads(sys.argv[1])
evaluation = harness.evaluate(config)
print(json.dumps({
    "resources": [{"type": r.type, "name": r.name, "urn": r.urn, "parent": r.parent, "inputs": r.inputs,
                   "outputs": r.outputs, "dependencies": r.dependencies} for r in evaluation.resources],
    "outputs": evaluation.outputs,
    "provider_state": harness._PROVIDER_STATE,
}, default=str))
"""


def stack(nodes: dict[str, str]) -> dict:
    entries = [{"name": name, "host": ip, "role": "server" if name.startswith("control") else "agent"}
               for name, ip in nodes.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": entries, "k3sRestartTimeout": "10"}


def previous_release_evaluation(config: dict, tmp_path: Path) -> Evaluation:
    archive = subprocess.run(["git", "-C", str(PROJECT_DIR), "archive", PREVIOUS_RELEASE], capture_output=True)
    assert archive.returncode == 0, f"the clone must have the previous release's commit: {archive.stderr.decode()}"
    tree = tmp_path / "previous"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as bundle:
        bundle.extractall(tree, filter="data")
    run = subprocess.run([sys.executable, "-c", DUMP_PREVIOUS, json.dumps(config)], cwd=tree, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    dumped = json.loads(run.stdout.decode().strip().splitlines()[-1])
    # The same keys and certificates as that release's stack holds: this program's mocks reuse them.
    harness._PROVIDER_STATE.update(dumped["provider_state"])
    evaluation = Evaluation(outputs=dumped["outputs"])
    for r in dumped["resources"]:
        evaluation.resources.append(Resource(type=r["type"], name=r["name"], urn=r["urn"], parent=r["parent"],
                                             inputs=r["inputs"], outputs=r["outputs"], wire_inputs={},
                                             dependencies=r["dependencies"], delete_before_replace=False))
    return evaluation


def snapshot(node) -> dict[str, bytes]:
    return {p: v for p, v in node.snapshot(SNAPSHOT_PATHS).items() if not p.startswith("/etc/ssl")}


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    ips = free_addresses(CANDIDATE_IPS, 2)
    specs = [NodeSpec("control01", ips[0], HOSTS), NodeSpec("cube01", ips[1], HOSTS)]
    with running_nodes(specs, client_key, lambda name: tmp_path_factory.mktemp(name)) as nodes:
        for node in nodes.values():
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        yield nodes


def test_an_upgrade_from_the_previous_release_keeps_every_node_configured(cluster, client_key, tmp_path):
    config = stack({name: node.ip for name, node in cluster.items()})
    before = {name: snapshot(node) for name, node in cluster.items()}
    previous = previous_release_evaluation(config, tmp_path)
    assert previous.of_type(OLD_OBSERVATION), "the previous release observed each step on its own"
    up(previous, cluster, client_key).check()
    configured = {name: snapshot(node) for name, node in cluster.items()}
    current = evaluate(config)
    assert current.outputs["caCertificatePem"] == previous.outputs["caCertificatePem"], "same CA, as in a real stack"
    assert not {r.urn for r in current.resources if r.name.startswith("nodes-")} & {r.urn for r in previous.resources}

    log = up(current, cluster, client_key, old=previous).check()

    old_deletes = {name: step for name, step in log.steps.items() if name.endswith("(old)")}
    assert sorted(old_deletes) == sorted(f"nodes-{node}-{step} (old)" for node in cluster
                                         for step in ("trust", "hosts", "k3s", "restart"))
    for name, step in old_deletes.items():
        assert "left as it is" in step.stdout, (name, step.stdout)
    for name, node in cluster.items():
        assert node.exists(ANCHOR) and f"{HOSTNAME}:5000" in node.read_file(REGISTRIES).decode(), name
        after = snapshot(node)
        changed = {path for path in after.keys() | configured[name].keys()
                   if after.get(path) != configured[name].get(path)}
        # The configuration itself is as the previous release left it: only our bookkeeping moved
        # (the new owner, the scripts directory).
        assert all(path.startswith("/var/lib/k3s-registry/") for path in changed), (name, sorted(changed))
    assert refresh(current, cluster, client_key) == {r.name: {} for r in current.of_type(SCRIPTS)}
    assert not up(evaluate(config), cluster, client_key, old=current).check().steps, "a second up changes nothing"
    destroy(current, cluster, client_key).check()
    for name, node in cluster.items():
        assert snapshot(node) == before[name], name
