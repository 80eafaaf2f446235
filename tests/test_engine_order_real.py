"""What only the engine's order shows, on real SSH hosts: renamed nodes and safe k3s restarts.

tests/engine.py runs the declared resources the way the engine does (dependencies first,
independent ones in parallel, old URNs deleted at the end); the test hosts record every k3s
restart on a timeline (down, up again).
"""

from __future__ import annotations

import pulumi
import pytest

from components.config import load_settings
from components.nodes import ClusterNodes, ClusterNodesArgs, instance_id_for
from components.registry import Registry
from engine import SCRIPTS, destroy, up
from harness import PROJECT, evaluate, run_function
from nodebed import NodeSpec, running_nodes

HOSTNAME = "registry.order.test"
REGISTRY_IP = "127.0.0.240"  # only written into /etc/hosts; nothing connects to it
INSTANCE = instance_id_for(PROJECT, "dev")
ANCHOR = f"/usr/local/share/ca-certificates/k3s-registry-{INSTANCE}.crt"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
MARKER = f"# managed by k3s-registry ({INSTANCE})"
HOSTS = b"127.0.0.1\tlocalhost\n"
SNAPSHOT_PATHS = ("/etc/hosts", "/etc/rancher", "/usr/local/share/ca-certificates", "/var/lib/k3s-registry")

SERVERS = {"control01": "127.0.0.81", "control02": "127.0.0.82", "control03": "127.0.0.83"}
AGENTS = {"cube01": "127.0.0.84", "cube02": "127.0.0.85"}
LONE = "127.0.0.86"
RESTART_SECONDS = 1.0  # how long each restarted k3s stays down on the test hosts
WORKLOAD_SECONDS = 3.0  # how long pulumi-kubernetes awaits the Deployment and Service (a Deployment
# rollout takes longer; long enough that node steps run in parallel with it even on a busy machine)


