"""Drift on real SSH hosts: every tamper is seen by ONE refresh of the node, repaired by that step alone.

Per node the program declares one ``NodeScripts`` resource (``nodes-<node>-scripts``), driven
here as the engine drives it (tests/nodebed.py: create or diff+update, read on refresh), and
the node's Commands, run over SSH as pulumi-command runs them. A repair is what the next `up`
does: the resource's update counts a repair for the drifted step, the program evaluated with
those outputs gives that step a new create text, and pulumi-command runs exactly the Commands
whose text changed. One node is reached as root (systemd, host key pinned), one as `deploy`
through sudo (OpenRC, any host key).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import dill
import pytest
import yaml

from components.node.nodes import instance_id_for
from components.node.runner import reader_script
from components.node.scripts_resource import NodeScriptsProvider, ProbeError

from harness import PROJECT, Evaluation, evaluate
from nodebed import (
    NodeSpec,
    declared_plan,
    file_times,
    free_addresses,
    node_steps,
    outs,
    provider_props,
    refresh_scripts,
    run_phase,
    run_step,
    running_nodes,
    scripts_outputs,
    scripts_resource,
    units_for,
    write_scripts,
)
from testbed.sshnodes import DEFAULT_MANAGED_PATHS, DEPLOY_HOME, start_node

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
WRITTEN = f"/var/lib/k3s-registry/{INSTANCE}/written"  # what the k3s step last wrote, to give back on destroy
GENERATION = f"/var/lib/k3s-registry/{INSTANCE}/generation"  # counts registries.yaml writes: a repair is one
NO_PYYAML_PYTHON = "/usr/local/sbin/python3"  # ahead of /usr/bin in root's PATH and sudo's secure_path
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(51, 60)]  # this file's range; other tests use other ones

_IPS = free_addresses(CANDIDATE_IPS, 3)
NODES: dict[str, dict[str, Any]] = {
    "drift01": {"ip": _IPS[0], "role": "server", "user": "root", "init": "systemd"},
    "drift02": {"ip": _IPS[1], "role": "agent", "user": "deploy", "init": "openrc"},
}
DOWN_NODE_IP = _IPS[2]
OBSERVED = ("trust", "hosts", "k3s")
STEPS = ("trust", "hosts", "k3s", "restart")
OTHER_PASSWORD = "someone-elses-registry-password"


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, spec["ip"], f"127.0.0.1 localhost {name}\n".encode(), spec["init"], units=units_for(spec["role"]))
             for name, spec in NODES.items()]
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as started:
        for node in started.values():
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        yield started


@pytest.fixture(scope="module")
def config(cluster):
    """The stack: drift01's host key pinned (as `ssh-keyscan` would give it), drift02's not."""
    nodes = [{"name": name, "host": spec["ip"], "role": spec["role"], "user": spec["user"]} for name, spec in NODES.items()]
    nodes[0]["hostKey"] = cluster["drift01"].host_public_key
    # The OS trust store on (opt-in), so its step has a CA to lose.
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "osTrustStore": "true", "nodes": nodes}


@pytest.fixture(scope="module")
def declared(config):
    return evaluate(config)


def restart_lines(node) -> list[str]:
    return [line for line in node.restart_log() if "restart" in line.split()]


def comparable(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {path: content for path, content in snapshot.items() if path not in (JAVA_KEYSTORE, GENERATION)}


@dataclass
class Applied:
    snapshots: dict[str, dict[str, bytes]]
    """Each node's files right after the first `up`."""
    created: dict[str, dict]
    """Each node's NodeScripts outputs as create left them."""
    k3s_stdout: dict[str, str] = field(default_factory=dict)
    """Each node's k3s Command output as of its last run: the restart's text carries it."""


@pytest.fixture(scope="module")
def applied(declared, cluster, client_key) -> Applied:
    """The first `pulumi up` of every node: its scripts resource created, then its steps."""
    runs = run_phase(declared, cluster.values(), "create", client_key)
    return Applied(
        snapshots={name: comparable(node.snapshot()) for name, node in cluster.items()},
        created={name: dict(scripts_outputs(scripts_resource(declared, name), node)) for name, node in cluster.items()},
        k3s_stdout={run.node: run.stdout for run in runs if run.step == "k3s"},
    )


