"""Drift on real SSH hosts: every tamper is seen by refresh (read), repaired by the step's update.

The steps are the exact Commands the program declares (run over SSH as pulumi-command would);
the provider is called as Pulumi's provider host calls it, with plain dicts. One node is
reached as root (systemd), one as `deploy` through sudo (OpenRC).
"""

from __future__ import annotations

import base64
import json

import dill
import pytest
import yaml
from pulumi.dynamic.dynamic import serialize_provider

from components.drift import EXPECTED, NodeStepProbeProvider, ProbeError
from components.drift_probes import probe_scripts
from components.node_scripts import NodeTarget
from components.nodes import instance_id_for
from harness import PROJECT, evaluate
from nodebed import NodeSpec, free_addresses, node_steps, run_phase, run_step, running_nodes
from testbed.sshnodes import start_node

HOSTNAME = "registry.drift.test"
REGISTRY_IP = "127.0.0.250"  # only written into /etc/hosts; nothing connects to it
ADDRESS = f"{HOSTNAME}:5000"
INSTANCE = instance_id_for(PROJECT, "dev")
MARKER = f"# managed by k3s-registry ({INSTANCE})"
MANAGED_LINE = f"{REGISTRY_IP}\t{HOSTNAME}\t{MARKER}".encode()
ANCHOR = f"/usr/local/share/ca-certificates/k3s-registry-{INSTANCE}.crt"
K3S_CA = f"/etc/rancher/k3s/k3s-registry-{INSTANCE}-ca.crt"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"  # stamps import times: compared by content elsewhere
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(51, 60)]  # this file's range; other tests use other ones




_IPS = free_addresses(CANDIDATE_IPS, 3)
NODES = {
    "drift01": {"ip": _IPS[0], "role": "server", "user": "root", "init": "systemd"},
    "drift02": {"ip": _IPS[1], "role": "agent", "user": "deploy", "init": "openrc"},
}
DOWN_NODE_IP = _IPS[2]
STEPS = ("trust", "hosts", "k3s")
OTHER_PASSWORD = "someone-elses-registry-password"


def stack_config():
    nodes = [{"name": name, "host": spec["ip"], "role": spec["role"], "user": spec["user"]} for name, spec in NODES.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": nodes}


@pytest.fixture(scope="module")
def declared():
    return evaluate(stack_config())


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, spec["ip"], f"127.0.0.1 localhost {name}\n".encode(), spec["init"])
             for name, spec in NODES.items()]
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as started:
        for node in started.values():
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        yield started


GENERATION = f"/var/lib/k3s-registry/{INSTANCE}/generation"  # counts registries.yaml writes: a repair is one


def restart_lines(node) -> list[str]:
    return [line for line in node.restart_log() if "restart" in line.split()]


