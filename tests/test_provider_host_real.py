"""Each node's scripts and drift through the SDK's real dynamic provider host, driven over gRPC as the engine drives it.

test_drift_real.py calls the provider class in-process. Here the provider runs where Pulumi
runs it: ``venv/bin/python -u -m pulumi.dynamic`` in the project root (tests/provider_host.py),
a fresh host for every `pulumi` command, fed the ``__provider`` and inputs the program itself
registered for each node's ``NodeScripts`` resource (secrets unwrapped, numbers as doubles, as on
the wire). The engine's side is played by ``Engine``: `up` is Check then Create (new) or Diff and
Update (olds = the outputs in the state, refreshed or not; news = the Check'ed inputs);
`refresh` is Read with the stored outputs, whose answer becomes the state. After an Update,
the program is evaluated again with the outputs the host returned, and each Command whose
inputs changed runs its ``create`` text over SSH, as pulumi-command does (there is no update
text). A Command's stdout is an output too (the restart step's text carries the k3s step's):
the program is evaluated with the stdout each Command last printed, so a Command reading a
re-run one's output follows.

Real test hosts: one node reached as root (systemd, server), one as ``deploy`` through sudo
(OpenRC, agent), host keys pinned, the private key set as a secret; once with registry
authentication on (the default) and once with ``auth: false``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dill
import pytest
import yaml
from pulumi.runtime import rpc
from harness import PROJECT, Evaluation, evaluate
from nodebed import COMMAND, STEPS, NodeSpec, free_addresses, node_steps, run_step, running_nodes
from provider_host import (
    DIFF_NONE,
    DIFF_SOME,
    PROVIDER_KEY,
    ProviderError,
    Target,
    declared_inputs,
    has_secret,
    provider_host,
    registrations,
)

from components.drift import NodeScriptsProvider, outputs_of, with_repairs
from components.node_plan import ACTIONS, NodePlan
from components.nodes import instance_id_for

SCRIPTS_TYPE = f"pulumi-python:dynamic/{PROJECT}:NodeScripts"
HOSTNAME = "registry.grpc.test"
REGISTRY_IP = "127.0.0.241"  # only written into /etc/hosts; nothing connects to it
ADDRESS = f"{HOSTNAME}:5000"
INSTANCE = instance_id_for(PROJECT, "dev")
MARKER = f"# managed by k3s-registry ({INSTANCE})"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"  # stamps import times: not compared
GENERATION_COMMENT = "# k3s settings generation "
# This file's range: test_interruptions.py has .61-.63, test_drift_real.py .51-.59.
CANDIDATE_IPS = [f"127.0.0.{n}" for n in range(71, 80)]
REFRESH_ROUNDS = 3


_IPS = iter(free_addresses(CANDIDATE_IPS, 4))
SCENARIOS = {
    # name: (registry authentication, nodes)
    "auth-on": (True, {
        "grpc01": {"ip": next(_IPS), "role": "server", "user": "root", "init": "systemd"},
        "grpc02": {"ip": next(_IPS), "role": "agent", "user": "deploy", "init": "openrc"},
    }),
    "auth-off": (False, {
        "grpc01": {"ip": next(_IPS), "role": "server", "user": "root", "init": "systemd"},
        "grpc02": {"ip": next(_IPS), "role": "agent", "user": "deploy", "init": "openrc"},
    }),
}


def comparable(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    """The node's files, less what legitimately changes across runs.

    The k3s step counts its changes of registries.yaml in a ``generation`` file (the restart
    step reruns when it rises): a repair of that step is such a change.
    """
    return {
        path: content for path, content in snapshot.items()
        if path != JAVA_KEYSTORE and not (path.startswith("/var/lib/k3s-registry/") and path.endswith("/generation"))
    }


def scripts_name(node: str) -> str:
    return f"nodes-{node}-scripts"


def command_name(node: str, step: str) -> str:
    return f"nodes-{node}-{step}"


def commands(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in evaluation.of_type(COMMAND)}


def changed_commands(before: Evaluation, after: Evaluation) -> set[str]:
    old, new = commands(before), commands(after)
    assert set(old) == set(new), "the same Commands are declared"
    return {name for name in new if new[name] != old[name]}


def generation(restart_text: str) -> int:
    """The k3s settings generation a restart text carries (its last line)."""
    head, _, last = restart_text.rpartition("\n")
    assert head and last.startswith(GENERATION_COMMENT), restart_text
    return int(last[len(GENERATION_COMMENT):])


def holds(value: Any, secret: str) -> bool:
    """Whether any string in ``value``, at any depth, contains ``secret``."""
    if isinstance(value, str):
        return secret in value
    if isinstance(value, dict):
        return any(holds(item, secret) for item in value.values())
    if isinstance(value, list):
        return any(holds(item, secret) for item in value)
    return False


def repairs_of(outputs: dict[str, Any]) -> dict[str, int]:
    """The repair counts as the state holds them (doubles on the wire)."""
    counts = outputs["repairs"]
    assert all(float(count).is_integer() for count in counts.values()), counts
    return {step: int(count) for step, count in counts.items()}


# ----------------------------------------------------------------------------- the engine's part

@dataclass
class StateEntry:
    """One NodeScripts resource in the state: its id, the Check'ed inputs and the outputs, as the engine keeps them."""

    target: Target
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class Engine:
    """Plays `pulumi up` / `pulumi refresh` for the NodeScripts resources; a fresh provider host per command."""

    config: dict[str, Any]
    state: dict[str, StateEntry] = field(default_factory=dict)
    command_stdout: dict[str, str] = field(default_factory=dict)
    """What each Command printed when it last ran: pulumi-command's ``stdout`` output."""

    def evaluate(self, *, scripts: bool = True) -> Evaluation:
        """The program, with the NodeScripts resources' outputs (unless not ``scripts``) and the
        Commands' stdout as the state holds them."""
        outputs = {name: entry.outputs for name, entry in self.state.items()} if scripts else {}
        stdout = {name: {"stdout": text} for name, text in self.command_stdout.items()}
        return evaluate(self.config, secret_keys=("sshPrivateKey",), outputs_by_name={**outputs, **stdout})

    def up(self, evaluation: Evaluation) -> dict[str, int]:
        """Check, then Create or Diff (+ Update on a change); the Diff verdict of each existing resource."""
        verdicts = {}
        with provider_host() as host:
            for resource in evaluation.of_type(SCRIPTS_TYPE):
                target, news = Target.of(resource), declared_inputs(resource)
                old = self.state.get(resource.name)
                checked = host.check(target, old.inputs if old else {}, news)
                if old is None:
                    id_, outputs = host.create(target, checked)
                    self.state[resource.name] = StateEntry(target, id_, checked, outputs)
                    continue
                diff = host.diff(target, old.id, old.outputs, checked, old.inputs)
                assert not diff.replaces, f"{resource.name}: nothing here moves a node, yet Diff replaces {diff.replaces}"
                verdicts[resource.name] = diff.changes
                outputs = (
                    host.update(target, old.id, old.outputs, checked, old.inputs)
                    if diff.changes == DIFF_SOME else old.outputs
                )
                self.state[resource.name] = StateEntry(target, old.id, checked, outputs)
        return verdicts

    def refresh(self) -> dict[str, dict[str, str]]:
        """Read every NodeScripts resource with the outputs in the state; the answers become the state."""
        with provider_host() as host:
            for entry in self.state.values():
                entry.id, entry.outputs, inputs = host.read(entry.target, entry.id, entry.outputs, entry.inputs)
                if inputs is not None:
                    entry.inputs = inputs
        return {name: entry.outputs["observed"] for name, entry in self.state.items()}

    def preview_diffs(self, evaluation: Evaluation) -> dict[str, int]:
        """What `up` would decide now (Check and Diff only, nothing changed)."""
        with provider_host() as host:
            verdicts = {}
            for resource in evaluation.of_type(SCRIPTS_TYPE):
                entry = self.state[resource.name]
                checked = host.check(entry.target, entry.inputs, declared_inputs(resource))
                diff = host.diff(entry.target, entry.id, entry.outputs, checked, entry.inputs)
                verdicts[resource.name] = diff.changes
        return verdicts