def sessions(node) -> int:
    """Authenticated SSH connections the node's sshd has accepted so far (as bench/run.py counts them)."""
    return node.log().count("Accepted ")


def refresh(declared, node, client_key) -> dict:
    """`pulumi refresh` of the node's scripts resource: what it observed off, checked to be ONE session."""
    before = sessions(node)
    observed = refresh_scripts(scripts_resource(declared, node.name), node, client_key)["observed"]
    assert sessions(node) - before == 1, f"a refresh of {node.name} is one SSH session"
    return observed


def state(declared, node) -> dict:
    return dict(scripts_outputs(scripts_resource(declared, node.name), node))


def program(config, node_name: str, outputs: dict, k3s_stdout: str = "") -> Evaluation:
    """The program run again with what the state holds: the scripts resource's outputs and the k3s step's stdout."""
    return evaluate(config, outputs_by_name={f"nodes-{node_name}-scripts": outputs,
                                             f"nodes-{node_name}-k3s": {"stdout": k3s_stdout}})


def creates(evaluation: Evaluation, node_name: str) -> dict[str, str]:
    return {step: resource.inputs["create"] for step, resource in node_steps(evaluation, node_name).items()}


def up_node(config, node, before: dict, after: dict, applied: Applied, client_key) -> dict:
    """What `pulumi up` runs on the node once its scripts resource went from ``before`` to ``after``
    outputs: every Command whose create text changed (pulumi-command re-runs create), in order; the
    restart's text carries the k3s step's new output. Returns the runs by step."""
    name = node.name
    old = creates(program(config, name, before, applied.k3s_stdout[name]), name)
    runs = {}
    for step in STEPS:
        new = node_steps(program(config, name, after, applied.k3s_stdout[name]), name)[step]
        if new.inputs["create"] != old[step]:
            runs[step] = run_step(node, new, "update", client_key).check()
            if step == "k3s":
                applied.k3s_stdout[name] = runs[step].stdout
    return runs


@pytest.fixture
def restore(config, declared, cluster, applied, client_key):
    """Whatever a test did, the next one starts from applied nodes that read in sync (the steps are
    idempotent): a refresh, the scripts resource's update, every step again, and a refresh."""
    yield
    for node in cluster.values():
        node.remove(NO_PYYAML_PYTHON)
        resource = scripts_resource(declared, node.name)
        refresh_scripts(resource, node, client_key)
        for run in run_phase(declared, [node], "update", client_key):
            if run.step == "k3s":
                applied.k3s_stdout[node.name] = run.stdout
        assert refresh_scripts(resource, node, client_key)["observed"] == {}, node.name


def with_key(outputs: dict, resource, client_key) -> dict:
    """The state as the provider host hands it to read: the connection carries the key."""
    return {**outputs, "connection": provider_props(resource, client_key)["connection"]}


def password_of(declared) -> str:
    return declared.outputs["registryPassword"]


# ------------------------------------------------------------------ no drift

@pytest.mark.parametrize("node_name", NODES)
def test_create_records_the_node_as_applied(node_name, applied, declared):
    created = applied.created[node_name]
    assert created["observed"] == {} and created["repairs"] == {}
    plan = declared_plan(declared, node_name)
    assert created["digests"] == plan.step_digests() and created["scripts_dir"] == plan.scripts_dir


@pytest.mark.parametrize("node_name", NODES)
def test_without_drift_repeated_refreshes_stay_in_sync_and_nothing_changes(
    node_name, config, declared, cluster, applied, client_key
):
    node = cluster[node_name]
    resource = scripts_resource(declared, node_name)
    before = state(declared, node)
    texts = creates(program(config, node_name, before), node_name)
    snapshot = node.snapshot()
    times = file_times(node, DEFAULT_MANAGED_PATHS)
    for _ in range(3):
        assert refresh(declared, node, client_key) == {}
        assert write_scripts(resource, node, client_key) == "unchanged", "diff is quiet: the up does nothing"
    assert state(declared, node) == before
    assert creates(program(config, node_name, state(declared, node)), node_name) == texts
    assert node.snapshot() == snapshot and file_times(node, DEFAULT_MANAGED_PATHS) == times


