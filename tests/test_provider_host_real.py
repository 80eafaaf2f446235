"""Drift through the SDK's real dynamic provider host, driven over gRPC as the engine drives it.

test_drift_real.py calls the provider class in-process with inputs the test builds. Here the
provider runs where Pulumi runs it: ``venv/bin/python -u -m pulumi.dynamic`` in the project
root (tests/provider_host.py), a fresh host for every `pulumi` command, fed the ``__provider``
and inputs the program itself registered (secrets unwrapped, numbers as doubles, as on the
wire). The engine's side is played by ``Engine``: `up` is Check then Create (new) or Diff and
Update (olds = the outputs in the state, refreshed or not; news = the Check'ed inputs);
`refresh` is Read with the stored outputs, whose answer becomes the state. After an Update,
the program is evaluated again with the outputs the host returned, and each Command whose
inputs changed runs its ``update`` text over SSH, as pulumi-command would. A Command's stdout
is an output too (the restart step's text carries the k3s step's): the program is evaluated
with the stdout each Command last printed, so a Command reading a re-run one's output follows.

Real test hosts: one node reached as root (systemd, server), one as ``deploy`` through sudo
(OpenRC, agent), host keys pinned, the private key set as a secret; once with registry
authentication on (the default) and once with ``auth: false``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dill
import pytest
import yaml
from harness import PROJECT, Evaluation, evaluate
from nodebed import COMMAND, NodeSpec, free_addresses, node_steps, run_phase, run_step, running_nodes
from provider_host import (
    DIFF_NONE,
    DIFF_SOME,
    PROVIDER_KEY,
    ProviderError,
    Target,
    declared_inputs,
    provider_host,
)

from components.drift import EXPECTED, NodeStepProbeProvider, with_repairs
from components.nodes import instance_id_for

OBSERVATION = f"pulumi-python:dynamic/{PROJECT}:NodeStepObservation"
HOSTNAME = "registry.grpc.test"
REGISTRY_IP = "127.0.0.241"  # only written into /etc/hosts; nothing connects to it
ADDRESS = f"{HOSTNAME}:5000"
INSTANCE = instance_id_for(PROJECT, "dev")
MARKER = f"# managed by k3s-registry ({INSTANCE})"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"  # stamps import times: not compared
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


def observation_name(node: str, step: str) -> str:
    return f"nodes-{node}-{step}-observed"


def command_name(node: str, step: str) -> str:
    return f"nodes-{node}-{step}"


def commands(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in evaluation.of_type(COMMAND)}


def changed_commands(before: Evaluation, after: Evaluation) -> set[str]:
    old, new = commands(before), commands(after)
    assert set(old) == set(new), "the same Commands are declared"
    return {name for name in new if new[name] != old[name]}


# ----------------------------------------------------------------------------- the engine's part

@dataclass
class StateEntry:
    """One observation in the state: its id, the Check'ed inputs and the outputs, as the engine keeps them."""

    target: Target
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class Engine:
    """Plays `pulumi up` / `pulumi refresh` for the observations; a fresh provider host per command."""

    config: dict[str, Any]
    state: dict[str, StateEntry] = field(default_factory=dict)
    command_stdout: dict[str, str] = field(default_factory=dict)
    """What each Command printed when it last ran: pulumi-command's ``stdout`` output."""

    def evaluate(self, *, observations: bool = True) -> Evaluation:
        """The program, with the observations' outputs (unless not ``observations``) and the
        Commands' stdout as the state holds them."""
        outputs = {name: entry.outputs for name, entry in self.state.items()} if observations else {}
        stdout = {name: {"stdout": text} for name, text in self.command_stdout.items()}
        return evaluate(self.config, secret_keys=("sshPrivateKey",), outputs_by_name={**outputs, **stdout})

    def up(self, evaluation: Evaluation) -> dict[str, int]:
        """Check, then Create or Diff (+ Update on a change); the Diff verdict of each existing observation."""
        verdicts = {}
        with provider_host() as host:
            for resource in evaluation.of_type(OBSERVATION):
                target, news = Target.of(resource), declared_inputs(resource)
                old = self.state.get(resource.name)
                checked = host.check(target, old.inputs if old else {}, news)
                if old is None:
                    id_, outputs = host.create(target, checked)
                    self.state[resource.name] = StateEntry(target, id_, checked, outputs)
                    continue
                diff = host.diff(target, old.id, old.outputs, checked, old.inputs)
                verdicts[resource.name] = diff.changes
                outputs = (
                    host.update(target, old.id, old.outputs, checked, old.inputs)
                    if diff.changes == DIFF_SOME else old.outputs
                )
                self.state[resource.name] = StateEntry(target, old.id, checked, outputs)
        return verdicts

    def refresh(self) -> dict[str, str]:
        """Read every observation with the outputs in the state; the answers become the state."""
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
            for resource in evaluation.of_type(OBSERVATION):
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
    evaluation: Evaluation
    applied: dict[str, dict[str, bytes]]
    create_outputs: dict[str, dict[str, Any]]

    def run_commands(self, evaluation: Evaluation, names: set[str]) -> None:
        """Runs each named Command's update text over SSH; its stdout becomes its output."""
        for name in sorted(names):
            node_name, step = name[len("nodes-"):].rsplit("-", 1)
            run = run_step(self.nodes[node_name], node_steps(evaluation, node_name)[step], "update", self.client_key)
            self.engine.command_stdout[name] = run.check().stdout

    def apply_commands(self) -> list[tuple[set[str], Evaluation]]:
        """pulumi-command's part of `up`, wave by wave: the Commands whose inputs changed run
        their update text; a Command whose text carries a re-run one's stdout changes next."""
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
        engine = Engine(stack_config(auth, specs, nodes, client_key))
        declared = engine.evaluate()
        # `pulumi up`: the observations are created first (the Commands consume their repairs) ...
        verdicts = engine.up(declared)
        assert verdicts == {}, "a first up only creates"
        create_outputs = {name: dict(entry.outputs) for name, entry in engine.state.items()}
        # ... then the Commands run their create text over SSH; what they print is their output.
        for run in run_phase(declared, nodes.values(), "create", client_key):
            engine.command_stdout[command_name(run.node, run.step)] = run.stdout
        evaluation = engine.evaluate()
        assert commands(evaluation) == commands(engine.evaluate(observations=False)), \
            "created observations change no Command"
        assert commands(engine.evaluate()) == commands(evaluation), "the program is deterministic"
        applied = {name: comparable(node.snapshot()) for name, node in nodes.items()}
        yield World(auth, nodes, engine, client_key, declared, evaluation, applied, create_outputs)


