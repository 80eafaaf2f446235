"""Every stack is accepted by the Pulumi CLI's own config rules, then evaluates with what it merged.

tests/pulumi_cli.py applies what the CLI does before the program starts (project schema and
types, required keys, injected defaults as text/JSON, secret keys must be secrets); the program
then runs under the mocks with exactly the config the CLI would hand it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.config import KNOWN_KEYS
from harness import PROJECT, PROJECT_DIR, ProgramFailed, evaluate_raw, is_secret_marker
from pulumi_cli import (
    CliError,
    encrypt_for_test,
    load_project,
    load_stack_file,
    program_config,
    stack_value,
    validate_project,
)

CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
COMMAND = "command:remote:Command"
HTPASSWD_KEY = "htpasswd"
SSH_KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def project():
    return load_project(PROJECT_DIR / "Pulumi.yaml")


def dev_stack() -> dict:
    return yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text())["config"]


def merged(project, stack_config: dict, stack_name: str = "dev"):
    return program_config(project, stack_name, {key: stack_value(value) for key, value in stack_config.items()})


def run(project, stack_config: dict, stack_name: str = "dev"):
    config = merged(project, stack_config, stack_name)
    return config, evaluate_raw(config.values, secret_keys=config.secret_keys, stack=stack_name)


def key(name: str) -> str:
    return f"{PROJECT}:{name}"


# ----------------------------------------------------------------------------- the project file

def test_the_project_file_passes_the_clis_schema_and_checks(project):
    assert project["name"] == PROJECT


def test_only_keys_without_a_sensible_default_are_required(project):
    declared = project["config"]
    required = {name for name, entry in declared.items() if "default" not in entry and "value" not in entry}
    assert required == {"hostname", "loadBalancerIp"}


def test_no_declared_key_is_secret_because_a_secret_default_can_never_be_valid(project):
    # A declared secret key is required (no default) or always rejected (an injected default is
    # not encrypted): sshPrivateKey is optional (SSH agent), so the program checks it itself.
    assert not [name for name, entry in project["config"].items() if entry.get("secret")]


def test_every_stack_file_in_the_repository_is_accepted_and_evaluates(project):
    stack_files = sorted(PROJECT_DIR.glob("Pulumi.*.yaml"))
    assert stack_files, "no stack file"
    for path in stack_files:
        stack_name = path.name[len("Pulumi."):-len(".yaml")]
        config = program_config(project, stack_name, load_stack_file(path))
        evaluation = evaluate_raw(config.values, secret_keys=config.secret_keys, stack=stack_name)
        assert evaluation.outputs["registryAddress"], path.name


def test_the_readme_table_marks_exactly_the_required_keys(project):
    readme = (PROJECT_DIR / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", readme, flags=re.MULTILINE)
    table = {name: default.strip() for name, default in rows}
    assert set(table) == set(KNOWN_KEYS)
    assert {name for name, default in table.items() if default == "required"} == {
        name for name, entry in project["config"].items() if "default" not in entry
    }


# ----------------------------------------------------------------------------- the cases users meet

def test_the_dev_stack_as_an_ssh_agent_user(project):
    stack = dev_stack()
    assert key("sshPrivateKey") not in stack
    config, evaluation = run(project, stack)
    commands = evaluation.of_type(COMMAND)
    assert commands
    for command in commands:
        assert "privateKey" not in command.inputs["connection"], command.name


def test_injected_defaults_arrive_as_the_clis_text_and_mean_the_documented_defaults(project):
    config, evaluation = run(project, dev_stack())
    assert config.values[key("restartK3s")] == "true"
    assert config.values[key("certIpAddresses")] == "[]"
    assert config.values[key("k3sRestartTimeout")] == "300"
    assert config.values[key("authUsername")] == "registry"
    assert evaluation.outputs["registryUsername"] == "registry"


def test_a_stack_with_auth_off_is_accepted_although_a_user_name_is_injected(project):
    config, evaluation = run(project, {**dev_stack(), key("auth"): False})
    assert config.values[key("authUsername")] == "registry"  # injected: the program cannot tell
    assert "registryUsername" not in evaluation.outputs and "registryPassword" not in evaluation.outputs
    secrets = evaluation.of_type("kubernetes:core/v1:Secret")
    assert all(HTPASSWD_KEY not in (s.inputs.get("stringData") or {}) for s in secrets)


def test_a_stack_without_storage_class_uses_the_clusters_default_class(project):
    stack = {name: value for name, value in dev_stack().items() if name != key("storageClass")}
    config, evaluation = run(project, stack)
    assert key("storageClass") not in config.values
    assert "storageClassName" not in evaluation.one(CLAIM).inputs["spec"]


def test_a_stack_with_only_the_required_keys_and_no_nodes(project):
    config, evaluation = run(project, {key("hostname"): "registry.lab.test", key("loadBalancerIp"): "10.1.2.3"})
    assert evaluation.of_type(COMMAND) == []
    assert evaluation.outputs["configuredNodes"] == []
    assert evaluation.outputs["registryAddress"] == "registry.lab.test:5000"


def test_a_stack_with_a_secret_key(project):
    config, evaluation = run(project, {**dev_stack(), key("sshPrivateKey"): encrypt_for_test(SSH_KEY_TEXT)})
    assert config.secret_keys == (key("sshPrivateKey"),)
    for command in evaluation.of_type(COMMAND):
        assert command.inputs["connection"]["privateKey"] == SSH_KEY_TEXT
        wire = command.wire_inputs["connection"]
        assert is_secret_marker(wire) or is_secret_marker(wire.get("privateKey")), command.name


def test_a_private_key_set_in_plain_text_fails_at_preview_naming_the_key_and_the_fix(project):
    config = merged(project, {**dev_stack(), key("sshPrivateKey"): SSH_KEY_TEXT})
    with pytest.raises(ProgramFailed) as failure:
        evaluate_raw(config.values, secret_keys=config.secret_keys)
    message = str(failure.value)
    assert "k3s-registry:sshPrivateKey: holds a secret in plain text" in message
    assert "pulumi config set --secret sshPrivateKey" in message
    assert SSH_KEY_TEXT.splitlines()[1] not in message
    assert failure.value.declared == []


def test_a_stack_missing_the_required_keys_is_stopped_by_the_cli_with_its_message(project):
    with pytest.raises(CliError, match=r"^Stack 'edge' is missing configuration values 'hostname' and 'loadBalancerIp'$"):
        merged(project, {key("port"): 5001}, "edge")


def test_a_stack_value_of_the_wrong_type_is_stopped_by_the_cli(project):
    with pytest.raises(CliError, match=r"^Stack 'dev' with configuration key 'port' must be of type 'integer'$"):
        merged(project, {**dev_stack(), key("port"): "five thousand"})
    with pytest.raises(CliError, match=r"key 'certDnsNames' must be of type 'array<string>'$"):
        merged(project, {**dev_stack(), key("certDnsNames"): [1, 2]})


# ----------------------------------------------------------------------------- the rules themselves

def _project(config: dict) -> dict:
    project = {"name": PROJECT, "runtime": "python", "config": config}
    validate_project(project)
    return project


def test_rule_a_declared_key_without_default_is_required():
    project = _project({"token": {"type": "string"}})
    with pytest.raises(CliError, match="^Stack 'dev' is missing configuration value 'token'$"):
        program_config(project, "dev", {})


def test_rule_a_secret_declared_key_with_a_default_is_always_refused_when_unset():
    project = _project({"token": {"type": "string", "secret": True, "default": "x"}})
    with pytest.raises(CliError, match="must be encrypted as it's secret"):
        program_config(project, "dev", {})


def test_rule_defaults_are_injected_as_text_or_json():
    project = _project({"n": {"type": "integer", "default": 5}, "b": {"type": "boolean", "default": False},
                        "l": {"type": "array", "items": {"type": "string"}, "default": ["a"]}, "short": 3})
    values = program_config(project, "dev", {}).values
    assert values == {key("n"): "5", key("b"): "false", key("l"): '["a"]', key("short"): "3"}


def test_rule_the_project_schema_refuses_unknown_attributes_and_untyped_arrays():
    with pytest.raises(CliError, match="'required' not allowed"):
        _project({"x": {"type": "string", "required": True}})
    with pytest.raises(CliError, match="does not specify the underlying type"):
        _project({"x": {"type": "array"}})
    with pytest.raises(CliError, match="is not of the expected type 'integer'"):
        _project({"x": {"type": "integer", "default": "many"}})


def test_rule_stack_scalars_reach_the_program_as_json_text_and_lists_as_json():
    assert stack_value(5000).text == "5000" and stack_value(True).text == "true"
    assert stack_value([{"role": "server", "name": "a"}]).text == '[{"name":"a","role":"server"}]'


def test_tested_cli_version_is_the_one_these_rules_were_read_from():
    versions = dict(
        line.split("=", 1) for line in (PROJECT_DIR / ".pulumi-version").read_text().split() if "=" in line
    )
    source = Path(__file__).read_text() + (Path(__file__).parent / "pulumi_cli.py").read_text()
    assert f"v{versions['tested']}" in source
