"""Drift detection without SSH: the probes as text, the provider's decisions, its serialization.

The real node behaviour (every tamper detected and repaired) is in test_drift_real.py.
"""

import base64
import json
import subprocess
import sys

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components import drift, drift_probes
from components.drift import EXPECTED, NodeStepProbeProvider, observe_step, with_repairs
from components.node_scripts import NodeTarget
from harness import GUIDE_CONFIG, PROJECT_DIR, evaluate, is_secret_marker, run_function

TARGET = NodeTarget(node_name="cube01", role="agent", instance_id="k3s-registry-dev")
ADDRESS = "registry.cube.local:5000"
PASSWORD = "hunter2-registry-password"
OBSERVATION_TYPE = "pulumi-python:dynamic/k3s-registry:NodeStepObservation"


@pytest.fixture(scope="module")
def certificate_pem():
    return evaluate(GUIDE_CONFIG).outputs["caCertificatePem"]


@pytest.fixture(scope="module")
def probes(certificate_pem):
    return drift_probes.probe_scripts(
        TARGET, certificate_pem=certificate_pem, hostname="registry.cube.local", ip_address="192.168.0.202",
        address=ADDRESS,
    )


def shellcheck(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=script.encode(), capture_output=True)


# ------------------------------------------------------------------ probes as text

def test_every_probe_is_shellcheck_clean_posix_sh(probes):
    assert set(probes) == {"trust", "hosts", "k3s"}
    for step, script in probes.items():
        result = shellcheck(script)
        assert result.returncode == 0, f"{step}:\n{result.stdout.decode()}"
        assert script.startswith("set -eu\n"), step


def test_probes_carry_public_values_and_never_a_key(probes, certificate_pem):
    """Credentials have no way into a probe's text: they go on stdin (see the observation test)."""
    assert certificate_pem.strip() in probes["trust"] and certificate_pem.strip() in probes["k3s"]
    assert "192.168.0.202\tregistry.cube.local\t# managed by k3s-registry (k3s-registry-dev)" in probes["hosts"]
    for step, script in probes.items():
        assert "PRIVATE KEY" not in script, step


def test_probes_write_nothing_no_scratch_files_or_redirections_into_files(probes):
    for step, script in probes.items():
        for forbidden in ("mktemp", "rm ", "mv ", "cp ", "tee ", "> \"", ">\"", "chmod", "mkdir", "sed -i"):
            assert forbidden not in script, (step, forbidden)
        # The trust probe reuses the install script's OS detection: it defines refresh_trust
        # and announce_removal but must never call them.
        calls = [line for line in script.splitlines() if line.strip() in ("refresh_trust", "announce_removal")]
        assert calls == [], step


