"""components/node/plan.py and runner.py: a node's scripts, shipped once, and the short lines that run them.

As text (POSIX sh, shellcheck-clean), as a resource input (the plan, round-tripped through the
wire), as command lines (digest, sudo, repair count), and on a real test host: the digests the
program computes are the ones the node computes, a changed or missing script is named and
refused, and the scripts directory goes only when it is still its resource's.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml
from google.protobuf import json_format, struct_pb2

from components.node import ssh
from components.node.k3s_service import DEFAULT_RESTART_TIMEOUT
from components.node.plan import NodePlan
from components.node.runner import (
    RUNNER,
    SCRIPTS,
    command_line,
    command_texts,
    installer_script,
    parse_observations,
    reader_script,
    remover_script,
    runner_script,
)
from components.node.scripts_resource import NodeScriptsProvider
from components.node.shell import IN_SYNC
from components.node.steps import ACTIONS, OBSERVED_STEPS, STEPS
from components.node.steps.registries_edit import merge
from components.node.target import STATE_ROOT

from harness import GUIDE_CONFIG, evaluate
from nodebed import (
    NodeSpec,
    declared_plan,
    free_addresses,
    node_steps,
    plan_of,
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

NODES = [
    {"name": "control01", "host": "192.168.0.101", "role": "server"},
    {"name": "cube01", "host": "192.168.0.111", "user": "deploy", "role": "agent"},
]
TUNED = {"mirrors": [{"upstream": "docker.io"}, {"upstream": "ghcr.io", "port": 5443}], "migrateFromGuide": "true",
         "k3sRestartTimeout": "45", "osTrustStore": "true"}
REQUIRED_KEYS = {"node_name", "role", "instance_id", "owner", "certificate_pem", "hostname", "ip_address", "address"}
RESOURCE_ID = "root@127.0.0.171:22#0123456789abcdef"


def variant(plan: NodePlan, **changes) -> NodePlan:
    """Another plan with these settings changed (it renders its own scripts)."""
    return dataclasses.replace(plan, **changes)


@pytest.fixture(scope="module")
def default_cluster():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES})


@pytest.fixture(scope="module")
def tuned_cluster():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES, **TUNED})


@pytest.fixture(scope="module")
def plans(default_cluster, tuned_cluster):
    """Plans as the program declares them: defaults, and every setting away from its default."""
    tuned = declared_plan(tuned_cluster, "cube01")
    return {
        "server": declared_plan(default_cluster, "control01"),
        "agent": declared_plan(default_cluster, "cube01"),
        "tuned server": declared_plan(tuned_cluster, "control01"),
        "tuned agent": tuned,
        "tuned agent, restart off": variant(tuned, restart_k3s=False),
        # migrateFromGuide without the OS store: the guide's key still leaves it.
        "tuned agent, OS trust store off": variant(tuned, os_trust_store=False),
    }


def every_script(plan: NodePlan) -> dict[str, str]:
    """Every script a node runs for this plan: the steps', and those of the scripts resource."""
    directory = plan.scripts_dir
    return {
        **plan.scripts(),
        "runner": runner_script(directory),
        "installer": installer_script(plan, RESOURCE_ID),
        "reader": reader_script(directory, plan.step_digests()),
        "remover": remover_script(directory, RESOURCE_ID),
    }


# ------------------------------------------------------------------ as text

def test_the_plans_differ_where_their_settings_do(plans):
    """So the checks below see every variant of the scripts, not five copies of one."""
    tuned = plans["tuned agent"]
    assert tuned.caches and tuned.migrate_from_guide and tuned.restart_timeout_seconds == 45 and tuned.os_trust_store
    assert not plans["agent"].os_trust_store
    assert plans["server"].role == "server" and plans["agent"].role == "agent"
    digests = {label: tuple(plan.step_digests().values()) for label, plan in plans.items()}
    assert len(set(digests.values())) == len(plans)


def test_every_script_is_shellcheck_clean_posix_sh_that_stops_at_the_first_error(plans):
    checked: dict[str, str] = {}
    for label, plan in plans.items():
        for name, script in every_script(plan).items():
            checked.setdefault(script, f"{label}: {name}")
    assert len(checked) > 40
    for script, name in checked.items():
        assert script.startswith("set -eu\n"), name
        result = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=script.encode(),
                                capture_output=True, check=False)
        assert result.returncode == 0, f"{name}:\n{result.stdout.decode()}"