@dataclass
class World:
    """One stack on its running test hosts, applied once by `pulumi up`."""

    auth: bool
    nodes: dict
    engine: Engine
    client_key: Any
    declared: Evaluation
    registered: dict[str, Any]
    """The program's RegisterResource requests by name (their options: additionalSecretOutputs)."""
    evaluation: Evaluation
    initial: dict[str, dict[str, bytes]]
    """Each node before the first `up`."""
    written: dict[str, dict[str, bytes]]
    """Each node's scripts directory right after the host's Create, before any Command ran."""
    applied: dict[str, dict[str, bytes]]
    create_outputs: dict[str, dict[str, Any]]

    def run_commands(self, evaluation: Evaluation, names: set[str]) -> None:
        """Runs each named Command's create text over SSH (an update of a Command without an
        update text re-runs its create); its stdout becomes its output."""
        for name in sorted(names):
            node_name, step = name[len("nodes-"):].rsplit("-", 1)
            run = run_step(self.nodes[node_name], node_steps(evaluation, node_name)[step], "create", self.client_key)
            self.engine.command_stdout[name] = run.check().stdout

    def apply_commands(self) -> list[tuple[set[str], Evaluation]]:
        """pulumi-command's part of `up`, wave by wave: the Commands whose inputs changed run
        their create text; a Command whose text carries a re-run one's stdout changes next."""
        waves: list[tuple[set[str], Evaluation]] = []
        current = self.evaluation
        for _ in range(5):
            after = self.engine.evaluate()
            changed = changed_commands(current, after)
            if not changed:
                self.evaluation = current
                return waves
            self.run_commands(after, changed)
            waves.append((changed, after))
            current = after
        raise AssertionError(f"the Commands never settle: {[sorted(names) for names, _ in waves]}")

    def converge(self) -> None:
        """Refresh, up, run what changed: after a failed test the next one starts from a clean node."""
        self.engine.refresh()
        self.engine.up(self.evaluation)
        self.apply_commands()