def test_the_non_root_user_is_really_used(declared, cluster):
    assert scripts_resource(declared, "drift02").inputs["connection"]["user"] == "deploy"
    for step, command in node_steps(declared, "drift02").items():
        assert command.inputs["connection"]["user"] == "deploy"
        assert command.inputs["create"].startswith("sudo -n sh "), step
    assert all(text.startswith("sh ") for text in creates(declared, "drift01").values())


# ------------------------------------------------------------------ every tamper: seen, then repaired

def remove_managed_line(node):
    node.write_file("/etc/hosts", b"\n".join(line for line in node.read_file("/etc/hosts").split(b"\n")
                                             if MARKER.encode() not in line))


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


# Tampers that rewrite registries.yaml as a whole: the repair adds our entries to what is there.
REWRITTEN_BY_HAND = ("registries.yaml emptied", "our endpoint changed")
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
def test_a_tamper_is_seen_by_one_refresh_and_repaired_by_that_step_alone(
    tamper_name, node_name, config, declared, cluster, applied, client_key, restore
):
    step, tamper, reasons = TAMPERS[tamper_name]
    node = cluster[node_name]
    resource = scripts_resource(declared, node_name)
    before = state(declared, node)
    assert before["observed"] == {}
    tamper(node)

    observed = refresh(declared, node, client_key)
    assert set(observed) == {step}, f"{tamper_name} is seen on {step} and nowhere else: {observed}"
    assert observed[step].startswith("drift: "), observed
    for reason in reasons:
        assert reason in observed[step], observed
    assert password_of(declared) not in json.dumps(observed)

    sessions_before = sessions(node)
    assert write_scripts(resource, node, client_key) == "updated", "diff reports the drift"
    assert sessions(node) == sessions_before, "the scripts on the node are current: the update writes nothing"
    after = state(declared, node)
    assert after["repairs"] == {**before["repairs"], step: before["repairs"].get(step, 0) + 1}
    assert after["observed"] == {} and after["digests"] == before["digests"]

    old_texts = creates(program(config, node_name, before, applied.k3s_stdout[node_name]), node_name)
    new_texts = creates(program(config, node_name, after, applied.k3s_stdout[node_name]), node_name)
    assert {s for s in STEPS if new_texts[s] != old_texts[s]} == {step}
    assert new_texts[step].endswith(f"\n# repair {after['repairs'][step]}")

    generation = int(node.read_file(GENERATION))
    restarts_before = restart_lines(node)
    runs = up_node(config, node, before, after, applied, client_key)
    if step == "k3s":
        # The restart's text carries the k3s step's output (its generation): when the repair
        # rewrote registries.yaml the engine runs the restart next, and k3s restarts once.
        rewritten = "registries.yaml: yes" in runs["k3s"].stdout
        assert f"k3s settings generation: {generation + rewritten}" in runs["k3s"].stdout
        assert set(runs) == ({"k3s", "restart"} if rewritten else {"k3s"})
        restart = {"drift01": "restart --no-block k3s", "drift02": "k3s-agent restart"}[node_name]
        assert restart_lines(node) == restarts_before + ([restart] if rewritten else [])
    else:
        assert set(runs) == {step}
        assert restart_lines(node) == restarts_before

    assert refresh(declared, node, client_key) == {}
    assert write_scripts(resource, node, client_key) == "unchanged"
    repaired, written = comparable(node.snapshot()), dict(applied.snapshots[node_name])
    if tamper_name in REWRITTEN_BY_HAND:
        # What the hand left stays (its comment, its order), our entries come back: k3s reads
        # what up wrote. The step's own record of the file follows it.
        assert yaml.safe_load(repaired.pop(REGISTRIES)) == yaml.safe_load(written.pop(REGISTRIES))
        assert repaired.pop(WRITTEN) == node.read_file(REGISTRIES)
        written.pop(WRITTEN)
        # The next test starts from the bytes up wrote.
        for path in (REGISTRIES, WRITTEN):
            node.write_file(path, applied.snapshots[node_name][path], mode=0o600)
    assert repaired == written, "the repair puts back exactly what up wrote"