def test_every_step_has_its_actions_rendered_and_nothing_else(plans):
    for label, plan in plans.items():
        assert set(plan.scripts()) == {f"{step}/{action}" for step, actions in ACTIONS.items() for action in actions}, label
        assert set(plan.step_digests()) == set(STEPS), label


def test_the_installer_writes_every_script_and_the_id_and_no_key(plans, tuned_cluster):
    plan = plans["tuned agent"]
    installer = installer_script(plan, RESOURCE_ID)
    for text in [*plan.scripts().values(), runner_script(plan.scripts_dir), RESOURCE_ID + "\n"]:
        assert text in installer
    assert plan.certificate_pem.splitlines()[1] in installer
    for key in tuned_cluster.of_type("tls:index/privateKey:PrivateKey"):
        assert not any(line in installer for line in key.outputs["privateKeyPem"].splitlines()[1:-1]), key.name


@pytest.mark.parametrize(("port", "mirrors", "address", "caches"), [
    ("443", [{"upstream": "ghcr.io", "port": 5443}], "registry.cube.local", {"ghcr.io": "registry.cube.local:5443"}),
    ("5000", [{"upstream": "docker.io", "port": 443}], "registry.cube.local:5000", {"docker.io": "registry.cube.local"}),
])
def test_on_port_443_entries_are_keyed_by_the_bare_host_name_as_image_references_carry_it(port, mirrors, address, caches):
    """containerd looks hosts configuration up by the reference's host as written, and an image
    on 443 is written without a port: entries keyed host:443 would never apply."""
    evaluation = evaluate({**GUIDE_CONFIG, "nodes": NODES, "port": port, "mirrors": mirrors})
    assert GUIDE_CONFIG["hostname"] == "registry.cube.local"
    assert evaluation.outputs["registryAddress"] == address
    plan = declared_plan(evaluation, "cube01")
    assert plan.address == address and dict(plan.caches) == caches
    merged = yaml.safe_load(merge("", plan.address, "/ca.crt", caches=[{"upstream": u, "address": a} for u, a in plan.caches]))
    assert merged["mirrors"][address] == {"endpoint": [f"https://{address}"]}
    assert set(merged["configs"]) == {address, *caches.values()}
    assert not any(key.endswith(":443") for key in (*merged["mirrors"], *merged["configs"]))


# ------------------------------------------------------------------ as a resource input

def wire(props: dict) -> dict:
    """What the engine hands the provider back: a protobuf Struct, where every number is a double."""
    struct = struct_pb2.Struct()
    struct.update(props)
    return json_format.MessageToDict(struct)


@pytest.mark.parametrize("label", ["server", "agent", "tuned server", "tuned agent", "tuned agent, restart off"])
def test_a_plan_survives_the_wire(plans, label):
    plan = plans[label]
    props = plan.to_props()
    back = NodePlan.from_props(wire(props))
    assert back == plan
    assert back.scripts() == plan.scripts() and back.step_digests() == plan.step_digests()
    assert NodePlan.from_props(json.loads(json.dumps(props))) == plan


def test_settings_at_their_default_are_left_out_of_the_plan(default_cluster, plans):
    assert set(plans["server"].to_props()) == REQUIRED_KEYS
    assert default_cluster.named("nodes-control01-scripts").inputs["plan"] == plans["server"].to_props()
    restart_off = plans["tuned agent, restart off"].to_props()
    assert restart_off["caches"] == [["docker.io", "registry.cube.local:5001"], ["ghcr.io", "registry.cube.local:5443"]]
    assert restart_off["migrate_from_guide"] is True
    assert restart_off["restart_k3s"] is False
    assert restart_off["restart_timeout_seconds"] == 45
    assert restart_off["os_trust_store"] is True
    assert set(restart_off) == REQUIRED_KEYS | {"caches", "migrate_from_guide", "restart_k3s", "restart_timeout_seconds",
                                                "os_trust_store"}


def test_numbers_from_the_wire_are_whole_numbers_again(plans):
    props = wire(plans["tuned agent"].to_props())
    assert isinstance(props["restart_timeout_seconds"], float)
    plan = NodePlan.from_props(props)
    assert plan.restart_timeout_seconds == 45 and isinstance(plan.restart_timeout_seconds, int)
    assert "timeout=45\n" in plan.scripts()["restart/install"]
    assert "45.0" not in "".join(plan.scripts().values())
    default = NodePlan.from_props(wire(plans["agent"].to_props()))
    assert default.restart_timeout_seconds == DEFAULT_RESTART_TIMEOUT
    assert f"timeout={DEFAULT_RESTART_TIMEOUT}\n" in default.scripts()["restart/install"]
    # The connection's port arrives as a double too; the resource id names it as a whole number.
    assert ssh.where({"host": "192.168.0.111", "port": 2222.0, "user": "deploy"}) == "deploy@192.168.0.111:2222"


