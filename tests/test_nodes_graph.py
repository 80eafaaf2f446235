"""The node side as declared: one independent set of steps per node, wired to the right data."""

import pytest

from components.config import ConfigError, parse_settings
from harness import GUIDE_CONFIG, evaluate, is_secret_marker

COMMAND = "command:remote:Command"
NODES = [
    {"name": "control01", "host": "192.168.0.101", "role": "server"},
    {"name": "cube01", "host": "192.168.0.111", "port": 2222, "user": "ubuntu", "role": "agent",
     "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvXw2nFakeHostKeyForTestsOnly0000000000 cube01"},
]
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def cluster():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES, "sshPrivateKey": SSH_KEY}, secret_keys=("sshPrivateKey",))


def steps_of(evaluation, node):
    return {r.name.rsplit("-", 1)[1]: r for r in evaluation.of_type(COMMAND) if r.name.startswith(f"nodes-{node}-")}


def test_each_node_gets_trust_hosts_and_k3s_steps_named_after_it(cluster):
    for node in ("control01", "cube01"):
        steps = steps_of(cluster, node)
        assert set(steps) == {"trust", "hosts", "k3s", "restart"}
        component = cluster.named(f"nodes-{node}")
        assert component.type == "k3s-registry:index:NodeConfiguration"
        assert all(step.parent == component.urn for step in steps.values())
    assert len(cluster.of_type(COMMAND)) == 8
    assert cluster.outputs["configuredNodes"] == ["control01", "cube01"]


def test_no_node_step_depends_on_another_nodes_resources(cluster):
    by_urn = {r.urn: r for r in cluster.resources}
    for node in ("control01", "cube01"):
        for step in settings_steps(cluster, node).values():
            for dependency in step.dependencies:
                other = by_urn[dependency]
                assert not other.type.startswith("command:"), (step.name, dependency)
                if other.name.startswith("nodes-"):
                    assert other.name == f"{step.name}-observed", (step.name, dependency)


def test_every_step_has_its_own_drift_observation_of_the_same_node(cluster):
    observations = {r.name: r for r in cluster.resources if r.type.endswith(":NodeStepObservation")}
    for node in ("control01", "cube01"):
        for step in settings_steps(cluster, node).values():
            observation = observations.pop(f"{step.name}-observed")
            assert observation.parent == step.parent
            assert observation.inputs["connection"]["host"] == step.inputs["connection"]["host"]
            assert observation.inputs["connection"]["user"] == step.inputs["connection"]["user"]
            assert observation.inputs["expected"] == "in-sync"
            by_urn = {r.urn: r for r in cluster.resources}
            assert not any(by_urn[d].type.startswith("command:") for d in observation.dependencies), (
                "an observation never waits for a command"
            )
    assert observations == {}


def settings_steps(evaluation, node):
    """The steps that write settings (and are observed for drift); the restart only applies them."""
    return {role: step for role, step in steps_of(evaluation, node).items() if role != "restart"}


THREE_SERVERS = [
    {"name": "control01", "host": "192.168.0.101", "role": "server"},
    {"name": "cube01", "host": "192.168.0.111", "role": "agent"},
    {"name": "control02", "host": "192.168.0.102", "role": "server"},
    {"name": "cube02", "host": "192.168.0.112", "role": "agent"},
    {"name": "control03", "host": "192.168.0.103", "role": "server"},
]


@pytest.fixture(scope="module")
def ha_cluster():
    return evaluate({**GUIDE_CONFIG, "nodes": THREE_SERVERS})


def test_k3s_restarts_only_after_the_registry_workloads_are_in_place(ha_cluster):
    workloads = {ha_cluster.one("kubernetes:apps/v1:Deployment").urn, ha_cluster.one("kubernetes:core/v1:Service").urn}
    for node in THREE_SERVERS:
        steps = steps_of(ha_cluster, node["name"])
        assert workloads | {steps["k3s"].urn} <= set(steps["restart"].dependencies), node["name"]


