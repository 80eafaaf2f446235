"""What the real CLI does with a stack's settings before and while the program runs.

Each case is a real `pulumi preview` of a new stack (nothing to refresh, nothing touched): the
CLI validates Pulumi.yaml, merges the stack file with the declared defaults, refuses missing
keys and wrong types with its own messages, and the program then sees exactly what it merged.
The stack files of the repository (Pulumi.dev.yaml, the guide's cluster) are previewed as they
are, with only the test bed's kubeconfig and the rendering added to them.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from components.config import KNOWN_KEYS

from harness import NODE_SCRIPTS
from pulumi_real import PROJECT_DIR, RealStack

PROJECT_FILE = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
SSH_KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"


@pytest.fixture
def new_stack(tmp_path, kube_cluster):
    def make(name: str = "edge", stack_file: dict | None = None) -> RealStack:
        stack = RealStack(tmp_path / name, name, kubeconfig=kube_cluster.kubeconfig_path, render_dir=tmp_path / "rendered")
        if stack_file is not None:
            # The repository's stack file as it is, plus what the test stack adds (kubeconfig,
            # rendering) and the passphrase salt `stack init` wrote.
            path = stack.program / f"Pulumi.{name}.yaml"
            added = yaml.safe_load(path.read_text())
            merged = {**stack_file, "config": {**stack_file.get("config", {}), **added.get("config", {})}}
            if "encryptionsalt" in added:
                merged["encryptionsalt"] = added["encryptionsalt"]
            path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return stack
    return make


def steps(run) -> list[dict]:
    """A JSON preview's steps (a new stack has nothing to refresh: every step is the program's)."""
    return json.loads(run.check().stdout)["steps"]


def created(run, type_token: str) -> list[dict]:
    return [step["newState"] for step in steps(run) if step["op"] == "create" and step["newState"]["type"] == type_token]


def test_every_stack_file_in_the_repository_previews(new_stack):
    stack_files = sorted(PROJECT_DIR.glob("Pulumi.*.yaml"))
    assert stack_files, "no stack file"
    for path in stack_files:
        name = path.name[len("Pulumi."):-len(".yaml")]
        stack = new_stack(name, yaml.safe_load(path.read_text()))
        run = stack.preview("--json")
        assert created(run, "command:remote:Command"), path.name
        # The dev stack sets no sshPrivateKey: the node steps then use the SSH agent. (A Command's
        # connection is secret as a whole in pulumi-command's schema; the NodeScripts resource
        # takes the same connection and makes only a key secret.)
        scripts = created(run, NODE_SCRIPTS)
        assert scripts, path.name
        for resource in scripts:
            connection = resource["inputs"]["connection"]
            assert isinstance(connection, dict) and "private_key" not in connection, resource["urn"]


def test_injected_defaults_mean_the_documented_defaults(new_stack):
    stack = new_stack()
    stack.config_set("hostname", "registry.lab.test")
    stack.config_set("loadBalancerIp", "10.1.2.3")
    run = stack.preview("--json")
    merged = json.loads(run.stdout)["config"]
    assert merged["k3s-registry:restartK3s"] == "true" and merged["k3s-registry:k3sRestartTimeout"] == "300"
    assert merged["k3s-registry:certIpAddresses"] == "[]"
    assert created(run, "command:remote:Command") == [], "no nodes, no commands"
    (claim,) = created(run, "kubernetes:core/v1:PersistentVolumeClaim")
    assert "storageClassName" not in claim["inputs"]["spec"], "no storageClass: the cluster's default class"


def test_auth_off_is_accepted_although_a_user_name_is_injected(new_stack):
    stack = new_stack()
    stack.config_set("hostname", "registry.lab.test")
    stack.config_set("loadBalancerIp", "10.1.2.3")
    stack.config_set("auth", False)
    run = stack.preview("--json")
    assert json.loads(run.stdout)["config"]["k3s-registry:authUsername"] == "registry"
    names = [secret["urn"].rsplit("::", 1)[-1] for secret in created(run, "kubernetes:core/v1:Secret")]
    assert names == ["registry-tls"], names
    assert created(run, "random:index/randomPassword:RandomPassword") == []


def test_a_secret_ssh_key_is_accepted_and_kept_secret(new_stack):
    stack = new_stack()
    stack.config_set("hostname", "registry.lab.test")
    stack.config_set("loadBalancerIp", "10.1.2.3")
    stack.config_set("nodes", [{"name": "cube01", "host": "127.0.0.1", "role": "agent"}])
    stack.config_set("sshPrivateKey", SSH_KEY_TEXT, secret=True)
    run = stack.preview("--json")
    assert SSH_KEY_TEXT.splitlines()[1] not in run.output + stack.stack_file()
    commands = created(run, "command:remote:Command")
    assert len(commands) == 4
    for command in commands:
        assert command["inputs"]["connection"] == "[secret]", command["urn"]
    (scripts,) = created(run, NODE_SCRIPTS)
    assert scripts["inputs"]["connection"]["private_key"] == "[secret]"


def test_a_private_key_in_plain_text_fails_at_preview_naming_the_key_and_the_fix(new_stack):
    stack = new_stack()
    stack.config_set("hostname", "registry.lab.test")
    stack.config_set("loadBalancerIp", "10.1.2.3")
    stack.config_set("sshPrivateKey", SSH_KEY_TEXT)
    run = stack.preview()
    assert run.returncode != 0
    assert "k3s-registry:sshPrivateKey: holds a secret in plain text" in run.output
    assert "pulumi config set --secret sshPrivateKey" in run.output
    assert SSH_KEY_TEXT.splitlines()[1] not in run.output


def test_missing_required_keys_are_stopped_by_the_cli(new_stack):
    stack = new_stack()
    stack.config_set("port", 5001)
    run = stack.preview()
    assert run.returncode != 0
    assert "Stack 'edge' is missing configuration values 'hostname' and 'loadBalancerIp'" in run.output


def test_a_value_of_the_wrong_type_is_stopped_by_the_cli(new_stack):
    stack = new_stack()
    stack.config_set("hostname", "registry.lab.test")
    stack.config_set("loadBalancerIp", "10.1.2.3")
    stack.config_set("port", "five thousand")
    run = stack.preview()
    assert run.returncode != 0
    assert "Stack 'edge' with configuration key 'port' must be of type 'integer'" in run.output


# ----------------------------------------------------------------------------- the project file

def test_only_keys_without_a_sensible_default_are_required():
    declared = PROJECT_FILE["config"]
    assert {name for name, entry in declared.items() if "default" not in entry} == {"hostname", "loadBalancerIp"}


def test_no_declared_key_is_secret_because_a_secret_default_can_never_be_valid():
    # A declared secret key is required (no default) or always refused (an injected default is
    # not encrypted): sshPrivateKey is optional (SSH agent), so the program checks it itself.
    assert not [name for name, entry in PROJECT_FILE["config"].items() if entry.get("secret")]


def test_the_readme_table_marks_exactly_the_required_keys():
    readme = (PROJECT_DIR / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", readme, flags=re.MULTILINE)
    table = {name: default.strip() for name, default in rows}
    assert set(table) == set(KNOWN_KEYS)
    assert {name for name, default in table.items() if default == "required"} == {
        name for name, entry in PROJECT_FILE["config"].items() if "default" not in entry
    }