def test_drift_reasons_never_show_file_contents(declared, cluster, client_key, restore):
    node = cluster["drift01"]
    ours = node.read_file(REGISTRIES)
    node.write_file(REGISTRIES, yaml.safe_dump({
        "mirrors": {"docker.io": {"endpoint": ["https://mirror.drift.test"]}},
        "configs": {"other.drift.test:5000": {"auth": {"username": "bob", "password": OTHER_PASSWORD}}},
    }).encode(), mode=0o600)
    try:
        observed = refresh(declared, node, client_key)
    finally:
        node.write_file(REGISTRIES, ours, mode=0o600)  # a repair would keep their entries beside ours
    assert set(observed) == {"k3s"} and f"no mirror for {ADDRESS}" in observed["k3s"]
    assert OTHER_PASSWORD not in observed["k3s"] and "bob" not in observed["k3s"]
    assert "mirror.drift.test" not in observed["k3s"]


def test_unparsable_registries_yaml_is_drift_without_the_parsers_quote(config, declared, cluster, applied, client_key,
                                                                       restore):
    node = cluster["drift02"]
    before = state(declared, node)
    node.write_file(REGISTRIES, f"configs: [password: {OTHER_PASSWORD}\n".encode(), mode=0o600)
    assert refresh(declared, node, client_key) == {"k3s": "drift: registries.yaml is not valid YAML"}
    assert write_scripts(scripts_resource(declared, "drift02"), node, client_key) == "updated"
    # The repair refuses to overwrite what it cannot parse: a person has to look, as the
    # failed `pulumi up` tells them. Here the person removes the file.
    repaired = node_steps(program(config, "drift02", state(declared, node), applied.k3s_stdout["drift02"]), "drift02")
    assert repaired["k3s"].inputs["create"] != creates(program(config, "drift02", before), "drift02")["k3s"]
    repair = run_step(node, repaired["k3s"], "update", client_key)
    assert repair.exit_status != 0 and "not valid YAML" in repair.stderr
    assert OTHER_PASSWORD not in repair.stderr
    node.remove(REGISTRIES)


# ------------------------------------------------------------------ the scripts themselves

@pytest.mark.parametrize("node_name", NODES)
def test_a_deleted_scripts_dir_is_seen_and_the_update_puts_the_scripts_back(
    node_name, config, declared, cluster, applied, client_key, restore
):
    node = cluster[node_name]
    resource = scripts_resource(declared, node_name)
    before = state(declared, node)
    directory = before["scripts_dir"]
    written = node.snapshot([directory])
    assert set(written) >= {f"{directory}/run", f"{directory}/id", f"{directory}/k3s/probe.sh"}
    node.remove(directory)
    stale = node_steps(program(config, node_name, before, applied.k3s_stdout[node_name]), node_name)
    assert run_step(node, stale["hosts"], "update", client_key).exit_status != 0, "no script, no step"

    observed = refresh(declared, node, client_key)
    assert observed == {
        **dict.fromkeys(OBSERVED, "drift: the scripts of this step on the node are missing or changed"),
        "scripts": "drift: missing or changed on the node: trust, hosts, k3s, restart",
    }
    sessions_before = sessions(node)
    assert write_scripts(resource, node, client_key) == "updated"
    assert sessions(node) - sessions_before == 1, "the scripts are written back in one session"
    assert node.snapshot([directory]) == written, "the same scripts, the same id"
    after = state(declared, node)
    assert after["repairs"] == {step: before["repairs"].get(step, 0) + 1 for step in OBSERVED} | {
        step: count for step, count in before["repairs"].items() if step not in OBSERVED}

    runs = up_node(config, node, before, after, applied, client_key)
    assert set(runs) == set(OBSERVED), "registries.yaml was intact: no restart"
    assert refresh(declared, node, client_key) == {}
    assert comparable(node.snapshot()) == applied.snapshots[node_name]


