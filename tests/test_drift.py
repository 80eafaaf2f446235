"""Drift detection without SSH: the probes as text, the provider's decisions, its serialization.

Every input here is what the program declares for a node (its ``nodes-<node>-scripts``
resource); the real node behaviour (every tamper seen by one refresh and repaired) is in
test_drift_real.py.
"""

import base64
import json
import re
import subprocess
import sys

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components.node import scripts_resource, ssh
from components.node.plan import NodePlan
from components.node.runner import SCRIPTS, reader_script, with_repairs
from components.node.scripts_resource import NodeScriptsProvider, outputs_of
from components.node.steps import hosts, registries, trust

from harness import GUIDE_CONFIG, PROJECT_DIR, evaluate, is_secret_marker
from nodebed import outs as outputs
from nodebed import plan_of

ADDRESS = "registry.cube.local:5000"
PASSWORD = "hunter2-registry-password"
SCRIPTS_TYPE = "pulumi-python:dynamic/k3s-registry:NodeScripts"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-secret-bits\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOBXGdGQYlOvaBX+Dr2Yq7nn3q7ntvNXT3GaEmN0MJUp"
OBSERVED_STEPS = ("trust", "hosts", "k3s")
STEPS = ("trust", "hosts", "k3s", "restart")


def stack(**changes):
    """The guide's registry, one agent reached as `deploy` with a key from the stack and a pinned host key,
    its CA in the OS trust store too (the probe with most to check)."""
    config = {
        **GUIDE_CONFIG,
        "osTrustStore": "true",
        "nodes": [{"name": "cube01", "host": "127.0.0.9", "role": "agent", "user": "deploy", "hostKey": HOST_KEY}],
        "sshPrivateKey": PRIVATE_KEY,
    }
    return {**config, **changes}


def declare(**changes):
    return evaluate(stack(**changes), secret_keys=("sshPrivateKey",))


@pytest.fixture(scope="module")
def declared():
    return declare()


@pytest.fixture(scope="module")
def scripts(declared):
    return declared.named("nodes-cube01-scripts")


@pytest.fixture(scope="module")
def plan(scripts):
    return plan_of(scripts)


@pytest.fixture(scope="module")
def probes(plan):
    """The node's probes as the program renders them (each step module's probe, through its NodePlan)."""
    return {step: plan.scripts()[f"{step}/probe"] for step in OBSERVED_STEPS}


@pytest.fixture(scope="module")
def reader(plan):
    """What a refresh runs on the node: every probe, in one session."""
    return reader_script(plan.scripts_dir, plan.step_digests())


def shellcheck(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=script.encode(), capture_output=True,
                          check=False)


# ------------------------------------------------------------------ probes as text

def test_every_probe_and_the_reader_are_shellcheck_clean_posix_sh(probes, reader):
    assert set(probes) == set(OBSERVED_STEPS)
    for step, script in {**probes, "reader": reader}.items():
        result = shellcheck(script)
        assert result.returncode == 0, f"{step}:\n{result.stdout.decode()}"
        assert script.startswith("set -eu\n"), step


def test_the_probes_are_the_step_modules_own(plan, probes):
    """No second copy of the probes: the node gets exactly what each step's module renders."""
    target = plan.target
    assert probes["trust"].rstrip("\n") == trust.trust_probe_script(target, plan.certificate_pem).rstrip("\n")
    off = plan_of(declare(osTrustStore="false").named("nodes-cube01-scripts"))
    assert off.scripts()["trust/probe"].rstrip("\n") == trust.trust_off_probe_script(off.target).rstrip("\n")
    assert probes["hosts"].rstrip("\n") == hosts.hosts_probe_script(
        target, plan.hostname, plan.ip_address).rstrip("\n")
    assert probes["k3s"].rstrip("\n") == registries.registries_probe_script(
        target, plan.address, plan.certificate_pem, plan.caches).rstrip("\n")


def test_probes_carry_public_values_and_never_a_key_or_credentials(declared, scripts, probes, reader):
    """Credentials have no way into a probe's text (or the plan): they go on stdin."""
    certificate_pem = declared.outputs["caCertificatePem"]
    password = declared.outputs["registryPassword"]
    assert certificate_pem.strip() in probes["trust"] and certificate_pem.strip() in probes["k3s"]
    assert "192.168.0.202\tregistry.cube.local\t# managed by k3s-registry (k3s-registry-dev)" in probes["hosts"]
    assert ADDRESS in probes["k3s"]
    plan_text = json.dumps(scripts.inputs["plan"])
    for name, text in {**probes, "reader": reader, "plan": plan_text}.items():
        for secret in ("PRIVATE KEY", "secret-bits", password):
            assert secret not in text, (name, secret)
    assert password in scripts.inputs["credentials"], "the credentials travel beside the plan, as a secret"