def stack_config(auth: bool, specs: dict, nodes: dict, client_key) -> dict[str, Any]:
    listed = [
        {"name": name, "host": spec["ip"], "port": 22, "role": spec["role"], "user": spec["user"],
         "hostKey": nodes[name].host_public_key}
        for name, spec in specs.items()
    ]
    config = {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": listed,
              "sshPrivateKey": client_key.private_key_text}
    if not auth:
        config["auth"] = False
    return config


@pytest.fixture(scope="module", params=list(SCENARIOS))
def world(request, client_key, tmp_path_factory):
    auth, specs = SCENARIOS[request.param]
    node_specs = [NodeSpec(name, spec["ip"], f"127.0.0.1 localhost {name}\n".encode(), spec["init"])
                  for name, spec in specs.items()]
    with running_nodes(node_specs, client_key, tmp_path_factory.mktemp) as nodes:
        for node in nodes.values():
            assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
        initial = {name: comparable(node.snapshot()) for name, node in nodes.items()}
        engine = Engine(stack_config(auth, specs, nodes, client_key))
        with registrations() as registered:
            declared = engine.evaluate()
        # `pulumi up`: each node's scripts resource is created first (its Commands depend on it) ...
        verdicts = engine.up(declared)
        assert verdicts == {}, "a first up only creates"
        create_outputs = {name: dict(entry.outputs) for name, entry in engine.state.items()}
        written = {name: node.snapshot([engine.state[scripts_name(name)].outputs["scripts_dir"]])
                   for name, node in nodes.items()}
        evaluation = engine.evaluate()
        assert commands(evaluation) == commands(declared) == commands(engine.evaluate(scripts=False)), \
            "the outputs Create returned change no Command: the program foresaw them"
        # ... then the Commands run their create text over SSH, with the scripts it wrote; what
        # they print is their output. The restart's text waits for the k3s step's stdout.
        for name, node in nodes.items():
            steps = node_steps(evaluation, name)
            for step in STEPS[:-1]:
                engine.command_stdout[command_name(name, step)] = run_step(node, steps[step], "create", client_key).check().stdout
        evaluation = engine.evaluate()
        for name, node in nodes.items():
            restart = node_steps(evaluation, name)["restart"]
            engine.command_stdout[command_name(name, "restart")] = run_step(node, restart, "create", client_key).check().stdout
        assert commands(engine.evaluate()) == commands(evaluation), "the restart's output changes no Command"
        assert commands(engine.evaluate()) == commands(evaluation), "the program is deterministic"
        applied = {name: comparable(node.snapshot()) for name, node in nodes.items()}
        yield World(auth, nodes, engine, client_key, declared, registered, evaluation, initial, written, applied,
                    create_outputs)


# ----------------------------------------------------------------------------- create