def test_caches_arrive_as_lists_or_tuples(plans):
    plan = plans["tuned agent"]
    as_tuples = {**plan.to_props(), "caches": tuple(tuple(cache) for cache in plan.caches)}
    assert NodePlan.from_props(as_tuples) == plan


# ------------------------------------------------------------------ as command lines

def test_create_lines_carry_the_steps_digest_and_delete_lines_none(plans):
    plan = plans["server"]
    digests = plan.step_digests()
    texts = command_texts(plan.scripts_dir, digests, {}, "root")
    assert set(texts) == {f"{step}/{phase}" for step in STEPS for phase in ("create", "delete")}
    runner = f"{plan.scripts_dir}/{RUNNER}"
    for step in STEPS:
        assert texts[f"{step}/create"].split() == ["sh", runner, step, "install", digests[step]]
        assert texts[f"{step}/delete"].split() == ["sh", runner, step, "remove"]
        assert not any(digest in texts[f"{step}/delete"] for digest in digests.values())


def test_other_users_run_the_same_lines_through_passwordless_sudo(plans):
    plan = plans["agent"]
    as_root = command_texts(plan.scripts_dir, plan.step_digests(), {"k3s": 1}, "root")
    as_deploy = command_texts(plan.scripts_dir, plan.step_digests(), {"k3s": 1}, "deploy")
    assert as_deploy == {key: f"sudo -n {text}" for key, text in as_root.items()}


@pytest.mark.parametrize("count, suffix", [(None, ""), (0, ""), (0.0, ""), (1, "\n# repair 1"), (3.0, "\n# repair 3")])
def test_a_repair_count_is_added_to_the_create_line_only_once_there_is_one(plans, count, suffix):
    plan = plans["server"]
    plain = command_texts(plan.scripts_dir, plan.step_digests(), {}, "root")
    repaired = command_texts(plan.scripts_dir, plan.step_digests(), {"hosts": count}, "root")
    assert repaired["hosts/create"] == plain["hosts/create"] + suffix
    assert {key: text for key, text in repaired.items() if key != "hosts/create"} == \
        {key: text for key, text in plain.items() if key != "hosts/create"}


@pytest.mark.parametrize(
    "change, steps",
    [
        ({"ip_address": "192.168.0.203"}, ["hosts"]),
        ({"address": "registry.cube.local:5443"}, ["k3s", "restart"]),
        ({"restart_timeout_seconds": 60}, ["k3s", "restart"]),
        ({"caches": (("docker.io", "registry.cube.local:5001"),)}, ["k3s"]),
    ],
)
def test_a_changed_script_changes_exactly_its_steps_create_line(plans, change, steps):
    plan = plans["server"]
    changed = variant(plan, **change)
    assert changed.scripts_dir == plan.scripts_dir
    before = command_texts(plan.scripts_dir, plan.step_digests(), {}, "root")
    after = command_texts(changed.scripts_dir, changed.step_digests(), {}, "root")
    assert sorted(key for key in before if before[key] != after[key]) == [f"{step}/create" for step in steps]


def test_the_scripts_directory_is_the_owners():
    plan = NodePlan(node_name="a", role="agent", instance_id="k3s-registry-dev", owner="urn:x#a", certificate_pem="",
                    hostname="r", ip_address="192.168.0.202", address="r:5000")
    assert plan.scripts_dir.startswith(f"{STATE_ROOT}/scripts-")
    assert variant(plan, owner="urn:x#b").scripts_dir != plan.scripts_dir
    assert variant(plan, instance_id="k3s-registry-prod").scripts_dir != plan.scripts_dir
    assert variant(plan, ip_address="192.168.0.203").scripts_dir == plan.scripts_dir


# ------------------------------------------------------------------ the reader's answer

VALID = "trust in-sync\nhosts drift: the managed line is missing\nk3s in-sync\nscripts in-sync\n"