def test_probes_and_the_reader_write_nothing(probes, reader):
    """No scratch files, no redirection into a file, no call of the install script's helpers."""
    off_probe = plan_of(declare(osTrustStore="false").named("nodes-cube01-scripts")).scripts()["trust/probe"]
    for step, script in {**probes, "reader": reader, "trust probe, OS store off": off_probe}.items():
        for forbidden in ("mktemp", "rm ", "mv ", "cp ", "tee ", "touch ", "chmod", "chown", "mkdir", "sed -i", "ln "):
            assert forbidden not in script, (step, forbidden)
        targets = set(re.findall(r"(?<![<>=-])>{1,2}(?!=)\s*(&\d|[^\s;|&)]*)", script))
        assert targets <= {"/dev/null", "&1", "&2"}, (step, targets)
        # The trust probe reuses the install script's OS detection: it defines refresh_trust
        # and announce_removal but must never call them.
        calls = [line for line in script.splitlines() if line.strip() in ("refresh_trust", "announce_removal")]
        assert calls == [], step


def run_checker(python: list[str], path, stdin: bytes = b"", caches: str = "[]") -> subprocess.CompletedProcess:
    checker = registries.REGISTRIES_CHECKER_SOURCE
    return subprocess.run([*python, "-c", checker, str(path), ADDRESS, "/etc/ca.crt", caches], input=stdin,
                          capture_output=True, check=False)


def test_the_registries_checker_runs_and_stays_quiet_about_values(tmp_path):
    """The node-side checker on a file with someone's password: findings name items, never values."""
    path = tmp_path / "registries.yaml"
    path.write_text(
        "mirrors:\n  registry.cube.local:5000:\n    endpoint: [http://evil.example]\n"
        f"configs:\n  other:5000:\n    auth: {{username: bob, password: {PASSWORD}}}\n"
    )
    run = run_checker([sys.executable], path)
    assert run.returncode == 0, run.stderr.decode()
    output = run.stdout.decode()
    assert output.count("\n") == 1
    assert "the mirror for registry.cube.local:5000 is not https://registry.cube.local:5000 alone" in output
    assert "no configs entry for registry.cube.local:5000" in output
    assert PASSWORD not in output and "evil" not in output and "bob" not in output


def test_the_registries_checker_is_silent_when_the_file_matches_and_checks_credentials_from_stdin(tmp_path):
    path = tmp_path / "registries.yaml"
    path.write_text(
        f"mirrors:\n  {ADDRESS}:\n    endpoint: [https://{ADDRESS}]\n"
        f"configs:\n  {ADDRESS}:\n    tls: {{ca_file: /etc/ca.crt}}\n    auth: {{username: ci, password: {PASSWORD}}}\n"
    )
    same = run_checker([sys.executable], path, json.dumps({"username": "ci", "password": PASSWORD}).encode())
    assert (same.returncode, same.stdout) == (0, b""), same.stderr.decode()
    other = run_checker([sys.executable], path, json.dumps({"username": "ci", "password": "not-it"}).encode())
    assert other.stdout.decode() == f"registries.yaml: configs.{ADDRESS} has other credentials\n"
    assert PASSWORD not in other.stdout.decode() and "not-it" not in other.stdout.decode()


def test_the_registries_checker_exits_3_without_pyyaml(tmp_path):
    """The probe turns exit 3 into a failure naming the package; a python without PyYAML gets exit 3."""
    no_yaml = [sys.executable, "-I", "-S"]
    assert subprocess.run([*no_yaml, "-c", "import yaml"], capture_output=True, check=False).returncode != 0, "yaml importable"
    path = tmp_path / "registries.yaml"
    path.write_text(f"mirrors:\n  {ADDRESS}:\n    endpoint: [https://{ADDRESS}]\n")
    run = run_checker(no_yaml, path)
    assert (run.returncode, run.stdout) == (3, b""), run.stderr.decode()
    with_yaml = run_checker([sys.executable], path)
    assert with_yaml.returncode == 0 and "no configs entry" in with_yaml.stdout.decode()