def test_the_host_gets_the_provider_the_program_declared(world):
    declared = world.declared.of_type(SCRIPTS_TYPE)
    assert sorted(resource.name for resource in declared) == sorted(scripts_name(node) for node in world.nodes)
    for resource in declared:
        inputs = declared_inputs(resource)
        provider = dill.loads(base64.b64decode(inputs[PROVIDER_KEY]))
        assert type(provider) is NodeScriptsProvider and type(provider).__module__ == "components.drift"
        entry = world.engine.state[resource.name]
        assert entry.inputs == inputs, "Check keeps the inputs as declared"
        created = world.create_outputs[resource.name]
        assert created[PROVIDER_KEY] == inputs[PROVIDER_KEY]
        assert created["observed"] == {} and created["repairs"] == {}, resource.name
        assert ("credentials" in inputs) == world.auth


def test_create_outputs_carry_no_plan(world):
    """The state keeps what a refresh needs, not the plan: no certificate in any output."""
    certificate = world.declared.outputs["caCertificatePem"]
    assert "BEGIN CERTIFICATE" in certificate
    for resource in world.declared.of_type(SCRIPTS_TYPE):
        created = world.create_outputs[resource.name]
        plan = NodePlan.from_props(declared_inputs(resource)["plan"])
        assert plan.certificate_pem == certificate, "the plan the program declared does carry it"
        assert "plan" not in created
        assert holds(declared_inputs(resource), certificate), "the inputs the host got do carry it"
        assert not holds(created, certificate) and not holds(created, "BEGIN CERTIFICATE")
        assert created["scripts_dir"] == plan.scripts_dir and created["digests"] == plan.step_digests()


def test_create_via_the_host_writes_the_scripts_the_commands_then_run(world):
    for node_name in world.nodes:
        resource = world.declared.named(scripts_name(node_name))
        entry = world.engine.state[resource.name]
        directory, digests = world.create_outputs[resource.name]["scripts_dir"], world.create_outputs[resource.name]["digests"]
        written = world.written[node_name]
        expected_files = {f"{directory}/run", f"{directory}/id"} | {
            f"{directory}/{step}/{action}.sh" for step, actions in ACTIONS.items() for action in actions}
        assert set(written) == expected_files, node_name
        assert written[f"{directory}/id"] == f"{entry.id}\n".encode(), "the id file names the resource Create made"
        for step, actions in ACTIONS.items():
            content = written[f"{directory}/run"] + b"".join(written[f"{directory}/{step}/{a}.sh"] for a in actions)
            assert hashlib.sha256(content).hexdigest()[:len(digests[step])] == digests[step], f"{node_name}/{step}"
        # The Commands run after it, by the digest it returned; they left its scripts as written.
        for step, command in node_steps(world.evaluation, node_name).items():
            assert resource.urn in command.dependencies, f"{command.name} must wait for the scripts"
            assert f"{directory}/run {step} install {digests[step]}" in command.inputs["create"], command.name
            assert "update" not in command.inputs, command.name
        assert {path: content for path, content in world.applied[node_name].items() if path in written} == written


def test_the_host_cannot_import_the_provider_outside_the_project_root(world, tmp_path):
    """Why the host must start in the project root: the provider is pickled by reference."""
    resource = world.declared.of_type(SCRIPTS_TYPE)[0]
    with provider_host(cwd=tmp_path) as host, pytest.raises(ProviderError, match="No module named 'components'"):
        host.check(Target.of(resource), {}, declared_inputs(resource))


# ----------------------------------------------------------------------------- no drift: no repair loop

def test_without_drift_every_refresh_stays_in_sync_and_nothing_is_repaired(world):
    baseline = commands(world.evaluation)
    repairs = {name: repairs_of(entry.outputs) for name, entry in world.engine.state.items()}
    for round_ in range(REFRESH_ROUNDS):
        observed = world.engine.refresh()
        assert observed == {name: {} for name in world.engine.state}, f"round {round_}"
        assert world.engine.preview_diffs(world.evaluation) == {name: DIFF_NONE for name in world.engine.state}, \
            f"round {round_}"
        assert world.engine.up(world.evaluation) == {name: DIFF_NONE for name in world.engine.state}
        assert {name: repairs_of(entry.outputs) for name, entry in world.engine.state.items()} == repairs
        again = world.engine.evaluate()
        assert commands(again) == baseline, f"round {round_}: a Command's text changed without drift"
    for node_name, node in world.nodes.items():
        assert comparable(node.snapshot()) == world.applied[node_name]


# ----------------------------------------------------------------------------- tamper, seen, repaired