def stack(nodes: dict[str, tuple[str, str]], **overrides) -> dict:
    """nodes: name -> (address, role)."""
    entries = [{"name": name, "host": ip, "role": role} for name, (ip, role) in nodes.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": entries, "k3sRestartTimeout": "10", **overrides}


def node_is_configured(node) -> None:
    assert node.exists(ANCHOR), "trust anchor"
    assert any(line.endswith(MARKER) for line in node.read_file("/etc/hosts").decode().splitlines()), "hosts line"
    assert f"{HOSTNAME}:5000" in node.read_file(REGISTRIES).decode(), "registries.yaml"


def snapshot(node) -> dict[str, bytes]:
    return {p: v for p, v in node.snapshot(SNAPSHOT_PATHS).items() if not p.startswith("/etc/ssl")}


# ----------------------------------------------------------------------------- node identity

@pytest.fixture(scope="module")
def lone_node(client_key, tmp_path_factory):
    specs = [NodeSpec("cube01", LONE, HOSTS)]
    with running_nodes(specs, client_key, lambda name: tmp_path_factory.mktemp(name)) as nodes:
        yield nodes["cube01"]


def test_a_node_renamed_in_the_stack_is_fully_configured_after_one_up(lone_node, client_key):
    nodes = {"cube01": lone_node}
    before = snapshot(lone_node)
    first = evaluate(stack({"cube01": (lone_node.ip, "agent")}))
    up(first, nodes, client_key).check()
    renamed = evaluate(stack({"rack1-node1": (lone_node.ip, "agent")}))

    log = up(renamed, nodes, client_key, old=first).check()

    old_deletes = [name for name in log.steps if name.endswith("(old)")]
    steps = ("trust", "hosts", "k3s", "restart")
    assert sorted(old_deletes) == sorted(f"nodes-cube01-{s} (old)" for s in (*steps, "scripts"))
    for name in (f"nodes-cube01-{s} (old)" for s in steps):
        assert "left as it is" in log.steps[name].stdout, (name, log.steps[name].stdout)
    node_is_configured(lone_node)
    owner = f"{renamed.named('nodes').urn}#rack1-node1"
    assert lone_node.read_file(f"/var/lib/k3s-registry/{INSTANCE}-k3s.owner").decode().strip() == owner
    # The old steps' scripts went with the old resource (they are per owner); the new ones stay.
    scripts_dirs = {r.name: r.outputs["scripts_dir"] for r in (*first.of_type(SCRIPTS), *renamed.of_type(SCRIPTS))}
    assert not lone_node.exists(scripts_dirs["nodes-cube01-scripts"])
    assert lone_node.exists(scripts_dirs["nodes-rack1-node1-scripts"] + "/run")
    destroy(renamed, nodes, client_key).check()
    assert snapshot(lone_node) == before, "destroy after the rename gives the node back as it was"


def program_with_nodes_under_a_new_parent() -> None:
    """A refactor: the same nodes, now children of a `Cluster` component (their URNs change)."""
    settings = load_settings()
    registry = Registry("registry", settings.registry)
    cluster = pulumi.ComponentResource("k3s-registry:index:Cluster", "cluster")
    ClusterNodes(
        "nodes",
        ClusterNodesArgs(
            registry=settings.registry, access=settings.node_access, trust_anchor_pem=registry.trust_anchor_pem,
            instance_id=instance_id_for(pulumi.get_project(), pulumi.get_stack()),
            username=registry.username, password=registry.password, restart_after=registry.workloads,
        ),
        opts=pulumi.ResourceOptions(parent=cluster),
    )


def test_steps_moved_under_a_new_parent_stay_configured(lone_node, client_key):
    nodes = {"cube01": lone_node}
    before = snapshot(lone_node)
    config = stack({"cube01": (lone_node.ip, "agent")})
    first = evaluate(config)
    up(first, nodes, client_key).check()
    moved = run_function(program_with_nodes_under_a_new_parent, config)
    assert {r.name for r in moved.resources if r.type in ("command:remote:Command", SCRIPTS)} == {
        r.name for r in first.resources if r.type in ("command:remote:Command", SCRIPTS)
    }, "same names, new URNs"

    log = up(moved, nodes, client_key, old=first).check()

    old_deletes = {name: step for name, step in log.steps.items() if name.endswith("(old)")}
    assert len(old_deletes) == 5, sorted(old_deletes)
    assert all("left as it is" in step.stdout for name, step in old_deletes.items() if "-scripts" not in name)
    node_is_configured(lone_node)
    destroy(moved, nodes, client_key).check()
    assert snapshot(lone_node) == before


def test_without_owners_the_old_deletes_would_undo_the_rename(lone_node, client_key):
    """The check has teeth: the same order with the owner files removed unconfigures the node."""
    nodes = {"cube01": lone_node}
    first = evaluate(stack({"cube01": (lone_node.ip, "agent")}))
    up(first, nodes, client_key).check()
    renamed = evaluate(stack({"cube02": (lone_node.ip, "agent")}))
    forget_owners = lambda: lone_node.run_local(["sh", "-c", "rm -f /var/lib/k3s-registry/*.owner"])  # noqa: E731
    up(renamed, nodes, client_key, old=first, before_deletes=forget_owners).check()
    assert not lone_node.exists(ANCHOR)
    destroy(renamed, nodes, client_key).check()


# ----------------------------------------------------------------------------- restarts

@pytest.fixture(scope="module")
def ha_cluster(client_key, tmp_path_factory):
    specs = [NodeSpec(name, ip, HOSTS) for name, ip in {**SERVERS, **AGENTS}.items()]
    with running_nodes(specs, client_key, lambda name: tmp_path_factory.mktemp(name)) as nodes:
        for node in nodes.values():
            node.set_restart_seconds(RESTART_SECONDS)
        yield nodes


def ha_stack(**overrides) -> dict:
    nodes = {name: (ip, "server") for name, ip in SERVERS.items()} | {name: (ip, "agent") for name, ip in AGENTS.items()}
    return stack(nodes, **overrides)


def downtimes(node, unit) -> list[tuple[float, float]]:
    """(went down, was up again) for each restart; a restart never seen up again lasts forever."""
    spans, down = [], None
    for moment, seen_unit, event in node.timeline():
        if seen_unit != unit:
            continue
        if event == "down":
            down = moment
        elif down is not None:
            spans.append((down, moment))
            down = None
    return spans + ([(down, float("inf"))] if down is not None else [])


@pytest.fixture(scope="module")
def stack_state():
    """What the stack holds now (the last evaluation deployed), for the module's final destroy."""
    return {}


@pytest.fixture(scope="module")
def first_up(ha_cluster, client_key, stack_state):
    declared = evaluate(ha_stack())
    log = up(declared, ha_cluster, client_key, workload_seconds=WORKLOAD_SECONDS).check()
    stack_state["deployed"] = declared
    yield declared, log
    destroy(stack_state["deployed"], ha_cluster, client_key).check()


def test_registry_settings_are_written_before_the_registry_is_up(first_up):
    _, log = first_up
    workloads_done = max(s.finished for s in log.steps.values() if s.name.startswith("registry-"))
    for name in (*SERVERS, *AGENTS):
        assert log.steps[f"nodes-{name}-k3s"].finished < workloads_done, name


def test_k3s_restarts_only_once_the_registry_deployment_and_service_are_in_place(first_up, ha_cluster):
    _, log = first_up
    workloads_done = max(s.finished for s in log.steps.values() if s.name.startswith("registry-"))
    for name, node in ha_cluster.items():
        unit = "k3s" if name in SERVERS else "k3s-agent"
        spans = downtimes(node, unit)
        assert len(spans) == 1, (name, spans)
        assert spans[0][0] >= workloads_done, name


def test_no_two_servers_are_down_at_once(first_up, ha_cluster):
    spans = sorted((span, name) for name in SERVERS for span in downtimes(ha_cluster[name], "k3s"))
    assert len(spans) == len(SERVERS)
    for (earlier, first), (later, second) in zip(spans, spans[1:]):
        assert earlier[1] <= later[0], f"{first} was still down when {second} went down: {spans}"


def test_agents_restart_in_parallel_without_waiting_for_the_servers(first_up, ha_cluster):
    last_server_down = max(downtimes(ha_cluster[name], "k3s")[0][0] for name in SERVERS)
    agent_spans = [downtimes(ha_cluster[name], "k3s-agent")[0] for name in AGENTS]
    assert all(down < last_server_down for down, _ in agent_spans)
    (first_down, first_up_again), (second_down, _) = sorted(agent_spans)
    assert second_down < first_up_again, "the agents were down at the same time"


def test_a_server_that_does_not_come_back_stops_the_servers_after_it(first_up, stack_state, ha_cluster, client_key):
    """An update of the stack first_up deployed (a new registry port) meets a server that stays down."""
    deployed, _ = first_up
    declared = evaluate(ha_stack(port="5001"))
    ha_cluster["control02"].set_unit("k3s", "broken")
    try:
        log = up(declared, ha_cluster, client_key, old=deployed)
    finally:
        ha_cluster["control02"].set_unit("k3s", "active")
    failed = log.failed()
    assert [step.name for step in failed] == ["nodes-control02-restart"]
    assert "k3s-registry: node control02: k3s did not become active again within 10 s" in failed[0].stderr
    assert log.steps["nodes-control03-restart"].skipped, "control03 must not restart while control02 is down"
    assert log.steps["nodes-control01-restart"].exit_status == 0
    assert all(log.steps[f"nodes-{name}-restart"].exit_status == 0 for name in AGENTS)
    # The next `up` (control02 fixed) applies what was left: control02 and control03 restart.
    for node in ha_cluster.values():
        node.clear_restart_log()
    # (old=deployed: what failed or never ran still has the old inputs in the state; the rest
    # re-runs too here, which the idempotent scripts make harmless.)
    up(declared, ha_cluster, client_key, old=deployed).check()
    restarted = {name for name, node in ha_cluster.items() if any("restart" in line.split() for line in node.restart_log())}
    assert restarted == {"control02", "control03"}
    stack_state["deployed"] = declared