def test_the_k3s_probe_fails_naming_pyyaml_on_exit_3(probes):
    """The shell side of exit 3: fail with what to install, never a verdict."""
    k3s = probes["k3s"]
    assert re.search(r'elif \[ "\$\?" -eq 3 \]; then\s+fail "\$needs"', k3s), "exit 3 is a failure, not a verdict"
    assert "python3 with PyYAML (apt install python3-yaml, dnf install python3-pyyaml)" in k3s
    assert k3s.count("python3 -c") == 1, "one interpreter start"


# ------------------------------------------------------------------ the provider's decisions

@pytest.fixture(scope="module")
def props(scripts):
    """The inputs as the provider host hands them over (plain dicts, no __provider)."""
    return {key: value for key, value in scripts.inputs.items() if key != "__provider"}


def state(props, observed=None, repairs=None):
    """What the state holds for the resource: create's outputs, then what a refresh observed."""
    return {**outputs_of(props, repairs=dict(repairs or {})), "observed": dict(observed or {})}


def with_connection(props, **changes):
    return {**props, "connection": {**props["connection"], **changes}}


def test_diff_is_quiet_when_in_sync_and_nothing_changed(props):
    quiet = NodeScriptsProvider().diff("id", state(props), props)
    assert quiet.changes is False and quiet.replaces == [] and quiet.delete_before_replace is False
    after_repairs = NodeScriptsProvider().diff("id", state(props, repairs={"hosts": 2.0}), props)
    assert after_repairs.changes is False, "repairs already made are no change"


def test_diff_is_loud_on_drift_and_on_a_new_plan_connection_or_credentials(props):
    provider = NodeScriptsProvider()
    for step in (*OBSERVED_STEPS, SCRIPTS):
        drifted = provider.diff("id", state(props, observed={step: "drift: x"}), props)
        assert drifted.changes is True and drifted.replaces == [], step
    new_plan = {key: value for key, value in declare(loadBalancerIp="192.168.0.203").named(
        "nodes-cube01-scripts").inputs.items() if key != "__provider"}
    assert new_plan["plan"] != props["plan"] and new_plan["connection"] == props["connection"]
    for news in (new_plan, with_connection(props, user="root"), with_connection(props, private_key="other key"),
                 with_connection(props, host_key=HOST_KEY.replace("AAAAC3", "AAAAC4")),
                 {**props, "credentials": json.dumps({"username": "registry", "password": "rotated"})},
                 {key: value for key, value in props.items() if key != "credentials"}):
        result = provider.diff("id", state(props), news)
        assert result.changes is True and result.replaces == [], news


def test_only_a_new_host_or_port_replaces_and_the_new_one_is_created_first(props):
    provider = NodeScriptsProvider()
    for moved in (with_connection(props, host="127.0.0.10"), with_connection(props, port=2222)):
        result = provider.diff("id", state(props), moved)
        assert result.changes is True and result.replaces == ["connection"]
        assert result.delete_before_replace is False
    assert provider.diff("id", state(props), with_connection(props, port=22.0)).changes is False, "a double is 22"
    assert provider.diff("id", state(props, observed={"k3s": "drift: x"}), props).replaces == []


@pytest.fixture
def installs(monkeypatch):
    """Records every install (one SSH session writing the scripts) instead of connecting."""
    calls = []
    monkeypatch.setattr(scripts_resource, "install", lambda props, resource_id: calls.append((props, resource_id)))
    return calls


def test_update_counts_a_repair_only_for_drifted_steps_and_keeps_earlier_counts(props, installs):
    olds = state(props, observed={"hosts": "drift: /etc/hosts has no managed line", "k3s": "drift: y"},
                 repairs={"trust": 2.0, "hosts": 1.0})
    outs = outputs(NodeScriptsProvider().update("id", olds, props))
    assert outs["repairs"] == {"trust": 2, "hosts": 2, "k3s": 1}
    assert all(type(count) is int for count in outs["repairs"].values())
    assert outs["observed"] == {}, "the Commands repair right after: the state is as they apply it"
    assert outs["connection"] == props["connection"], "read needs the connection in the outputs"
    assert outs["credentials"] == props["credentials"] and outs["digests"] == olds["digests"]
    assert installs == [], "the scripts on the node are current: nothing written"


def test_the_scripts_pseudo_step_is_never_counted_and_reinstalls(props, installs):
    olds = state(props, observed={"scripts": "drift: missing or changed on the node: restart"}, repairs={"k3s": 1})
    outs = outputs(NodeScriptsProvider().update("res-id", olds, props))
    assert outs["repairs"] == {"k3s": 1} and outs["observed"] == {}
    assert installs == [(props, "res-id")]