def remove_managed_line(node) -> None:
    lines = node.read_file("/etc/hosts").split(b"\n")
    node.write_file("/etc/hosts", b"\n".join(line for line in lines if MARKER.encode() not in line))


def tamper_credentials(node, auth: bool) -> None:
    """Auth on: the password changed by hand; auth off: credentials added by hand."""
    document = yaml.safe_load(node.read_file(REGISTRIES))
    config = document["configs"][ADDRESS]
    if auth:
        config["auth"]["password"] = "changed-by-hand"
    else:
        assert "auth" not in config, "auth off writes no credentials"
        config["auth"] = {"username": "someone", "password": "added-by-hand"}
    node.write_file(REGISTRIES, yaml.safe_dump(document, sort_keys=False).encode(), mode=0o600)


@dataclass(frozen=True)
class Tamper:
    step: str
    change: Callable[[Any, bool], None]
    reason: Callable[[bool], str]


TAMPERS = {
    "hosts line removed": Tamper(
        "hosts", lambda node, _auth: remove_managed_line(node), lambda _auth: "drift: /etc/hosts has no managed line"),
    "k3s credentials tampered": Tamper(
        "k3s", tamper_credentials,
        lambda auth: f"drift: registries.yaml: configs.{ADDRESS} has "
        + ("other credentials" if auth else "credentials this program did not set")),
}


@pytest.mark.parametrize("node_name", ["grpc01", "grpc02"])
@pytest.mark.parametrize("tamper_name", TAMPERS)
def test_a_tamper_is_read_diffed_updated_and_repaired_by_its_step_alone(world, tamper_name, node_name):
    tamper = TAMPERS[tamper_name]
    engine, node, before = world.engine, world.nodes[node_name], world.evaluation
    drifted = scripts_name(node_name)
    try:
        repairs_before = {name: repairs_of(entry.outputs) for name, entry in engine.state.items()}
        count_before = repairs_before[drifted].get(tamper.step, 0)
        tamper.change(node, world.auth)

        # refresh: one Read per node sees the drift on that node's step only
        observed = engine.refresh()
        assert observed == {name: {tamper.step: tamper.reason(world.auth)} if name == drifted else {}
                            for name in engine.state}
        assert commands(engine.evaluate()) == commands(before), "a refresh alone changes no Command"

        # up: Diff says change for that node's resource only, its Update orders one repair of that step
        verdicts = engine.up(before)
        assert verdicts == {name: DIFF_SOME if name == drifted else DIFF_NONE for name in engine.state}
        updated = engine.state[drifted].outputs
        assert updated["observed"] == {}
        assert repairs_of(updated) == {**repairs_before[drifted], tamper.step: count_before + 1}
        assert {name: repairs_of(entry.outputs) for name, entry in engine.state.items() if name != drifted} == {
            name: counts for name, counts in repairs_before.items() if name != drifted}
        assert updated["digests"] == world.create_outputs[drifted]["digests"], "the scripts did not change"
        assert updated[PROVIDER_KEY] == declared_inputs(before.named(drifted))[PROVIDER_KEY]

        # the program sees the outputs Update returned: only the drifted step's create text
        # changes, and pulumi-command runs it; after a k3s repair the restart follows
        waves = world.apply_commands()
        changed, restart = command_name(node_name, tamper.step), command_name(node_name, "restart")
        assert [names for names, _ in waves] == [{changed}] + ([{restart}] if tamper.step == "k3s" else [])
        old, new = commands(before), commands(waves[0][1])
        assert new[changed]["create"] == with_repairs(commands(world.declared)[changed]["create"], count_before + 1)
        assert "update" not in new[changed], "pulumi-command re-runs the create text"
        assert {k: v for k, v in new[changed].items() if k != "create"} == {
            k: v for k, v in old[changed].items() if k != "create"}
        if tamper.step == "k3s":
            old_restart, new_restart = old[restart]["create"], commands(waves[1][1])[restart]["create"]
            assert generation(new_restart) == generation(old_restart) + 1, "the repair rewrote registries.yaml once"
            assert new_restart.rpartition("\n")[0] == old_restart.rpartition("\n")[0]
        settled = commands(world.evaluation)

        # the next refreshes are in sync, and stay so: no repair loop
        for round_ in range(2):
            assert engine.refresh() == {name: {} for name in engine.state}, f"round {round_}"
            assert engine.preview_diffs(world.evaluation) == {name: DIFF_NONE for name in engine.state}, f"round {round_}"
            assert commands(engine.evaluate()) == settled, f"round {round_}"
        assert comparable(node.snapshot()) == world.applied[node_name], "the repair puts back what up wrote"
    except BaseException:
        world.converge()
        raise