def test_servers_restart_one_after_another_and_agents_in_parallel(ha_cluster):
    by_urn = {r.urn: r for r in ha_cluster.resources}

    def restarts_it_waits_for(name):
        dependencies = steps_of(ha_cluster, name)["restart"].dependencies
        return sorted(by_urn[d].name for d in dependencies if by_urn[d].name.endswith("-restart"))

    assert restarts_it_waits_for("control01") == []
    assert restarts_it_waits_for("control02") == ["nodes-control01-restart"]
    assert restarts_it_waits_for("control03") == ["nodes-control02-restart"]
    assert restarts_it_waits_for("cube01") == [] and restarts_it_waits_for("cube02") == []


def test_settings_are_written_on_every_node_without_waiting_for_anything(ha_cluster):
    by_urn = {r.urn: r for r in ha_cluster.resources}
    for node in THREE_SERVERS:
        for step in settings_steps(ha_cluster, node["name"]).values():
            assert {by_urn[d].type for d in step.dependencies} <= {
                "pulumi-python:dynamic/k3s-registry:NodeStepObservation", "tls:index/selfSignedCert:SelfSignedCert",
                "random:index/randomPassword:RandomPassword",
            }, step.name


def test_steps_are_owned_by_their_nodes_component(cluster):
    for node in ("control01", "cube01"):
        component = cluster.named(f"nodes-{node}")
        for role, step in steps_of(cluster, node).items():
            assert component.urn in step.inputs["delete"], (node, role)


def test_connection_uses_each_nodes_host_port_user_and_pinned_host_key(cluster):
    control = steps_of(cluster, "control01")["trust"].inputs["connection"]
    cube = steps_of(cluster, "cube01")["trust"].inputs["connection"]
    assert (control["host"], control["port"], control["user"]) == ("192.168.0.101", 22, "root")
    assert "hostKey" not in control
    assert (cube["host"], cube["port"], cube["user"]) == ("192.168.0.111", 2222, "ubuntu")
    assert cube["hostKey"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvXw2nFakeHostKeyForTestsOnly0000000000"


def test_ssh_private_key_reaches_connections_only_as_a_secret(cluster):
    for step in cluster.of_type(COMMAND):
        wire = step.wire_inputs["connection"]
        assert is_secret_marker(wire) or is_secret_marker(wire.get("privateKey")), step.name
        assert step.inputs["connection"]["privateKey"] == SSH_KEY
        for text_input in ("create", "update", "delete"):
            assert "PRIVATE KEY" not in step.inputs[text_input]


def test_without_a_key_the_ssh_agent_is_used():
    evaluation = evaluate({**GUIDE_CONFIG, "nodes": NODES[:1]})
    for step in evaluation.of_type(COMMAND):
        assert "privateKey" not in step.inputs["connection"]


def test_root_runs_scripts_with_sh_and_other_users_through_passwordless_sudo(cluster):
    for name, step in steps_of(cluster, "control01").items():
        assert step.inputs["create"].startswith("sh -c "), name
    for name, step in steps_of(cluster, "cube01").items():
        for text_input in ("create", "update", "delete"):
            assert step.inputs[text_input].startswith("sudo -n sh -c "), (name, text_input)


def test_data_never_travels_in_ssh_environment_variables(cluster):
    for step in cluster.of_type(COMMAND):
        assert not step.inputs.get("environment")
        assert step.inputs["addPreviousOutputInEnv"] is False


def test_the_ca_certificate_and_never_a_key_reaches_the_nodes(cluster):
    certificate = cluster.one("tls:index/selfSignedCert:SelfSignedCert").outputs["certPem"]
    body_line = certificate.splitlines()[1]
    steps = steps_of(cluster, "cube01")
    assert body_line in steps["trust"].inputs["create"]
    assert body_line in steps["k3s"].inputs["create"]
    for key in cluster.of_type("tls:index/privateKey:PrivateKey"):
        for step in cluster.of_type(COMMAND):
            for text_input in ("create", "update", "delete", "stdin"):
                assert key.outputs["privateKeyPem"].splitlines()[1] not in step.inputs.get(text_input, "")
                assert "PRIVATE KEY" not in step.inputs.get(text_input, "")


def test_update_runs_the_same_idempotent_script_as_create(cluster):
    for step in cluster.of_type(COMMAND):
        assert step.inputs["update"] == step.inputs["create"]


def test_each_step_is_undone_on_destroy_before_it_is_recreated(cluster):
    for step in cluster.of_type(COMMAND):
        assert step.inputs["delete"]
        assert step.delete_before_replace is True
        assert step.inputs["triggers"] == [step.inputs["connection"]["host"], step.inputs["connection"]["port"]]


def test_restart_targets_k3s_on_servers_and_k3s_agent_on_agents(cluster):
    server = steps_of(cluster, "control01")["restart"].inputs["create"]
    agent = steps_of(cluster, "cube01")["restart"].inputs["create"]
    assert "systemctl restart k3s ||" in server.replace("'\"'\"'", "'") and "k3s-agent" not in server
    assert "systemctl restart k3s-agent" in agent


def test_restart_can_be_turned_off():
    evaluation = evaluate({**GUIDE_CONFIG, "nodes": NODES, "restartK3s": "false"})
    for step in evaluation.of_type(COMMAND):
        assert "systemctl restart" not in step.inputs["create"]
        assert "rc-service k3s" not in step.inputs["create"]


def changed_steps(before, after):
    old = {r.name: r.inputs for r in before.of_type(COMMAND)}
    return sorted(r.name for r in after.of_type(COMMAND) if r.inputs != old[r.name])


@pytest.fixture(scope="module")
def baseline():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES[:1]})


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        ({"loadBalancerIp": "192.168.0.203"}, ["hosts"]),
        # The restart's delete names the address it takes out of registries.yaml. (A restart also
        # runs whenever the k3s step changed the file: its text carries the step's output.)
        ({"hostname": "images.cube.local"}, ["hosts", "k3s", "restart", "trust"]),
        ({"port": "5443"}, ["k3s", "restart"]),
        ({"certValidityDays": "90"}, []),
        ({"caValidityDays": "5000"}, ["k3s", "trust"]),
        ({"namespace": "registry", "storageSize": "30Gi"}, []),
    ],
)
def test_a_change_reconfigures_exactly_the_affected_steps(baseline, change, expected):
    """Nodes trust the CA, which names the hostname: a new serving certificate touches no node."""
    after = evaluate({**GUIDE_CONFIG, "nodes": NODES[:1], **change})
    assert changed_steps(baseline, after) == [f"nodes-control01-{step}" for step in expected]