def test_one_verdict_per_step_is_read_as_such():
    assert parse_observations(VALID) == {
        "trust": IN_SYNC, "hosts": "drift: the managed line is missing", "k3s": IN_SYNC, SCRIPTS: IN_SYNC,
    }


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        VALID + "trust in-sync\n",                                          # a step twice
        VALID.replace("k3s in-sync\n", ""),                                 # a step missing
        VALID.replace("scripts in-sync\n", ""),                             # the scripts' verdict missing
        VALID + "restart in-sync\n",                                        # not an observed step
        VALID.replace("trust in-sync", "trust drift: two\nlines"),          # a verdict of two lines
        VALID.replace("trust in-sync", "trust ok"),                         # not a verdict
        VALID.replace("trust in-sync", "trust in-sync, mostly"),
        VALID.replace("trust in-sync", "trust drift:no space"),
        VALID.replace("trust in-sync", "trust "),                           # an empty verdict
        VALID.replace("trust in-sync", "Traceback (most recent call last):"),
    ],
)
def test_anything_but_one_verdict_per_step_is_no_answer(stdout):
    assert parse_observations(stdout) is None


# ------------------------------------------------------------------ on a real node

HOSTNAME = "registry.plan.test"
REGISTRY_IP = "127.0.0.250"  # only written into /etc/hosts; nothing connects to it
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(171, 180)]  # this file's range; other tests use other ones
NODE = "plan01"


@pytest.fixture(scope="module")
def node_ip():
    return free_addresses(CANDIDATE_IPS, 1)[0]


@pytest.fixture(scope="module")
def declared(node_ip):
    return evaluate({"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP,
                     "nodes": [{"name": NODE, "host": node_ip, "role": "agent", "user": "root"}]})


@pytest.fixture(scope="module")
def resource(declared):
    return scripts_resource(declared, NODE)


@pytest.fixture(scope="module")
def plan(resource):
    return plan_of(resource)


@pytest.fixture(scope="module")
def node(node_ip, client_key, tmp_path_factory):
    with running_nodes([NodeSpec(NODE, node_ip, f"127.0.0.1 localhost {NODE}\n".encode(), units=units_for("agent"))],
                       client_key,
                       tmp_path_factory.mktemp) as started:
        node = started[NODE]
        assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        yield node


@pytest.fixture(scope="module")
def applied(declared, node, client_key):
    """A first `up`: the scripts resource writes the scripts, then every step runs its create line,
    which the runner accepts only if the digest in it is the one the node computes."""
    runs = run_phase(declared, [node], "create", client_key)
    assert [run.step for run in runs] == list(STEPS)
    return node


def refreshed(resource, node, client_key) -> dict:
    return refresh_scripts(resource, node, client_key)["observed"]


def put_back(resource, node, client_key) -> None:
    """What the next `up` does after a refresh saw the scripts changed: the update writes them again."""
    assert refreshed(resource, node, client_key)
    assert write_scripts(resource, node, client_key) == "updated"
    assert refreshed(resource, node, client_key) == {}


def scripts_outputs_id(node, plan) -> str:
    return node.engine_state[plan.scripts_dir][0]


def run_text(node, resource_step, text, client_key):
    return run_step(node, dataclasses.replace(resource_step, inputs={**resource_step.inputs, "create": text}),
                    "create", client_key)


def test_the_node_holds_exactly_the_rendered_scripts(applied, plan):
    directory = plan.scripts_dir
    listing = applied.run_local(["find", directory, "-type", "f"]).stdout.decode().split()
    expected = {RUNNER: runner_script(directory), "id": scripts_outputs_id(applied, plan) + "\n",
                **{f"{name}.sh": text for name, text in plan.scripts().items()}}
    assert sorted(listing) == sorted(f"{directory}/{name}" for name in expected)
    for name, text in expected.items():
        assert applied.read_file(f"{directory}/{name}") == text.encode(), name


def test_the_digests_the_program_computes_are_the_ones_the_node_computes(applied, declared, resource, plan, client_key):
    digests = plan.step_digests()
    assert scripts_outputs(resource, applied)["digests"] == digests
    for step, command in node_steps(declared, NODE).items():
        assert command.inputs["create"].split("\n")[0].split()[-1] == digests[step], step
    # Every create line ran (the runner checked its digest); the reader finds every step's
    # scripts intact and every step as applied.
    assert refreshed(resource, applied, client_key) == {}


