"""The node side as declared: one independent set of steps per node, wired to the right data.

Per node, directly under the ``ClusterNodes`` component: one ``NodeScripts`` resource, which
writes the node's step scripts and observes the node, and four Commands (trust, hosts, k3s,
restart) that run those scripts by a short line carrying the step's digest.
"""

import json

import pytest

from components.config import ConfigError, parse_settings
from components.node.plan import scripts_dir
from components.node.steps import OBSERVED_STEPS

from harness import GUIDE_CONFIG, evaluate, is_secret_marker
from nodebed import declared_plan

COMMAND = "command:remote:Command"
NODE_SCRIPTS = "pulumi-python:dynamic/k3s-registry:NodeScripts"
CLUSTER_NODES = "k3s-registry:index:ClusterNodes"
STEPS = {"trust", "hosts", "k3s", "restart"}
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


def scripts_of(evaluation, node):
    """The node's one NodeScripts resource: writes its step scripts, observes its drift."""
    return evaluation.named(f"nodes-{node}-scripts")


def plan_of(evaluation, node):
    return declared_plan(evaluation, node)


def settings_steps(evaluation, node):
    """The steps that write settings (and are observed for drift); the restart only applies them."""
    return {role: step for role, step in steps_of(evaluation, node).items() if role != "restart"}


def test_each_node_gets_trust_hosts_k3s_and_restart_steps_and_one_scripts_resource_named_after_it(cluster):
    nodes = cluster.named("nodes")
    assert nodes.type == CLUSTER_NODES
    for node, role in (("control01", "server"), ("cube01", "agent")):
        steps = steps_of(cluster, node)
        assert set(steps) == STEPS
        scripts = scripts_of(cluster, node)
        assert scripts.type == NODE_SCRIPTS
        assert (scripts.inputs["plan"]["node_name"], scripts.inputs["plan"]["role"]) == (node, role)
        # No component per node: every resource of the node sits directly under ClusterNodes.
        assert all(r.parent == nodes.urn for r in [scripts, *steps.values()]), node
    assert len(cluster.of_type(COMMAND)) == 8
    assert sorted(r.name for r in cluster.of_type(NODE_SCRIPTS)) == ["nodes-control01-scripts", "nodes-cube01-scripts"]
    assert {r.type for r in cluster.resources if r.parent == nodes.urn} == {COMMAND, NODE_SCRIPTS}
    assert cluster.outputs["configuredNodes"] == ["control01", "cube01"]


def test_no_node_step_depends_on_another_nodes_resources(cluster):
    for node in ("control01", "cube01"):
        own = {scripts_of(cluster, node).urn}
        for step in settings_steps(cluster, node).values():
            for dependency in step.dependencies:
                other = cluster.by_urn(dependency)
                assert not other.type.startswith("command:"), (step.name, dependency)
                if other.name.startswith("nodes-"):
                    assert dependency in own, (step.name, other.name)
        restart = steps_of(cluster, node)["restart"]
        node_dependencies = {cluster.by_urn(d).name for d in restart.dependencies if cluster.by_urn(d).name.startswith("nodes-")}
        assert node_dependencies == {f"nodes-{node}-scripts", f"nodes-{node}-k3s"}, node
        scripts = scripts_of(cluster, node)
        assert not any(cluster.by_urn(d).name.startswith("nodes-") for d in scripts.dependencies), node