@pytest.mark.parametrize(
    "nodes, fragment",
    [
        ([{"name": "a", "host": "h1", "role": "agent"}, {"name": "a", "host": "h2", "role": "agent"}],
         "nodes 'a' and 'a' have the same name"),
        ([{"name": "a", "host": "h1", "role": "agent"}, {"name": "b", "host": "h1", "role": "agent"}],
         "same host and port"),
        ([{"name": "a", "host": " ", "role": "agent"}], "node 'a': host is empty"),
        ([{"name": "a", "host": "h", "port": 0, "role": "agent"}], "node 'a': port 0 is out of range"),
        ([{"name": "a", "host": "h", "port": "ssh", "role": "agent"}], "node 'a': port must be a whole number"),
        ([{"name": "a", "host": "h", "role": "worker"}], "node 'a': role 'worker' is not known"),
        ([{"name": "a", "host": "h"}], "node 'a': role None is not known"),
        ([{"name": "A b", "host": "h", "role": "agent"}], "node 'A b': name must be"),
        ([{"host": "h", "role": "agent"}], "node #1: name must be"),
        ([{"name": "a", "host": "h", "role": "agent", "usr": "x"}], "node 'a': unknown key(s) usr"),
        ([{"name": "a", "host": "h", "role": "agent", "user": "bad user"}], "node 'a': user 'bad user'"),
        ([{"name": "a", "host": "h", "role": "agent", "hostKey": "not-a-key"}], "node 'a': hostKey"),
        ({"name": "a"}, "must be a list of nodes"),
    ],
)
def test_bad_node_entries_name_the_node_and_the_key(nodes, fragment):
    import json

    with pytest.raises(ConfigError) as error:
        parse_settings({"hostname": "r.cube.local", "loadBalancerIp": "192.168.0.202", "nodes": json.dumps(nodes)})
    assert "k3s-registry:nodes:" in str(error.value)
    assert fragment in str(error.value)


def test_restart_k3s_must_be_a_boolean():
    with pytest.raises(ConfigError) as error:
        parse_settings({"hostname": "r.cube.local", "loadBalancerIp": "192.168.0.202", "restartK3s": "yes"})
    assert "k3s-registry:restartK3s: must be true or false" in str(error.value)