@pytest.mark.parametrize("step,observed", [
    ("hosts", {"hosts": "drift: the scripts of this step on the node are missing or changed",
               "scripts": "drift: missing or changed on the node: hosts"}),
    ("restart", {"scripts": "drift: missing or changed on the node: restart"}),
])
def test_a_changed_script_is_refused_by_the_runner_seen_by_refresh_and_put_back(
    step, observed, config, declared, cluster, applied, client_key, restore
):
    node = cluster["drift01"]
    resource = scripts_resource(declared, "drift01")
    before = state(declared, node)
    script = f"{before['scripts_dir']}/{step}/install.sh"
    original = node.read_file(script)
    node.write_file(script, original + b"echo changed by hand\n")
    commands = node_steps(program(config, "drift01", before, applied.k3s_stdout["drift01"]), "drift01")
    refused = run_step(node, commands[step], "update", client_key)
    assert refused.exit_status != 0 and "not the version this update expects" in refused.stderr
    assert "changed by hand" not in refused.stdout

    assert refresh(declared, node, client_key) == observed
    assert write_scripts(resource, node, client_key) == "updated"
    assert node.read_file(script) == original
    after = state(declared, node)
    counted = {name: before["repairs"].get(name, 0) + 1 for name in observed if name != "scripts"}
    assert after["repairs"] == {**before["repairs"], **counted}, "the scripts pseudo-step is no repair"
    assert set(up_node(config, node, before, after, applied, client_key)) == set(counted)
    assert refresh(declared, node, client_key) == {}


# ------------------------------------------------------------------ credentials on stdin

def test_the_k3s_steps_credentials_are_checked_from_stdin_never_from_the_text(declared, cluster, applied, client_key):
    node = cluster["drift01"]
    resource = scripts_resource(declared, "drift01")
    credentials = resource.inputs["credentials"]
    assert node_steps(declared, "drift01")["k3s"].inputs["stdin"] == credentials, "what the step writes"
    password = json.loads(credentials)["password"]
    current = state(declared, node)
    assert current["credentials"] == credentials
    assert password not in reader_script(current["scripts_dir"], current["digests"])
    assert password not in json.dumps(resource.inputs["plan"])

    def observe(credentials) -> dict:
        props = {**with_key(current, resource, client_key), "credentials": credentials}
        return outs(NodeScriptsProvider().read("id", {key: value for key, value in props.items() if value is not None})
                    )["observed"]

    assert observe(credentials) == {}
    other = observe(json.dumps({"username": json.loads(credentials)["username"], "password": "not-it"}))
    assert other == {"k3s": f"drift: registries.yaml: configs.{ADDRESS} has other credentials"}
    unexpected = observe(None)
    assert unexpected == {"k3s": f"drift: registries.yaml: configs.{ADDRESS} has credentials this program did not set"}
    for observed in (other, unexpected):
        assert password not in json.dumps(observed)


def test_credentials_removed_by_hand_are_drift(declared, cluster, client_key, restore):
    node = cluster["drift02"]
    document = yaml.safe_load(node.read_file(REGISTRIES))
    del document["configs"][ADDRESS]["auth"]
    node.write_file(REGISTRIES, yaml.safe_dump(document, sort_keys=False).encode(), mode=0o600)
    assert refresh(declared, node, client_key) == {"k3s": f"drift: registries.yaml: configs.{ADDRESS} has no credentials"}


# ------------------------------------------------------------------ refresh must not guess