def test_update_installs_only_when_the_scripts_or_the_connection_changed(props, installs):
    provider = NodeScriptsProvider()
    new_plan = {key: value for key, value in declare(hostname="registry2.cube.local").named(
        "nodes-cube01-scripts").inputs.items() if key != "__provider"}
    outs = outputs(provider.update("res-id", state(props, repairs={"hosts": 3}), new_plan))
    assert installs == [(new_plan, "res-id")]
    assert outs["digests"] == NodePlan.from_props(new_plan["plan"]).step_digests() != state(props)["digests"]
    assert outs["repairs"] == {"hosts": 3}, "new scripts are no repair: the changed digests re-run the steps"
    installs.clear()
    new_user = with_connection(props, user="root")
    provider.update("res-id", state(props), new_user)
    assert installs == [(new_user, "res-id")]
    installs.clear()
    rotated = {**props, "credentials": json.dumps({"username": "registry", "password": "rotated"})}
    assert outputs(provider.update("res-id", state(props), rotated))["credentials"] == rotated["credentials"]
    assert installs == [], "credentials are not in the scripts (they go on stdin)"


def test_create_installs_once_and_records_the_state_the_commands_apply_next(props, installs):
    created = NodeScriptsProvider().create(props)
    assert installs == [(props, created.id)]
    assert created.id.startswith("deploy@127.0.0.9:22#")
    assert created.outs == outputs_of(props, repairs={}) and created.outs["observed"] == {}
    assert "plan" not in created.outs, "the state keeps no plan"
    assert created.id != NodeScriptsProvider().create(props).id


def test_read_returns_only_what_is_off_and_fails_on_an_answer_without_a_verdict_per_step(props, monkeypatch):
    olds = state(props, repairs={"trust": 1})
    answers = {"in sync": "trust in-sync\nhosts in-sync\nk3s in-sync\nscripts in-sync\n",
               "hosts off": "trust in-sync\nhosts drift: /etc/hosts has no managed line\nk3s in-sync\nscripts in-sync\n"}
    sent = []

    def fake_run(connection, script, purpose, stdin="", script_on_stdin=False):
        sent.append((script, stdin))
        return answer

    monkeypatch.setattr(scripts_resource, "run_on_node", fake_run)
    answer = answers["in sync"]
    read = outputs(NodeScriptsProvider().read("id", olds))
    assert read["observed"] == {} and read["repairs"] == {"trust": 1} and read["connection"] == props["connection"]
    assert sent == [(reader_script(olds["scripts_dir"], olds["digests"]), props["credentials"])], \
        "one session: the reader, with the credentials on stdin"
    answer = answers["hosts off"]
    assert outputs(NodeScriptsProvider().read("id", olds))["observed"] == {"hosts": "drift: /etc/hosts has no managed line"}
    for nonsense in ("", "trust in-sync\nhosts in-sync\nk3s in-sync\n", answers["in sync"] + "trust in-sync\n",
                     answers["in sync"].replace("hosts in-sync", "hosts fine"), "Welcome!\n" + answers["in sync"]):
        answer = nonsense
        with pytest.raises(ssh.ProbeError, match="gave no verdict per step"):
            NodeScriptsProvider().read("id", olds)


def test_the_command_text_changes_with_each_repair_and_not_before():
    assert with_repairs is with_repairs
    assert with_repairs("sh -c 'x'", 0) == "sh -c 'x'"
    assert with_repairs("sh -c 'x'", None) == "sh -c 'x'"
    assert with_repairs("sh -c 'x'", 1.0) == "sh -c 'x'\n# repair 1"
    assert with_repairs("sh -c 'x'", 2) != with_repairs("sh -c 'x'", 1)


def test_a_trailing_repair_comment_keeps_the_commands_exit_status():
    for status in (0, 3):
        run = subprocess.run(["sh", "-c", with_repairs(f"sh -c 'exit {status}'", 4)], check=False)
        assert run.returncode == status


# ------------------------------------------------------------------ serialization, as Pulumi does it