def test_every_step_is_observed_by_the_one_scripts_resource_of_the_same_node(cluster):
    for node in ("control01", "cube01"):
        scripts = scripts_of(cluster, node)
        watched = scripts.inputs["connection"]
        outputs = scripts.outputs
        # The reader observes exactly the steps that write settings; the restart only applies them.
        assert set(OBSERVED_STEPS) == set(settings_steps(cluster, node)), node
        assert set(outputs["digests"]) == STEPS
        assert outputs["observed"] == {} and outputs["repairs"] == {}
        for name, step in steps_of(cluster, node).items():
            connection = step.inputs["connection"]
            assert (watched["host"], watched["port"], watched["user"]) == (
                connection["host"], connection["port"], connection["user"]), (node, name)
            assert watched.get("host_key") == connection.get("hostKey"), (node, name)
            assert watched.get("private_key") == connection.get("privateKey") == SSH_KEY, (node, name)
            assert is_secret_marker(scripts.wire_inputs["connection"].get("private_key"))
            # The step waits for the scripts and runs the version the resource wrote and observes.
            assert scripts.urn in step.dependencies, (node, name)
            assert f"{outputs['scripts_dir']}/run {name} install {outputs['digests'][name]}" in step.inputs["create"]
        assert not any(cluster.by_urn(d).type.startswith("command:") for d in scripts.dependencies), (
            "the scripts resource never waits for a command"
        )


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
    def restarts_it_waits_for(name):
        dependencies = steps_of(ha_cluster, name)["restart"].dependencies
        return sorted(ha_cluster.by_urn(d).name for d in dependencies if ha_cluster.by_urn(d).name.endswith("-restart"))

    assert restarts_it_waits_for("control01") == []
    assert restarts_it_waits_for("control02") == ["nodes-control01-restart"]
    assert restarts_it_waits_for("control03") == ["nodes-control02-restart"]
    assert restarts_it_waits_for("cube01") == [] and restarts_it_waits_for("cube02") == []


def test_settings_are_written_on_every_node_without_waiting_for_anything(ha_cluster):
    """Only the node's own scripts (and the CA and password they carry) come first: no workload,
    no other node."""
    material = {"tls:index/selfSignedCert:SelfSignedCert", "random:index/randomPassword:RandomPassword"}
    for node in THREE_SERVERS:
        scripts = scripts_of(ha_cluster, node["name"])
        assert {ha_cluster.by_urn(d).type for d in scripts.dependencies} <= material, scripts.name
        for step in settings_steps(ha_cluster, node["name"]).values():
            assert scripts.urn in step.dependencies, step.name
            others = {ha_cluster.by_urn(d).type for d in step.dependencies if d != scripts.urn}
            assert others <= material, step.name


def test_steps_are_owned_by_their_node_under_the_cluster_nodes_component(cluster):
    nodes = cluster.named("nodes")
    directories = set()
    for node in ("control01", "cube01"):
        plan = plan_of(cluster, node)
        assert plan.owner == f"{nodes.urn}#{node}"
        # The scripts (and so the steps' ownership records) are the owner's; so is their directory.
        directory = scripts_of(cluster, node).outputs["scripts_dir"]
        assert directory == scripts_dir(plan.instance_id, plan.owner) == plan.scripts_dir
        scripts = plan.scripts()
        for name in ("trust/install", "trust/remove", "hosts/install", "hosts/remove", "k3s/install", "k3s/remove",
                     "restart/remove"):
            assert plan.owner in scripts[name], (node, name)
        for role, step in steps_of(cluster, node).items():
            assert step.inputs["delete"].split()[-3:] == [f"{directory}/run", role, "remove"], (node, role)
        directories.add(directory)
    other_stack = evaluate({**GUIDE_CONFIG, "nodes": NODES, "sshPrivateKey": SSH_KEY}, secret_keys=("sshPrivateKey",),
                           stack="prod")
    for node in ("control01", "cube01"):
        assert plan_of(other_stack, node).owner == f"{other_stack.named('nodes').urn}#{node}"
        directories.add(scripts_of(other_stack, node).outputs["scripts_dir"])
    assert len(directories) == 4, "one scripts directory per node and per stack"


