"""Pull-through caches on real nodes: registries.yaml points each upstream at its cache.

The declared steps run over real SSH, as pulumi-command runs them: entries are exactly what
k3s reads (mirror keyed by the upstream, https endpoint `host:port`, configs keyed `host:port`
with ca_file and the credentials); adding and removing a cache changes exactly its entries;
a mirror of the same upstream that someone else wrote stops the step by name; destroy gives
the file back; a removed cache entry is drift the probe reports. As in an `up`, the node's
scripts resource writes the scripts first (a changed cache list changes the k3s step's scripts,
so exactly that Command's text), then the Commands whose text changed run.
"""

from __future__ import annotations

import pytest
import yaml

from harness import evaluate
from nodebed import (
    NodeSpec,
    node_steps,
    refresh_scripts,
    run_phase,
    run_step,
    running_nodes,
    scripts_outputs,
    scripts_resource,
    units_for,
    write_scripts,
)

HOSTNAME = "registry.cache.test"
REGISTRY_IP = "127.0.0.230"  # only written into /etc/hosts; nothing connects to it
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
THEIRS = b"""# the admin's own
mirrors:
  quay.io:
    endpoint:
      - "https://quay.lab.test"
"""
CONFLICTING = b"""mirrors:
  docker.io:
    endpoint:
      - "https://mirror.lab.test"
"""
NODES = {"cache01": ("127.0.0.93", THEIRS), "cache02": ("127.0.0.94", CONFLICTING)}
STEPS = ("trust", "hosts", "k3s", "restart")


def stack(mirrors, nodes=("cache01",)):
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "mirrors": mirrors,
            "nodes": [{"name": name, "host": NODES[name][0], "role": "agent"} for name in nodes]}


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, ip, b"127.0.0.1\tlocalhost\n", files={REGISTRIES: content}, units=units_for("agent"))
             for name, (ip, content) in NODES.items()]
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as nodes:
        yield nodes


def registries(node) -> dict:
    return yaml.safe_load(node.read_file(REGISTRIES))


def apply(old, new, node, client_key):
    """An `up` from ``old`` to ``new`` on the node: the scripts resource's update (new scripts), then
    the k3s step (its text changed) and the restart it triggers (its text carries the k3s output)."""
    assert write_scripts(scripts_resource(new, node.name), node, client_key) == "updated"
    before, after = node_steps(old, node.name), node_steps(new, node.name)
    assert {step for step in STEPS if after[step].inputs["create"] != before[step].inputs["create"]} == {"k3s"}
    return [run_step(node, after[step], "update", client_key) for step in ("k3s", "restart")]


def test_caches_are_written_as_k3s_reads_them_and_follow_the_config(cluster, client_key):
    node = cluster["cache01"]
    one = evaluate(stack([{"upstream": "docker.io"}]))
    run_phase(one, [node], "create", client_key)
    document = registries(node)
    credentials = document["configs"][f"{HOSTNAME}:5000"]["auth"]
    assert document["mirrors"]["docker.io"] == {"endpoint": [f"https://{HOSTNAME}:5001"]}
    assert document["configs"][f"{HOSTNAME}:5001"] == {
        "tls": {"ca_file": "/etc/rancher/k3s/k3s-registry-k3s-registry-dev-ca.crt"}, "auth": credentials}
    assert credentials == {"username": one.outputs["registryUsername"], "password": one.outputs["registryPassword"]}
    assert document["mirrors"]["quay.io"] == {"endpoint": ["https://quay.lab.test"]}, "the admin's mirror stays"

    two = evaluate(stack([{"upstream": "docker.io"}, {"upstream": "ghcr.io", "port": 5443}]))
    assert all(run.exit_status == 0 for run in apply(one, two, node, client_key))
    added = registries(node)
    assert added["mirrors"]["ghcr.io"] == {"endpoint": [f"https://{HOSTNAME}:5443"]}
    assert set(added["configs"]) == {f"{HOSTNAME}:5000", f"{HOSTNAME}:5001", f"{HOSTNAME}:5443"}

    back = evaluate(stack([{"upstream": "ghcr.io", "port": 5443}]))
    assert all(run.exit_status == 0 for run in apply(two, back, node, client_key))
    removed = registries(node)
    assert "docker.io" not in removed["mirrors"] and f"{HOSTNAME}:5001" not in removed["configs"]
    assert removed["mirrors"]["ghcr.io"] == added["mirrors"]["ghcr.io"]
    assert removed["mirrors"]["quay.io"] == {"endpoint": ["https://quay.lab.test"]}

    scripts_dir = scripts_outputs(scripts_resource(back, "cache01"), node)["scripts_dir"]
    run_phase(back, [node], "delete", client_key)
    assert node.read_file(REGISTRIES) == THEIRS, "destroy gives the file back byte for byte"
    assert not node.exists(scripts_dir), "and the scripts go last"


def test_a_mirror_of_the_same_upstream_written_by_someone_else_stops_the_step_by_name(cluster, client_key):
    node = cluster["cache02"]
    declared = evaluate(stack([{"upstream": "docker.io"}], nodes=("cache02",)))
    assert write_scripts(scripts_resource(declared, "cache02"), node, client_key) == "created"
    run = run_step(node, node_steps(declared, "cache02")["k3s"], "create", client_key)
    assert run.exit_status != 0
    assert "registries.yaml already has a mirror for docker.io that this program did not write" in run.stderr
    assert node.read_file(REGISTRIES) == CONFLICTING, "nothing overwritten"
    run_phase(declared, [node], "delete", client_key)


def test_a_removed_cache_entry_is_drift_the_probe_names(cluster, client_key):
    node = cluster["cache01"]
    declared = evaluate(stack([{"upstream": "docker.io"}]))
    run_phase(declared, [node], "create", client_key)
    scripts = scripts_resource(declared, "cache01")

    assert refresh_scripts(scripts, node, client_key)["observed"] == {}
    document = registries(node)
    del document["mirrors"]["docker.io"]
    node.write_file(REGISTRIES, yaml.safe_dump(document), mode=0o600)
    assert refresh_scripts(scripts, node, client_key)["observed"] == {
        "k3s": "drift: registries.yaml has no mirror for docker.io"}
    run_phase(declared, [node], "delete", client_key)
    assert registries(node) == yaml.safe_load(THEIRS), "the hand-edited file keeps only the admin's entries"


def test_a_cache_made_anonymous_loses_its_credentials_on_the_node_and_the_registry_keeps_them(cluster, client_key):
    node = cluster["cache01"]
    original = node.read_file(REGISTRIES)
    protected = evaluate(stack([{"upstream": "docker.io"}]))
    run_phase(protected, [node], "create", client_key)
    anonymous = evaluate(stack([{"upstream": "docker.io", "anonymous": True}]))
    assert all(run.exit_status == 0 for run in apply(protected, anonymous, node, client_key))
    document = registries(node)
    assert document["configs"][f"{HOSTNAME}:5001"] == {
        "tls": {"ca_file": "/etc/rancher/k3s/k3s-registry-k3s-registry-dev-ca.crt"}}
    assert document["configs"][f"{HOSTNAME}:5000"]["auth"]["password"] == anonymous.outputs["registryPassword"]
    assert document["mirrors"]["docker.io"] == {"endpoint": [f"https://{HOSTNAME}:5001"]}
    assert refresh_scripts(scripts_resource(anonymous, "cache01"), node, client_key)["observed"] == {}
    run_phase(anonymous, [node], "delete", client_key)
    assert node.read_file(REGISTRIES) == original