# ----------------------------------------------------------------------------- secrets

def test_the_secrets_reach_the_host_plain_and_only_where_the_engine_keeps_them_secret(world):
    """The key and the credentials are secrets in the program; the host gets and returns them
    unwrapped (it refuses secrets), and every output holding one is an output the program told
    the engine to store as a secret (additionalSecretOutputs)."""
    for node_name in world.nodes:
        resource = world.declared.named(scripts_name(node_name))
        wire, inputs = resource.wire_inputs, declared_inputs(resource)
        assert inputs["connection"]["private_key"] == world.client_key.private_key_text
        assert inputs["connection"]["host_key"] == world.nodes[node_name].host_public_key
        secrets = [world.client_key.private_key_text]
        stdin = node_steps(world.declared, node_name)["k3s"].inputs.get("stdin")
        if world.auth:
            assert json.loads(inputs["credentials"]) == json.loads(stdin)
            secrets.append(json.loads(stdin)["password"])
            assert has_secret(wire["credentials"]), "the program sends the credentials as a secret"
        else:
            assert stdin is None and "credentials" not in inputs
        assert has_secret(wire["connection"]), "the program sends the key as a secret"
        assert not any(holds(inputs["plan"], secret) for secret in secrets), "the plan carries no secret"

        marked = set(world.registered[resource.name].additionalSecretOutputs)
        for outputs in (world.create_outputs[resource.name], world.engine.state[resource.name].outputs):
            assert not has_secret(outputs), "the host returns plain values; marking them is the engine's job"
            holding = {key for key, value in outputs.items() if any(holds(value, secret) for secret in secrets)}
            assert holding == ({"connection", "credentials"} if world.auth else {"connection"}), holding
            assert holding <= marked, f"{sorted(holding - marked)} would be stored in plain text"
        assert world.create_outputs[resource.name]["connection"]["private_key"] == world.client_key.private_key_text
        if world.auth:
            assert world.create_outputs[resource.name]["credentials"] == inputs["credentials"]


# ----------------------------------------------------------------------------- destroy

def test_zz_delete_removes_the_scripts_after_the_commands_and_leaves_each_node_as_it_was(world):
    directories = {node_name: world.engine.state[scripts_name(node_name)].outputs["scripts_dir"] for node_name in world.nodes}
    # `pulumi destroy`: the Commands first (they depend on the scripts, and their deletes run them) ...
    for node_name, node in world.nodes.items():
        steps = node_steps(world.evaluation, node_name)
        for step in reversed(STEPS):
            run_step(node, steps[step], "delete", world.client_key).check()
        assert node.exists(f"{directories[node_name]}/run"), "the Commands' deletes leave the scripts"
    # ... then each node's scripts resource, through the host.
    with provider_host() as host:
        for entry in world.engine.state.values():
            host.delete(entry.target, entry.id, entry.outputs, entry.inputs)
    for node_name, node in world.nodes.items():
        assert not node.exists(directories[node_name]), node_name
        assert comparable(node.snapshot()) == world.initial[node_name], node_name


@pytest.mark.parametrize("unknown", ["the whole plan", "the certificate"])
def test_a_preview_with_a_new_ca_not_yet_known_says_the_scripts_change(unknown):
    """In a preview, a CA certificate being replaced is unknown, and so is the plan made of it
    (in part or whole): the host's Diff must say "changes", not fail rendering the scripts."""
    declared = evaluate({"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP,
                         "nodes": [{"name": "preview01", "host": "127.0.0.79", "role": "server"}]})
    resource = declared.named("nodes-preview01-scripts")
    inputs = declared_inputs(resource)
    olds = {PROVIDER_KEY: inputs[PROVIDER_KEY], **outputs_of(inputs, repairs={})}
    plan = rpc.UNKNOWN if unknown == "the whole plan" else {**inputs["plan"], "certificate_pem": rpc.UNKNOWN}
    with provider_host() as host:
        assert host.diff(Target.of(resource), "id", olds, inputs, inputs).changes == DIFF_NONE
        assert host.diff(Target.of(resource), "id", olds, {**inputs, "plan": plan}, inputs).changes == DIFF_SOME