def comparable(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {path: content for path, content in snapshot.items() if path not in (JAVA_KEYSTORE, GENERATION)}


@pytest.fixture(scope="module")
def applied(declared, cluster, client_key):
    """The first `pulumi up` of the steps, and each node's files right after it."""
    run_phase(declared, cluster.values(), "create", client_key)
    return {name: comparable(node.snapshot()) for name, node in cluster.items()}


def step_props(declared, node, step, client_key, **overrides):
    """The observation's inputs as the provider host hands them over: plain dicts.

    Connection and stdin (the registry credentials of the k3s step) are the step's Command's own.
    """
    command = node_steps(declared, node.name)[step].inputs
    connection = command["connection"]
    target = NodeTarget(node_name=node.name, role=NODES[node.name]["role"], instance_id=INSTANCE)
    probe = probe_scripts(
        target, certificate_pem=declared.outputs["caCertificatePem"], hostname=HOSTNAME, ip_address=REGISTRY_IP,
        address=ADDRESS,
    )[step]
    props = {
        "connection": {"host": connection["host"], "port": connection["port"], "user": connection["user"],
                       "private_key": client_key.private_key_text, "host_key": node.host_public_key},
        "probe": probe,
        "probe_stdin": command.get("stdin"),
        "expected": EXPECTED,
        **overrides,
    }
    return {key: value for key, value in props.items() if value is not None}


class Observer:
    """One node's three observations, driven like the engine drives them (create, then refresh = read)."""

    def __init__(self, provider, declared, node, client_key):
        self.provider, self.node = provider, node
        self.inputs = {step: step_props(declared, node, step, client_key) for step in STEPS}
        self.states, self.ids = {}, {}
        for step in STEPS:
            created = provider.create(self.inputs[step])
            self.states[step] = {**created.outs, "__provider": "serialized"}
            self.ids[step] = created.id

    def refresh(self, step):
        self.states[step] = self.provider.read(self.ids[step], self.states[step]).outs
        return self.states[step]["observed"]

    def diff(self, step):
        return self.provider.diff(self.ids[step], self.states[step], self.inputs[step])

    def update(self, step):
        self.states[step] = {**self.provider.update(self.ids[step], self.states[step], self.inputs[step]).outs}
        return self.states[step]


@pytest.fixture(scope="module")
def observers(applied, declared, cluster, client_key):
    provider = NodeStepProbeProvider()
    return {name: Observer(provider, declared, node, client_key) for name, node in cluster.items()}


@pytest.fixture
def restore(declared, cluster, client_key):
    """Whatever a test did, the next one starts from applied nodes (the steps are idempotent)."""
    yield
    run_phase(declared, cluster.values(), "update", client_key)


# ------------------------------------------------------------------ no drift

@pytest.mark.parametrize("node_name", NODES)
def test_without_drift_every_step_reads_in_sync_and_diffs_quiet(observers, node_name):
    observer = observers[node_name]
    for step in STEPS:
        assert observer.states[step]["observed"] == EXPECTED and observer.states[step]["repairs"] == 0
        assert observer.refresh(step) == EXPECTED, step
        assert observer.diff(step).changes is False, step
        assert observer.refresh(step) == EXPECTED, "a second refresh agrees: deterministic"


def test_the_non_root_user_is_really_used(declared, cluster):
    assert node_steps(declared, "drift02")["k3s"].inputs["connection"]["user"] == "deploy"


# ------------------------------------------------------------------ every tamper: seen, then repaired

def remove_managed_line(node):
    node.write_file("/etc/hosts", b"\n".join(l for l in node.read_file("/etc/hosts").split(b"\n") if MARKER.encode() not in l))


def change_managed_ip(node):
    node.write_file("/etc/hosts", node.read_file("/etc/hosts").replace(REGISTRY_IP.encode(), b"127.0.0.249"))


def add_second_managed_line(node):
    node.write_file("/etc/hosts", node.read_file("/etc/hosts") + MANAGED_LINE.replace(b"127.0.0.250", b"10.0.0.9") + b"\n")


def move_managed_line_down(node):
    first, rest = node.read_file("/etc/hosts").split(b"\n", 1)
    node.write_file("/etc/hosts", rest + first + b"\n")


def delete_anchor_and_rebuild(node):
    node.remove(ANCHOR)
    assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0


def empty_registries(node):
    node.write_file(REGISTRIES, b"# emptied by hand\n", mode=0o600)


def change_our_endpoint(node):
    document = yaml.safe_load(node.read_file(REGISTRIES))
    document["mirrors"][ADDRESS]["endpoint"] = ["http://mirror.drift.test:5000"]
    node.write_file(REGISTRIES, yaml.safe_dump(document, sort_keys=False).encode(), mode=0o600)


TAMPERS = {
    # name: (step, tamper, words the drift reason must contain)
    "anchor deleted, bundle rebuilt": ("trust", delete_anchor_and_rebuild,
                                       [f"certificate file {ANCHOR} is missing", "bundle", "does not contain"]),
    "k3s CA file deleted": ("k3s", lambda node: node.remove(K3S_CA), [f"k3s: CA file {K3S_CA} is missing"]),
    "managed line removed": ("hosts", remove_managed_line, ["/etc/hosts has no managed line"]),
    "managed line's IP changed": ("hosts", change_managed_ip, ["managed line maps another address or name"]),
    "second managed line": ("hosts", add_second_managed_line, ["/etc/hosts has 2 managed lines instead of one"]),
    "managed line not first": ("hosts", move_managed_line_down, ["managed line is not the first line"]),
    "registries.yaml emptied": ("k3s", empty_registries,
                                [f"no mirror for {ADDRESS}", f"no configs entry for {ADDRESS}"]),
    "registries.yaml deleted": ("k3s", lambda node: node.remove(REGISTRIES), ["registries.yaml is missing"]),
    "our endpoint changed": ("k3s", change_our_endpoint, [f"the mirror for {ADDRESS} is not https://{ADDRESS} alone"]),
}


@pytest.mark.parametrize("node_name", NODES)
@pytest.mark.parametrize("tamper_name", TAMPERS)
def test_a_tamper_is_seen_by_refresh_and_repaired_by_the_steps_update(
    tamper_name, node_name, observers, applied, declared, cluster, client_key, restore
):
    step, tamper, reasons = TAMPERS[tamper_name]
    node, observer = cluster[node_name], observers[node_name]
    repairs_before = observer.states[step]["repairs"]
    tamper(node)

    observed = observer.refresh(step)
    assert observed.startswith("drift: "), observed
    for reason in reasons:
        assert reason in observed, observed
    assert observer.diff(step).changes is True
    for other in set(STEPS) - {step}:
        assert observer.refresh(other) == EXPECTED, f"{tamper_name} must not show on {other}"
        assert observer.diff(other).changes is False, other

    updated = observer.update(step)
    assert updated["observed"] == EXPECTED and updated["repairs"] == repairs_before + 1
    generation = int(node.read_file(GENERATION))
    steps = node_steps(declared, node_name)
    repair = run_step(node, steps[step], "update", client_key).check()  # pulumi-command's repair
    if step == "k3s":
        # The restart step's text carries the k3s step's output (its generation): when the repair
        # rewrote registries.yaml the engine runs the restart next, and k3s restarts once.
        rewritten = "registries.yaml: yes" in repair.stdout
        assert f"k3s settings generation: {generation + rewritten}" in repair.stdout
        restarts_before = restart_lines(node)
        run_step(node, steps["restart"], "update", client_key).check()
        restart = {"drift01": "restart k3s", "drift02": "k3s-agent restart"}[node_name]
        assert restart_lines(node) == restarts_before + ([restart] if rewritten else [])

    assert observer.refresh(step) == EXPECTED
    assert observer.diff(step).changes is False
    assert comparable(node.snapshot()) == applied[node_name], "the repair puts back exactly what up wrote"


def test_drift_reasons_never_show_file_contents(observers, cluster, restore):
    node, observer = cluster["drift01"], observers["drift01"]
    node.write_file(REGISTRIES, yaml.safe_dump({
        "mirrors": {"docker.io": {"endpoint": ["https://mirror.drift.test"]}},
        "configs": {"other.drift.test:5000": {"auth": {"username": "bob", "password": OTHER_PASSWORD}}},
    }).encode(), mode=0o600)
    observed = observer.refresh("k3s")
    assert f"no mirror for {ADDRESS}" in observed
    assert OTHER_PASSWORD not in observed and "bob" not in observed and "mirror.drift.test" not in observed


def test_unparsable_registries_yaml_is_drift_without_the_parsers_quote(observers, declared, cluster, client_key, restore):
    node = cluster["drift02"]
    node.write_file(REGISTRIES, f"configs: [password: {OTHER_PASSWORD}\n".encode(), mode=0o600)
    observed = observers["drift02"].refresh("k3s")
    assert observed == "drift: registries.yaml is not valid YAML"
    # The repair refuses to overwrite what it cannot parse: a person has to look, as the
    # failed `pulumi up` tells them. Here the person removes the file.
    repair = run_step(node, node_steps(declared, "drift02")["k3s"], "update", client_key)
    assert repair.exit_status != 0 and "not valid YAML" in repair.stderr
    node.remove(REGISTRIES)


# ------------------------------------------------------------------ credentials on stdin

def test_the_k3s_steps_credentials_are_checked_from_stdin_never_from_the_text(declared, cluster, client_key):
    node = cluster["drift01"]
    credentials = node_steps(declared, "drift01")["k3s"].inputs["stdin"]
    password = json.loads(credentials)["password"]
    provider = NodeStepProbeProvider()

    def observe(**overrides):
        props = step_props(declared, node, "k3s", client_key, **overrides)
        assert password not in props["probe"]
        return provider.read("id", props).outs["observed"]

    assert observe() == EXPECTED
    other = observe(probe_stdin=json.dumps({"username": json.loads(credentials)["username"], "password": "not-it"}))
    assert other == f"drift: registries.yaml: configs.{ADDRESS} has other credentials"
    unexpected = observe(probe_stdin="{}")
    assert unexpected == f"drift: registries.yaml: configs.{ADDRESS} has credentials this program did not set"
    for observed in (other, unexpected):
        assert password not in observed


def test_credentials_removed_by_hand_are_drift(observers, cluster, restore):
    node = cluster["drift02"]
    document = yaml.safe_load(node.read_file(REGISTRIES))
    del document["configs"][ADDRESS]["auth"]
    node.write_file(REGISTRIES, yaml.safe_dump(document, sort_keys=False).encode(), mode=0o600)
    assert observers["drift02"].refresh("k3s") == f"drift: registries.yaml: configs.{ADDRESS} has no credentials"


# ------------------------------------------------------------------ refresh must not guess

def test_read_raises_when_the_node_is_down(declared, client_key, tmp_path):
    node = start_node("drift03", DOWN_NODE_IP, tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line)
    provider = NodeStepProbeProvider()
    target = NodeTarget(node_name="drift03", role="agent", instance_id=INSTANCE)
    props = {
        "connection": {"host": node.ip, "port": 22, "user": "root", "private_key": client_key.private_key_text},
        "probe": probe_scripts(target, certificate_pem=declared.outputs["caCertificatePem"], hostname=HOSTNAME,
                               ip_address=REGISTRY_IP, address=ADDRESS)["hosts"],
        "expected": EXPECTED,
    }
    try:
        state = provider.create(props).outs
        assert state["observed"] == EXPECTED, "create records the state the Command applies next"
        assert provider.read("id", state).outs["observed"].startswith("drift: "), "never configured"
    finally:
        node.stop()
    with pytest.raises(ProbeError, match=f"cannot reach {DOWN_NODE_IP}:22"):
        provider.read("id", state)


def test_a_pinned_host_key_rejects_another_server(observers, cluster):
    state = dict(observers["drift01"].states["hosts"])
    state["connection"] = {**state["connection"], "host_key": cluster["drift02"].host_public_key}
    with pytest.raises(ProbeError, match="BadHostKey"):
        NodeStepProbeProvider().read("id", state)


def test_without_a_host_key_any_server_key_is_accepted(observers):
    state = dict(observers["drift02"].states["trust"])
    state["connection"] = {k: v for k, v in state["connection"].items() if k != "host_key"}
    assert NodeStepProbeProvider().read("id", state).outs["observed"] == EXPECTED


def test_a_failing_probe_raises_instead_of_answering(observers):
    state = {**observers["drift01"].states["hosts"], "probe": "set -eu\necho 'k3s-registry: no' >&2\nexit 4\n"}
    with pytest.raises(ProbeError, match=r"failed \(exit 4\): k3s-registry: no"):
        NodeStepProbeProvider().read("id", state)


# ------------------------------------------------------------------ the provider as Pulumi stores it

def test_a_provider_loaded_from_its_serialized_form_observes_real_drift(observers, cluster, restore):
    loaded = dill.loads(base64.b64decode(serialize_provider(NodeStepProbeProvider())))
    state = observers["drift02"].states["hosts"]
    assert loaded.read("id", state).outs["observed"] == EXPECTED
    remove_managed_line(cluster["drift02"])
    assert loaded.read("id", state).outs["observed"] == "drift: /etc/hosts has no managed line"


def test_probes_write_nothing_on_the_node(observers, cluster, restore):
    node = cluster["drift02"]
    remove_managed_line(node)
    node.remove(K3S_CA)
    before = node.snapshot()
    for step in STEPS:
        observers["drift02"].refresh(step)
    assert node.snapshot() == before