def test_the_provider_round_trips_through_dill_and_works_in_a_fresh_process(props):
    """Pulumi's serialize_provider, then a new interpreter in the project directory (like the provider host)."""
    encoded = serialize_provider(NodeScriptsProvider())
    assert isinstance(dill.loads(base64.b64decode(encoded)), NodeScriptsProvider)
    olds = state(props, observed={"hosts": "drift: x"}, repairs={"trust": 1})
    program = (
        "import base64, json, sys, dill\n"
        "provider = dill.loads(base64.b64decode(sys.stdin.read()))\n"
        f"olds, news = json.loads({json.dumps(json.dumps([olds, props]))})\n"
        "outs = provider.update('id', olds, news).outs\n"
        "print(provider.diff('id', olds, news).changes, json.dumps(outs['repairs'], sort_keys=True))\n"
    )
    run = subprocess.run([sys.executable, "-c", program], input=encoded.encode(), capture_output=True, cwd=PROJECT_DIR,
                         check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().split(" ", 1) == ["True", '{"hosts": 1, "trust": 1}\n']


def test_serialization_is_deterministic_so_the_provider_never_shows_as_a_diff(scripts):
    assert serialize_provider(NodeScriptsProvider()) == serialize_provider(NodeScriptsProvider())
    assert scripts.inputs["__provider"] == serialize_provider(NodeScriptsProvider())
    assert declare().named("nodes-cube01-scripts").inputs["__provider"] == scripts.inputs["__provider"]


def test_the_declared_provider_loads_in_a_fresh_process(scripts):
    encoded = scripts.inputs["__provider"]
    program = "import base64, sys, dill\nprint(type(dill.loads(base64.b64decode(sys.stdin.read()))).__name__)\n"
    run = subprocess.run([sys.executable, "-c", program], input=encoded.encode(), capture_output=True, cwd=PROJECT_DIR,
                         check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == "NodeScriptsProvider"


# ------------------------------------------------------------------ the declared resource

def test_the_node_scripts_resource_is_declared_with_its_secrets_marked(declared, scripts):
    assert scripts.type == SCRIPTS_TYPE and scripts.parent_name == "nodes"
    assert [r.name for r in declared.of_type(SCRIPTS_TYPE)] == ["nodes-cube01-scripts"], "ONE per node"
    wire = scripts.wire_inputs
    assert is_secret_marker(wire["connection"]["private_key"])
    assert is_secret_marker(wire["credentials"])
    assert is_secret_marker(wire["__provider"])
    assert not is_secret_marker(wire["plan"]), "the plan is public: diffs stay readable"
    assert scripts.inputs["connection"] == {"host": "127.0.0.9", "port": 22, "user": "deploy",
                                            "private_key": PRIVATE_KEY, "host_key": HOST_KEY}


def test_its_outputs_mark_the_connection_and_credentials_secret(monkeypatch):
    """The key (in connection) and the credentials stay secret in the state's outputs too."""
    import harness

    registered = {}
    original = harness.CapturingMonitor.RegisterResource

    def register(self, request):
        registered[request.name] = list(request.additionalSecretOutputs)
        return original(self, request)

    monkeypatch.setattr(harness.CapturingMonitor, "RegisterResource", register)
    declare()
    assert sorted(registered["nodes-cube01-scripts"]) == ["connection", "credentials"]


def test_without_auth_the_resource_has_no_credentials(props):
    unauthenticated = declare(auth="false").named("nodes-cube01-scripts")
    assert "credentials" not in {k: v for k, v in unauthenticated.inputs.items() if v is not None}
    assert "credentials" not in outputs_of(unauthenticated.inputs, repairs={})


def test_a_bad_private_key_is_refused_with_a_message_and_not_echoed():
    with pytest.raises(ssh.ProbeError) as failure:
        ssh.load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-secret-bits\n-----END OPENSSH PRIVATE KEY-----\n")
    assert "secret-bits" not in str(failure.value)


def test_each_command_depends_on_the_scripts_and_changes_only_with_its_own_repair(declared, scripts):
    """The Commands read the resource's outputs (never the other way round); a repair count changes
    exactly its step's create text, and nothing before a repair."""
    commands = {step: declared.named(f"nodes-cube01-{step}") for step in STEPS}
    for step, command in commands.items():
        assert scripts.urn in command.dependencies, step
        assert command.urn not in scripts.dependencies, step
        assert "# repair" not in command.inputs["create"], step
    outputs = {key: value for key, value in scripts.outputs.items() if key != "__provider"}  # create's outputs
    assert outputs["repairs"] == {} and outputs["observed"] == {}
    for step in OBSERVED_STEPS:
        again = evaluate(stack(), secret_keys=("sshPrivateKey",),
                         outputs_by_name={"nodes-cube01-scripts": {**outputs, "repairs": {step: 1}}})
        changed = {other: again.named(f"nodes-cube01-{other}").inputs["create"] for other in STEPS
                   if again.named(f"nodes-cube01-{other}").inputs["create"] != commands[other].inputs["create"]}
        assert changed == {step: f"{commands[step].inputs['create']}\n# repair 1"}, step