@pytest.mark.parametrize("script", ["trust/probe.sh", "hosts/install.sh", "k3s/remove.sh", "restart/install.sh"])
def test_a_changed_script_on_the_node_is_named_by_the_refresh_and_refused_by_the_runner(
        applied, declared, resource, plan, client_key, script):
    step = script.split("/")[0]
    path = f"{plan.scripts_dir}/{script}"
    applied.write_file(path, applied.read_file(path) + b"echo tampered\n")
    try:
        observed = refreshed(resource, applied, client_key)
        assert set(observed) == ({step, SCRIPTS} if step in OBSERVED_STEPS else {SCRIPTS})
        assert observed[SCRIPTS].startswith("drift: ") and step in observed[SCRIPTS]
        if step in OBSERVED_STEPS:
            assert observed[step].startswith("drift: ") and "scripts" in observed[step]
        command = node_steps(declared, NODE)[step]
        refused = run_text(applied, command, command.inputs["create"], client_key)
        assert refused.exit_status != 0
        assert "not the version this update expects" in refused.stderr
        assert "tampered" not in refused.stdout
    finally:
        put_back(resource, applied, client_key)


def test_a_missing_scripts_directory_reads_as_drift_of_every_step(applied, resource, plan, client_key):
    applied.remove(plan.scripts_dir)
    try:
        observed = refreshed(resource, applied, client_key)
        assert set(observed) == {*OBSERVED_STEPS, SCRIPTS}
        assert all(verdict.startswith("drift: ") for verdict in observed.values())
    finally:
        put_back(resource, applied, client_key)
    assert applied.exists(f"{plan.scripts_dir}/{RUNNER}")


def test_the_runner_refuses_a_digest_it_was_not_given(applied, declared, client_key):
    command = node_steps(declared, NODE)["hosts"]
    text = command.inputs["create"]
    digest = text.split()[-1]
    other = ("0" if digest[0] != "0" else "1") + digest[1:]
    before = applied.snapshot()
    refused = run_text(applied, command, text.replace(digest, other), client_key)
    assert refused.exit_status == 1
    assert "not the version this update expects" in refused.stderr
    assert refused.stdout == ""
    assert applied.snapshot() == before
    run_text(applied, command, text, client_key).check()  # the line as declared runs


def test_the_runner_refuses_a_missing_script_naming_it(applied, declared, resource, plan, client_key):
    command = node_steps(declared, NODE)["hosts"]
    try:
        for phase, action in (("create", "install"), ("delete", "remove")):
            path = f"{plan.scripts_dir}/hosts/{action}.sh"
            applied.remove(path)
            refused = run_step(applied, command, phase, client_key)
            assert refused.exit_status == 1, phase
            assert f"{path} is missing" in refused.stderr, phase
    finally:
        put_back(resource, applied, client_key)


def test_the_runner_knows_only_the_steps(applied, declared, plan, client_key):
    command = node_steps(declared, NODE)["trust"]
    refused = run_text(applied, command, command_line(plan.scripts_dir, "nosuch", "install", "root"), client_key)
    assert refused.exit_status == 2 and "no step nosuch" in refused.stderr


# Last: these remove what the tests above use.

def test_the_scripts_stay_while_another_resource_wrote_them_and_go_with_their_own(
        applied, declared, resource, plan, client_key):
    directory = plan.scripts_dir
    connection = provider_props(resource, client_key)["connection"]
    first_id = scripts_outputs_id(applied, plan)
    # A replacement on the same machine: the new resource writes the directory, then the old one is deleted.
    applied.engine_state.pop(directory)
    assert write_scripts(resource, applied, client_key) == "created"
    second_id = scripts_outputs_id(applied, plan)
    assert second_id != first_id
    written = applied.snapshot([directory])
    NodeScriptsProvider().delete(first_id, {**scripts_outputs(resource, applied), "connection": connection})
    assert applied.snapshot([directory]) == written
    assert applied.read_file(f"{directory}/id") == f"{second_id}\n".encode()

    # Its own resource's delete removes it; the steps' state beside it stays, and so does its root.
    said = ssh.run_on_node(connection, remover_script(directory, second_id), "remove the scripts")
    assert said.strip() == "scripts: removed"
    assert not applied.exists(directory)
    assert applied.exists(STATE_ROOT) and applied.snapshot([STATE_ROOT])

    # A destroy: the steps' deletes, then the scripts' (their root goes once empty).
    applied.engine_state.pop(directory)
    assert write_scripts(resource, applied, client_key) == "created"
    run_phase(declared, [applied], "delete", client_key)
    assert directory not in applied.engine_state
    assert not applied.exists(STATE_ROOT)


def test_a_copy_of_a_rendered_plan_renders_its_own_scripts(plans):
    """The rendered scripts are cached per plan; a copy with other settings must not share them."""
    plan = plans["server"]
    digests = plan.step_digests()
    copy = dataclasses.replace(plan, restart_k3s=False)
    assert copy.step_digests() != digests
    assert copy.step_digests() == NodePlan.from_props(copy.to_props()).step_digests()
    assert plan.step_digests() == digests
