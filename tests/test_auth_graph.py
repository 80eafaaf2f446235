"""Authentication as declared: a generated password, a bcrypt htpasswd, credentials kept secret."""

import json

import bcrypt
import pytest

from components.node.plan import NodePlan

from harness import GUIDE_CONFIG, evaluate, is_secret_marker

PASSWORD = "random:index/randomPassword:RandomPassword"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NODES = [{"name": "cube01", "host": "192.168.0.111", "role": "agent"}]


@pytest.fixture(scope="module")
def secured():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES})


@pytest.fixture(scope="module")
def open_registry():
    return evaluate({**GUIDE_CONFIG, "nodes": NODES, "auth": "false"})


def env_of(evaluation):
    container = evaluation.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container["env"]}, container


def test_the_password_is_generated_long_and_alphanumeric(secured):
    inputs = secured.one(PASSWORD).inputs
    assert inputs["length"] >= 32 and inputs["special"] is False


def test_htpasswd_holds_the_user_and_a_bcrypt_hash_of_the_generated_password(secured):
    password = secured.one(PASSWORD).outputs
    htpasswd = secured.named("registry-htpasswd").inputs["stringData"]["htpasswd"]
    user, _, hashed = htpasswd.strip().partition(":")
    assert user == "registry"
    assert hashed == password["bcryptHash"] and hashed.startswith("$2")
    assert bcrypt.checkpw(password["result"].encode(), hashed.encode())
    assert password["result"] not in htpasswd


def test_the_htpasswd_secret_is_sent_as_a_secret(secured):
    wire = secured.named("registry-htpasswd").wire_inputs["stringData"]
    assert is_secret_marker(wire) or is_secret_marker(wire.get("htpasswd"))


def test_the_registry_checks_htpasswd_from_the_mounted_secret(secured):
    env, container = env_of(secured)
    assert env["REGISTRY_AUTH"] == "htpasswd"
    assert env["REGISTRY_AUTH_HTPASSWD_REALM"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "auth")
    assert env["REGISTRY_AUTH_HTPASSWD_PATH"] == f"{mount['mountPath']}/htpasswd" and mount["readOnly"] is True
    volumes = secured.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["volumes"]
    auth_volume = next(v for v in volumes if v["name"] == "auth")
    assert auth_volume["secret"]["secretName"] == secured.named("registry-htpasswd").outputs["metadata"]["name"]


def test_probes_do_not_need_credentials(secured):
    _, container = env_of(secured)
    assert {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} == {"/"}


def test_nodes_get_the_credentials_on_stdin_as_a_secret(secured):
    password = secured.one(PASSWORD).outputs["result"]
    step = secured.named("nodes-cube01-k3s")
    assert is_secret_marker(step.wire_inputs["stdin"])
    assert json.loads(step.inputs["stdin"]) == {"username": "registry", "password": password}
    assert "update" not in step.inputs, "an update re-runs create"
    for text_input in ("create", "delete"):
        assert password not in step.inputs[text_input]
    # The node's scripts resource reads registries.yaml with them (on stdin of its one session):
    # a secret input, and never part of the scripts it writes.
    scripts = secured.named("nodes-cube01-scripts")
    assert is_secret_marker(scripts.wire_inputs["credentials"])
    assert scripts.inputs["credentials"] == step.inputs["stdin"]
    assert password not in json.dumps(scripts.inputs["plan"])
    assert not any(password in script for script in NodePlan.from_props(scripts.inputs["plan"]).scripts().values())


def test_stack_outputs_give_the_user_and_the_password_as_a_secret(secured):
    assert secured.outputs["registryUsername"] == "registry"
    assert secured.outputs["registryPassword"] == secured.one(PASSWORD).outputs["result"]
    assert secured.secret_outputs == {"registryPassword"}


def test_a_configured_user_name_is_used(tmp_path):
    evaluation = evaluate({**GUIDE_CONFIG, "authUsername": "ci-bot"})
    assert evaluation.named("registry-htpasswd").inputs["stringData"]["htpasswd"].startswith("ci-bot:$2")
    assert evaluation.outputs["registryUsername"] == "ci-bot"


def test_without_auth_there_is_no_password_anywhere(open_registry):
    assert open_registry.of_type(PASSWORD) == []
    assert [r.name for r in open_registry.of_type("kubernetes:core/v1:Secret")] == ["registry-tls"]
    env, container = env_of(open_registry)
    assert not any(name.startswith("REGISTRY_AUTH") for name in env)
    assert all(m["name"] != "auth" for m in container["volumeMounts"])
    assert "stdin" not in open_registry.named("nodes-cube01-k3s").inputs
    assert "credentials" not in open_registry.named("nodes-cube01-scripts").inputs
    assert "registryPassword" not in open_registry.outputs