def test_connection_uses_each_nodes_host_port_user_and_pinned_host_key(cluster):
    control = steps_of(cluster, "control01")["trust"].inputs["connection"]
    cube = steps_of(cluster, "cube01")["trust"].inputs["connection"]
    assert (control["host"], control["port"], control["user"]) == ("192.168.0.101", 22, "root")
    assert "hostKey" not in control
    assert (cube["host"], cube["port"], cube["user"]) == ("192.168.0.111", 2222, "ubuntu")
    assert cube["hostKey"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvXw2nFakeHostKeyForTestsOnly0000000000"
    assert "host_key" not in scripts_of(cluster, "control01").inputs["connection"]
    assert scripts_of(cluster, "cube01").inputs["connection"]["host_key"] == cube["hostKey"]


def test_ssh_private_key_reaches_connections_only_as_a_secret(cluster):
    for step in cluster.of_type(COMMAND):
        wire = step.wire_inputs["connection"]
        assert is_secret_marker(wire) or is_secret_marker(wire.get("privateKey")), step.name
        assert step.inputs["connection"]["privateKey"] == SSH_KEY
        for text_input in ("create", "delete"):
            assert "PRIVATE KEY" not in step.inputs[text_input]
    for scripts in cluster.of_type(NODE_SCRIPTS):
        wire = scripts.wire_inputs["connection"]
        assert is_secret_marker(wire) or is_secret_marker(wire.get("private_key")), scripts.name
        assert scripts.inputs["connection"]["private_key"] == SSH_KEY
        assert "PRIVATE KEY" not in json.dumps({k: v for k, v in scripts.inputs.items() if k != "connection"})


def test_without_a_key_the_ssh_agent_is_used():
    evaluation = evaluate({**GUIDE_CONFIG, "nodes": NODES[:1]})
    for step in evaluation.of_type(COMMAND):
        assert "privateKey" not in step.inputs["connection"]
    assert "private_key" not in scripts_of(evaluation, "control01").inputs["connection"]


def test_root_runs_scripts_with_sh_and_other_users_through_passwordless_sudo(cluster):
    for node, prefix in (("control01", "sh "), ("cube01", "sudo -n sh ")):
        runner = f"{scripts_of(cluster, node).outputs['scripts_dir']}/run"
        for name, step in steps_of(cluster, node).items():
            for text_input in ("create", "delete"):
                assert step.inputs[text_input].startswith(f"{prefix}{runner} {name} "), (node, name, text_input)


def test_data_never_travels_in_ssh_environment_variables(cluster):
    for step in cluster.of_type(COMMAND):
        assert not step.inputs.get("environment")
        assert step.inputs["addPreviousOutputInEnv"] is False


def test_the_ca_certificate_and_never_a_key_reaches_the_nodes(cluster):
    certificate = cluster.one("tls:index/selfSignedCert:SelfSignedCert").outputs["certPem"]
    body_line = certificate.splitlines()[1]
    for node in ("control01", "cube01"):
        plan = plan_of(cluster, node)
        assert plan.certificate_pem == certificate
        scripts = plan.scripts()
        # k3s's containerd gets the CA through registries.yaml; the OS store only with osTrustStore.
        assert body_line in scripts["k3s/install"] and body_line not in scripts["trust/install"], node
        assert not plan.os_trust_store, node
        assert not any("PRIVATE KEY" in script for script in scripts.values()), node
    key_lines = [key.outputs["privateKeyPem"].splitlines()[1] for key in cluster.of_type("tls:index/privateKey:PrivateKey")]
    for step in cluster.of_type(COMMAND):
        for text_input in ("create", "delete", "stdin"):
            text = step.inputs.get(text_input, "")
            assert "PRIVATE KEY" not in text and not any(line in text for line in key_lines), (step.name, text_input)
    for scripts in cluster.of_type(NODE_SCRIPTS):
        sent = json.dumps({k: v for k, v in scripts.inputs.items() if k != "connection"})
        assert "PRIVATE KEY" not in sent and not any(line in sent for line in key_lines), scripts.name


def test_commands_have_no_update_text_so_an_update_reruns_the_idempotent_create(cluster):
    """pulumi-command runs ``create`` again on an update when there is no ``update``."""
    for step in cluster.of_type(COMMAND):
        assert "update" not in step.inputs, step.name
        assert " install " in step.inputs["create"], step.name


def test_each_step_is_undone_on_destroy_before_it_is_recreated(cluster):
    for step in cluster.of_type(COMMAND):
        assert step.inputs["delete"].endswith(" remove"), step.name
        assert step.delete_before_replace is True
        assert step.inputs["triggers"] == [step.inputs["connection"]["host"], step.inputs["connection"]["port"]]


def test_restart_targets_k3s_on_servers_and_k3s_agent_on_agents(cluster):
    server = plan_of(cluster, "control01").scripts()["restart/install"]
    agent = plan_of(cluster, "cube01").scripts()["restart/install"]
    assert "unit='k3s'\n" in server and "k3s-agent" not in server
    assert "unit='k3s-agent'\n" in agent
    for script in (server, agent):
        assert 'systemctl restart --no-block "$unit"' in script
    for node in ("control01", "cube01"):
        digest = scripts_of(cluster, node).outputs["digests"]["restart"]
        assert f"/run restart install {digest}\n" in steps_of(cluster, node)["restart"].inputs["create"], node


def test_restart_can_be_turned_off():
    evaluation = evaluate({**GUIDE_CONFIG, "nodes": NODES, "restartK3s": "false"})
    for node in ("control01", "cube01"):
        assert scripts_of(evaluation, node).inputs["plan"]["restart_k3s"] is False
        for name, script in plan_of(evaluation, node).scripts().items():
            assert "systemctl restart" not in script, (node, name)
            assert "rc-service k3s" not in script, (node, name)


def changed_resources(before, after):
    """The node resources whose inputs differ: the steps that run again, and the scripts resource
    (which rewrites the scripts on the node)."""
    node_types = (COMMAND, NODE_SCRIPTS)
    old = {r.name: r.inputs for r in before.resources if r.type in node_types}
    return sorted(r.name for r in after.resources if r.type in node_types and r.inputs != old[r.name])


@pytest.fixture(scope="module")
def baseline():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES[:1]})


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        ({"loadBalancerIp": "192.168.0.203"}, ["hosts"]),
        # The restart's delete script names the address it takes out of registries.yaml. (A restart
        # also runs whenever the k3s step changed the file: its text carries the step's output.)
        ({"hostname": "images.cube.local"}, ["hosts", "k3s", "restart"]),
        ({"port": "5443"}, ["k3s", "restart"]),
        ({"certValidityDays": "90"}, []),
        ({"caValidityDays": "5000"}, ["k3s"]),
        ({"namespace": "registry", "storageSize": "30Gi"}, []),
        ({"osTrustStore": "true"}, ["trust"]),
        # The guide's key leaves the OS store whether or not ours goes in. (The restart's own text
        # does not change: it runs again because the k3s step's output does.)
        ({"migrateFromGuide": "true"}, ["hosts", "k3s", "trust"]),
    ],
)
def test_a_change_reconfigures_exactly_the_affected_steps(baseline, change, expected):
    """Nodes trust the CA, which names the hostname: a new serving certificate touches no node."""
    after = evaluate({**GUIDE_CONFIG, "nodes": NODES[:1], **change})
    scripts = ["nodes-control01-scripts"] if expected else []
    assert changed_resources(baseline, after) == sorted([*scripts, *(f"nodes-control01-{step}" for step in expected)])


@pytest.fixture(scope="module")
def baseline_with_os_store():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES[:1], "osTrustStore": "true"})


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"hostname": "images.cube.local"}, ["hosts", "k3s", "restart", "trust"]),
        ({"certValidityDays": "90"}, []),
        ({"caValidityDays": "5000"}, ["k3s", "trust"]),
    ],
)
def test_with_the_os_trust_store_a_new_ca_reaches_it_too(baseline_with_os_store, change, expected):
    after = evaluate({**GUIDE_CONFIG, "nodes": NODES[:1], "osTrustStore": "true", **change})
    scripts = ["nodes-control01-scripts"] if expected else []
    assert changed_resources(baseline_with_os_store, after) == sorted(
        [*scripts, *(f"nodes-control01-{step}" for step in expected)])


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