def test_the_registries_checker_runs_and_stays_quiet_about_values(tmp_path):
    """The node-side checker on a file with someone's password: findings name items, never values."""
    path = tmp_path / "registries.yaml"
    path.write_text(
        "mirrors:\n  registry.cube.local:5000:\n    endpoint: [http://evil.example]\n"
        f"configs:\n  other:5000:\n    auth: {{username: bob, password: {PASSWORD}}}\n"
    )
    checker = drift_probes.REGISTRIES_CHECKER_SOURCE
    run = subprocess.run([sys.executable, "-c", checker, str(path), ADDRESS, "/etc/ca.crt"], input=b"", capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    output = run.stdout.decode()
    assert output.count("\n") == 1
    assert "the mirror for registry.cube.local:5000 is not https://registry.cube.local:5000 alone" in output
    assert "no configs entry for registry.cube.local:5000" in output
    assert PASSWORD not in output and "evil" not in output and "bob" not in output


# ------------------------------------------------------------------ the provider's decisions

def state(observed=EXPECTED, repairs=0, probe="probe v1"):
    return {"connection": {"host": "127.0.0.9", "port": 22, "user": "root"}, "probe": probe, "expected": EXPECTED,
            "observed": observed, "repairs": repairs}


def inputs(probe="probe v1"):
    return {"connection": {"host": "127.0.0.9", "port": 22, "user": "root"}, "probe": probe, "expected": EXPECTED}


def test_diff_is_quiet_when_in_sync_and_loud_on_drift_or_new_inputs():
    provider = NodeStepProbeProvider()
    quiet = provider.diff("id", state(), inputs())
    assert quiet.changes is False and quiet.replaces == [] and quiet.delete_before_replace is False
    assert provider.diff("id", state(observed="drift: /etc/hosts has no managed line"), inputs()).changes is True
    assert provider.diff("id", state(), inputs(probe="probe v2")).changes is True
    moved = inputs()
    moved["connection"] = {**moved["connection"], "host": "127.0.0.10"}
    assert provider.diff("id", state(), moved).changes is True
    assert provider.diff("id", state(observed="drift: x"), inputs()).replaces == []


def test_update_counts_a_repair_only_for_drift():
    provider = NodeStepProbeProvider()
    repaired = provider.update("id", state(observed="drift: x", repairs=2.0), inputs()).outs
    assert repaired["observed"] == EXPECTED and repaired["repairs"] == 3
    assert repaired["connection"]["host"] == "127.0.0.9", "read needs the connection in the outputs"
    changed_inputs = provider.update("id", state(repairs=2), inputs(probe="probe v2")).outs
    assert changed_inputs["repairs"] == 2 and changed_inputs["probe"] == "probe v2"


def test_the_command_text_changes_with_each_repair_and_not_before():
    assert with_repairs("sh -c 'x'", 0) == "sh -c 'x'"
    assert with_repairs("sh -c 'x'", None) == "sh -c 'x'"
    assert with_repairs("sh -c 'x'", 1.0) == "sh -c 'x'\n# repair 1"
    assert with_repairs("sh -c 'x'", 2) != with_repairs("sh -c 'x'", 1)


def test_a_trailing_repair_comment_keeps_the_commands_exit_status():
    for status in (0, 3):
        run = subprocess.run(["sh", "-c", with_repairs(f"sh -c 'exit {status}'", 4)])
        assert run.returncode == status


# ------------------------------------------------------------------ serialization, as Pulumi does it

def test_the_provider_round_trips_through_dill_and_works_in_a_fresh_process():
    """Pulumi's serialize_provider, then a new interpreter in the project directory (like the provider host)."""
    encoded = serialize_provider(NodeStepProbeProvider())
    assert isinstance(dill.loads(base64.b64decode(encoded)), NodeStepProbeProvider)
    program = (
        "import base64, json, sys, dill\n"
        "provider = dill.loads(base64.b64decode(sys.stdin.read()))\n"
        f"olds, news = json.loads({json.dumps(json.dumps([state(observed='drift: x'), inputs()]))})\n"
        "print(provider.diff('id', olds, news).changes, provider.update('id', olds, news).outs['repairs'])\n"
    )
    run = subprocess.run([sys.executable, "-c", program], input=encoded.encode(), capture_output=True, cwd=PROJECT_DIR)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().split() == ["True", "1"]


def test_serialization_is_deterministic_so_the_provider_never_shows_as_a_diff():
    assert serialize_provider(NodeStepProbeProvider()) == serialize_provider(NodeStepProbeProvider())


@pytest.fixture(scope="module")
def declared_observation():
    def program():
        observe_step(
            "nodes-cube01-k3s-observed", host="127.0.0.9", port=22, user="deploy",
            private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n",
            host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOBXGdGQYlOvaBX+Dr2Yq7nn3q7ntvNXT3GaEmN0MJUp",
            probe="set -eu\necho in-sync\n", probe_stdin=json.dumps({"username": "ci", "password": PASSWORD}),
        )

    return run_function(program).one(OBSERVATION_TYPE)


def test_observe_step_declares_a_dynamic_resource_with_its_secrets_marked(declared_observation):
    wire = declared_observation.wire_inputs
    assert is_secret_marker(wire["connection"]["private_key"])
    assert is_secret_marker(wire["probe_stdin"])
    assert PASSWORD not in json.dumps(wire["probe"]) and "PRIVATE KEY" not in json.dumps(wire["probe"])
    assert is_secret_marker(wire["__provider"])
    assert declared_observation.inputs["expected"] == EXPECTED
    assert declared_observation.inputs["connection"]["user"] == "deploy"


def test_the_declared_provider_loads_in_a_fresh_process(declared_observation):
    encoded = declared_observation.inputs["__provider"]
    program = "import base64, sys, dill\nprint(type(dill.loads(base64.b64decode(sys.stdin.read()))).__name__)\n"
    run = subprocess.run([sys.executable, "-c", program], input=encoded.encode(), capture_output=True, cwd=PROJECT_DIR)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == "NodeStepProbeProvider"


def test_a_bad_private_key_is_refused_with_a_message_and_not_echoed():
    with pytest.raises(drift.ProbeError) as failure:
        drift.load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-secret-bits\n-----END OPENSSH PRIVATE KEY-----\n")
    assert "secret-bits" not in str(failure.value)


def test_the_documented_wiring_makes_the_command_depend_on_its_observation():
    """The snippet from observe_step's docstring, under the mocks: the text is unchanged until a repair."""
    import pulumi
    import pulumi_command as command

    def program():
        create = "sh -c 'echo configure'"
        observed = observe_step("nodes-cube01-hosts-observed", host="127.0.0.9", port=22, user="root",
                                probe="set -eu\necho in-sync\n")
        text = pulumi.Output.all(create, observed.repairs).apply(lambda a: with_repairs(a[0], a[1]))
        command.remote.Command("nodes-cube01-hosts", connection=command.remote.ConnectionArgs(host="127.0.0.9"),
                               create=text, update=text, delete="sh -c 'echo undo'")

    evaluation = run_function(program)
    observation = evaluation.one(OBSERVATION_TYPE)
    step = evaluation.one("command:remote:Command")
    assert step.inputs["create"] == step.inputs["update"] == "sh -c 'echo configure'"
    assert observation.urn in step.dependencies
    assert step.urn not in observation.dependencies