def test_refresh_raises_when_the_node_is_down(config, client_key, tmp_path):
    node = start_node("drift03", DOWN_NODE_IP, tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line, units=units_for("agent"))
    lone = evaluate({**config, "nodes": [{"name": "drift03", "host": DOWN_NODE_IP, "role": "agent"}]})
    resource = scripts_resource(lone, "drift03")
    try:
        assert write_scripts(resource, node, client_key) == "created"
        assert scripts_outputs(resource, node)["observed"] == {}, "create records the state the Commands apply next"
        never_configured = refresh(lone, node, client_key)
        assert set(never_configured) == set(OBSERVED), never_configured
        assert all(verdict.startswith("drift: ") for verdict in never_configured.values())
        kept = scripts_outputs(resource, node)
    finally:
        node.stop()
    with pytest.raises(ProbeError, match=f"cannot reach {DOWN_NODE_IP}:22"):
        refresh_scripts(resource, node, client_key)
    assert scripts_outputs(resource, node) == kept, "a failed refresh changes no state"


@pytest.mark.parametrize("node_name", NODES)
def test_refresh_raises_when_a_probe_cannot_judge(node_name, declared, cluster, applied, client_key, restore):
    """No PyYAML on the node: the k3s probe fails naming the package, so the whole refresh fails."""
    node = cluster[node_name]
    before = state(declared, node)
    node.write_file(NO_PYYAML_PYTHON, b'#!/bin/sh\nexec /usr/bin/python3 -I -S "$@"\n', mode=0o755)
    try:
        with pytest.raises(ProbeError, match=r"could not check for drift on .*\(exit 1\): .*"
                                             r"checking registries.yaml needs python3 with PyYAML"):
            refresh_scripts(scripts_resource(declared, node_name), node, client_key)
    finally:
        node.remove(NO_PYYAML_PYTHON)
    assert state(declared, node) == before, "a failed refresh changes no state"
    assert refresh(declared, node, client_key) == {}


def test_a_pinned_host_key_rejects_another_server(declared, cluster, applied, client_key):
    current = state(declared, cluster["drift01"])
    assert current["connection"]["host_key"] == cluster["drift01"].host_public_key
    props = with_key(current, scripts_resource(declared, "drift01"), client_key)
    assert outs(NodeScriptsProvider().read("id", props))["observed"] == {}
    props["connection"] = {**props["connection"], "host_key": cluster["drift02"].host_public_key}
    with pytest.raises(ProbeError, match="BadHostKey"):
        NodeScriptsProvider().read("id", props)


def test_without_a_host_key_any_server_key_is_accepted(declared, cluster, applied, client_key):
    current = state(declared, cluster["drift02"])
    assert "host_key" not in current["connection"]
    assert refresh(declared, cluster["drift02"], client_key) == {}


# ------------------------------------------------------------------ the provider as Pulumi stores it

def test_the_declared_provider_loaded_from_its_serialized_form_observes_real_drift(declared, cluster, applied, client_key,
                                                                                  restore):
    resource = scripts_resource(declared, "drift02")
    loaded = dill.loads(base64.b64decode(resource.inputs["__provider"]))
    props = with_key(state(declared, cluster["drift02"]), resource, client_key)
    assert loaded.read("id", props).outs["observed"] == {}
    remove_managed_line(cluster["drift02"])
    assert loaded.read("id", props).outs["observed"] == {"hosts": "drift: /etc/hosts has no managed line"}


@pytest.mark.parametrize("node_name", NODES)
def test_probes_write_nothing_on_the_node(node_name, declared, cluster, applied, client_key, restore):
    node = cluster[node_name]
    remove_managed_line(node)
    node.remove(K3S_CA)
    # The node's own files a script could touch (the test host's /etc overlay, the homes, our
    # state); /tmp and /usr are the machine's, shared with whatever else runs there.
    paths = (*DEFAULT_MANAGED_PATHS, "/etc", "/root", DEPLOY_HOME)
    before = node.snapshot(paths)
    times = file_times(node, paths)
    observed = refresh(declared, node, client_key)
    assert set(observed) == {"hosts", "k3s"}
    assert node.snapshot(paths) == before and file_times(node, paths) == times