# ----------------------------------------------------------------------------- create

def test_the_host_gets_the_provider_the_program_declared(world):
    observations = world.declared.of_type(OBSERVATION)
    assert len(observations) == 3 * len(world.nodes)
    for resource in observations:
        declared = declared_inputs(resource)
        provider = dill.loads(base64.b64decode(declared[PROVIDER_KEY]))
        assert type(provider) is NodeStepProbeProvider and type(provider).__module__ == "components.drift"
        entry = world.engine.state[resource.name]
        assert entry.inputs == declared, "Check keeps the inputs as declared"
        created = world.create_outputs[resource.name]
        assert created[PROVIDER_KEY] == declared[PROVIDER_KEY]
        assert created["observed"] == EXPECTED and created["repairs"] == 0, resource.name
        assert ("probe_stdin" in declared) == (world.auth and resource.name.endswith("-k3s-observed"))


def test_the_host_cannot_import_the_provider_outside_the_project_root(world, tmp_path):
    """Why the host must start in the project root: the provider is pickled by reference."""
    resource = world.declared.of_type(OBSERVATION)[0]
    with provider_host(cwd=tmp_path) as host, pytest.raises(ProviderError, match="No module named 'components'"):
        host.check(Target.of(resource), {}, declared_inputs(resource))


# ----------------------------------------------------------------------------- no drift: no repair loop

def test_without_drift_every_refresh_stays_in_sync_and_nothing_is_repaired(world):
    baseline = commands(world.evaluation)
    for round_ in range(REFRESH_ROUNDS):
        observed = world.engine.refresh()
        assert observed == {name: EXPECTED for name in world.engine.state}, f"round {round_}"
        assert set(world.engine.preview_diffs(world.evaluation).values()) == {DIFF_NONE}, f"round {round_}"
        assert world.engine.up(world.evaluation) == {name: DIFF_NONE for name in world.engine.state}
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
    drifted = observation_name(node_name, tamper.step)
    try:
        repairs_before = int(engine.state[drifted].outputs["repairs"])
        tamper.change(node, world.auth)

        # refresh: Read sees the drift on that step only
        observed = engine.refresh()
        assert observed[drifted] == tamper.reason(world.auth)
        assert {name: answer for name, answer in observed.items() if name != drifted} == {
            name: EXPECTED for name in observed if name != drifted}
        assert commands(engine.evaluate()) == commands(before), "a refresh alone changes no Command"

        # up: Diff says change for that observation only, Update orders one repair
        verdicts = engine.up(before)
        assert verdicts == {name: DIFF_SOME if name == drifted else DIFF_NONE for name in engine.state}
        updated = engine.state[drifted].outputs
        assert updated["observed"] == EXPECTED and updated["repairs"] == repairs_before + 1
        assert updated[PROVIDER_KEY] == declared_inputs(before.named(drifted))[PROVIDER_KEY]

        # the program sees the outputs Update returned: only the drifted step's text changes,
        # and pulumi-command runs its update text; a Command carrying that step's stdout follows
        (first, after), *following = world.apply_commands()
        old, new = commands(before), commands(after)
        changed = command_name(node_name, tamper.step)
        assert first == {changed}
        repaired_text = with_repairs(commands(world.declared)[changed]["create"], repairs_before + 1)
        assert new[changed]["create"] == new[changed]["update"] == repaired_text
        assert {k: v for k, v in new[changed].items() if k not in ("create", "update")} == {
            k: v for k, v in old[changed].items() if k not in ("create", "update")}
        for names, evaluation in following:
            for name in names:
                assert evaluation.named(changed).urn in evaluation.named(name).dependencies, \
                    f"{name} changed, but it does not read {changed}"
        settled = commands(world.evaluation)

        # the next refreshes are in sync, and stay so: no repair loop
        for round_ in range(2):
            assert set(engine.refresh().values()) == {EXPECTED}, f"round {round_}"
            assert set(engine.preview_diffs(after).values()) == {DIFF_NONE}, f"round {round_}"
            assert commands(engine.evaluate()) == settled, f"round {round_}"
        assert comparable(node.snapshot()) == world.applied[node_name], "the repair puts back what up wrote"
    except BaseException:
        world.converge()
        raise


def test_the_k3s_credentials_reach_the_host_as_plain_text_only_in_probe_stdin(world):
    """The key and the credentials are secrets in the program; the host gets them unwrapped."""
    for node_name in world.nodes:
        resource = world.declared.named(observation_name(node_name, "k3s"))
        inputs = declared_inputs(resource)
        assert inputs["connection"]["private_key"] == world.client_key.private_key_text
        assert inputs["connection"]["host_key"] == world.nodes[node_name].host_public_key
        stdin = node_steps(world.declared, node_name)["k3s"].inputs.get("stdin")
        if world.auth:
            assert json.loads(inputs["probe_stdin"]) == json.loads(stdin)
            assert json.loads(stdin)["password"] not in inputs["probe"]
        else:
            assert stdin is None and "probe_stdin" not in inputs


# ----------------------------------------------------------------------------- destroy

def test_zz_delete_observes_nothing_and_changes_nothing(world):
    before = {name: comparable(node.snapshot()) for name, node in world.nodes.items()}
    with provider_host() as host:
        for entry in world.engine.state.values():
            host.delete(entry.target, entry.id, entry.outputs, entry.inputs)
    assert {name: comparable(node.snapshot()) for name, node in world.nodes.items()} == before
