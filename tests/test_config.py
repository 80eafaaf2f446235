"""Stack configuration is validated in one place, with errors that name the key and the fix."""

import json

import pytest
import yaml

from components.config import KNOWN_KEYS, ConfigError, parse_settings
from components.settings import DEFAULT_IMAGE

from harness import GUIDE_CONFIG, PROJECT_DIR, ProgramFailed, evaluate
from pulumi_real import pins

REQUIRED = {"hostname": "registry.cube.local", "loadBalancerIp": "192.168.0.202"}


def raw(**values):
    """Config as Pulumi hands it over: strings, with objects and lists as JSON."""
    merged = {**REQUIRED, **values}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in merged.items() if v is not None}


def problems_for(**values) -> str:
    with pytest.raises(ConfigError) as error:
        parse_settings(raw(**values))
    return str(error.value)


def test_defaults_match_the_documented_table():
    settings = parse_settings(raw())
    registry = settings.registry
    assert (registry.port, registry.namespace, registry.storage_class, registry.storage_size) == (
        5000,
        "docker-registry",
        None,
        "15Gi",
    )
    assert registry.node_selector == ()
    # The default is the release the tests run (scripts/toolchain builds toolchain/pins' registry).
    assert registry.image == DEFAULT_IMAGE == "registry:" + pins()["registry"]
    assert registry.certificate.validity_days == 365
    assert registry.certificate.renewal_days == 30
    assert registry.certificate.ca_validity_days == 3650
    assert registry.certificate.key_algorithm == "RSA"
    assert registry.auth.enabled is True and registry.auth.username == "registry"
    assert settings.node_access.nodes == () and settings.node_access.restart_k3s is True
    assert settings.node_access.restart_timeout_seconds == 300
    assert settings.node_access.migrate_from_guide is False and registry.existing_claim is None
    assert settings.node_access.os_trust_store is False
    assert registry.mirrors == ()
    assert registry.cluster_cidr == "10.42.0.0/16" and registry.node_addresses == ()
    assert registry.delete_enabled is True


def test_an_anonymous_cache_admits_the_nodes_by_address_and_the_given_pod_network():
    nodes = [{"name": "control01", "host": "192.168.0.101", "role": "server"},
             {"name": "cube01", "host": "fd00::11", "role": "agent"}]
    settings = parse_settings(raw(nodes=nodes, clusterCidr="10.52.0.0/16",
                                  mirrors=[{"upstream": "docker.io", "anonymous": True}, {"upstream": "ghcr.io"}]))
    anonymous = {m.upstream: m.anonymous for m in settings.registry.mirrors}
    assert anonymous == {"docker.io": True, "ghcr.io": False}
    assert settings.registry.node_addresses == ("192.168.0.101", "fd00::11")
    assert settings.registry.cluster_cidr == "10.52.0.0/16"


def test_caches_get_well_known_urls_and_the_next_free_ports():
    settings = parse_settings(raw(port="5000", mirrors=[
        {"upstream": "docker.io"}, {"upstream": "ghcr.io", "port": 5001}, {"upstream": "Quay.io", "storageSize": "30Gi"},
        {"upstream": "harbor.lab.test:8443", "url": "https://harbor.lab.test:8443/"},
    ]))
    mirrors = {m.upstream: m for m in settings.registry.mirrors}
    assert mirrors["docker.io"].url == "https://registry-1.docker.io" and mirrors["docker.io"].port == 5002
    assert mirrors["ghcr.io"].port == 5001
    assert mirrors["quay.io"].port == 5003 and mirrors["quay.io"].storage_size == "30Gi"
    assert mirrors["harbor.lab.test:8443"].url == "https://harbor.lab.test:8443"
    assert mirrors["harbor.lab.test:8443"].slug == "harbor-lab-test-8443"
    assert settings.registry.mirror_address(mirrors["docker.io"]) == "registry.cube.local:5002"


def test_a_cache_password_is_never_shown():
    settings = parse_settings(raw(mirrors=[{"upstream": "docker.io", "username": "me", "password": "hunter2"}]))
    (mirror,) = settings.registry.mirrors
    assert mirror.password is not None and mirror.password.value == "hunter2" and "hunter2" not in repr(settings)


def test_ttl_is_accepted_with_a_registry_3_image():
    settings = parse_settings(raw(image="registry:3.0.0", mirrors=[{"upstream": "docker.io", "ttl": "720h"}]))
    assert settings.registry.mirrors[0].ttl == "720h"


@pytest.mark.parametrize("image", ["registry:3", "registry:latest", "registry@sha256:" + "b" * 64,
                                   "mirror.cube.local:5000/library/registry:3.1.1", "registry:3.1.1-alpine"])
def test_an_image_of_distribution_3_or_of_no_named_release_is_taken(image):
    assert parse_settings(raw(image=image)).registry.image == image


def test_the_guides_cluster_is_read_from_the_dev_stack_file():
    stack = yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text())["config"]
    values = {key.split(":", 1)[1]: value for key, value in stack.items()}
    settings = parse_settings({k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})
    registry = settings.registry
    assert registry.address == "registry.cube.local:5000"
    assert registry.load_balancer_ip == "192.168.0.202"
    assert registry.storage_class == "longhorn" and registry.storage_size == "15Gi"
    assert dict(registry.node_selector) == {"node-type": "worker"}
    assert registry.certificate.dns_names == ("registry.cube.local", "*.cube.local")
    assert registry.certificate.ip_addresses == ("192.168.0.202",)


def test_the_dev_stack_file_holds_no_secret():
    text = (PROJECT_DIR / "Pulumi.dev.yaml").read_text()
    assert "PRIVATE KEY" not in text and "sshPrivateKey" not in yaml.safe_load(text)["config"]


def test_the_certificate_always_covers_the_served_address():
    settings = parse_settings(raw(certIpAddresses=["10.0.0.1"], certDnsNames=["registry", "*.cube.local"]))
    certificate = settings.registry.certificate
    assert certificate.common_name == "registry.cube.local"
    assert certificate.dns_names[0] == "registry.cube.local"
    assert certificate.ip_addresses == ("192.168.0.202", "10.0.0.1")


def test_duplicate_alternative_names_are_listed_once():
    settings = parse_settings(raw(certIpAddresses=["192.168.0.202"], certDnsNames=["registry.cube.local"]))
    assert settings.registry.certificate.ip_addresses == ("192.168.0.202",)
    assert settings.registry.certificate.dns_names == ("registry.cube.local",)


def test_ecdsa_and_lower_case_algorithm_names_are_accepted():
    assert parse_settings(raw(keyAlgorithm="ecdsa")).registry.certificate.key_algorithm == "ECDSA"


@pytest.mark.parametrize(
    "values, key, fragment",
    [
        ({"hostname": None}, "hostname", "is required"),
        ({"loadBalancerIp": None}, "loadBalancerIp", "is required"),
        ({"hostname": "registry..cube.local"}, "hostname", "not a valid DNS name"),
        ({"hostname": "-registry.cube.local"}, "hostname", "not a valid DNS name"),
        ({"hostname": "reg_istry.cube.local"}, "hostname", "not a valid DNS name"),
        ({"hostname": "192.168.0.202"}, "hostname", "looks like an IP address"),
        ({"loadBalancerIp": "192.168.0.300"}, "loadBalancerIp", "not an IP address"),
        ({"loadBalancerIp": "registry.cube.local"}, "loadBalancerIp", "not an IP address"),
        ({"port": "0"}, "port", "out of range"),
        ({"port": "65536"}, "port", "out of range"),
        ({"port": "http"}, "port", "whole number"),
        ({"port": "50.5"}, "port", "whole number"),
        ({"storageSize": "15GB"}, "storageSize", "Kubernetes quantity"),
        ({"storageSize": "0Gi"}, "storageSize", "Kubernetes quantity"),
        ({"storageSize": "lots"}, "storageSize", "Kubernetes quantity"),
        ({"keyAlgorithm": "DSA"}, "keyAlgorithm", "use RSA"),
        ({"certValidityDays": "0"}, "certValidityDays", "out of range"),
        ({"certValidityDays": "ten"}, "certValidityDays", "whole number"),
        ({"certDnsNames": "*.cube.local"}, "certDnsNames", "not valid JSON"),
        ({"certDnsNames": {"a": 1}}, "certDnsNames", "must be a list"),
        ({"certDnsNames": ["cube.*.local"]}, "certDnsNames", "not a valid DNS name"),
        ({"certIpAddresses": ["192.168.0.1/24"]}, "certIpAddresses", "not an IP address"),
        ({"namespace": "Docker_Registry"}, "namespace", "not a valid namespace"),
        ({"storageClass": "Longhorn"}, "storageClass", "lower case"),
        ({"nodeSelector": ["node-type=worker"]}, "nodeSelector", "object of label"),
        ({"nodeSelector": {"node type": "worker"}}, "nodeSelector", "not a valid label key"),
        ({"nodeSelector": {"node-type": "a worker"}}, "nodeSelector", "label values"),
        ({"image": "registry 2"}, "image", "not an image reference"),
        ({"hostnme": "typo.cube.local"}, "hostnme", "not a setting of this program"),
    ],
)
def test_a_bad_value_is_reported_with_its_key_and_the_fix(values, key, fragment):
    message = problems_for(**values)
    assert f"k3s-registry:{key}:" in message
    assert fragment in message


def test_every_problem_is_reported_at_once():
    message = problems_for(port="99999", storageSize="big", keyAlgorithm="DSA")
    for key in ("port", "storageSize", "keyAlgorithm"):
        assert f"k3s-registry:{key}:" in message


def test_a_bad_config_fails_the_program_before_any_resource_is_declared():
    with pytest.raises(ProgramFailed) as error:
        evaluate({**GUIDE_CONFIG, "port": "70000"})
    assert "k3s-registry:port: 70000 is out of range" in str(error.value)
    assert error.value.declared == []


def test_project_file_declares_every_scalar_and_list_key_with_its_default():
    declared = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())["config"]
    settings = parse_settings(raw())
    defaults = {
        "port": settings.registry.port,
        "namespace": settings.registry.namespace,
        "storageSize": settings.registry.storage_size,
        "certDnsNames": [],
        "certIpAddresses": [],
        "certValidityDays": settings.registry.certificate.validity_days,
        "certRenewalDays": settings.registry.certificate.renewal_days,
        "caValidityDays": settings.registry.certificate.ca_validity_days,
        "auth": settings.registry.auth.enabled,
        "authUsername": settings.registry.auth.username,
        "keyAlgorithm": settings.registry.certificate.key_algorithm,
        "image": settings.registry.image,
        "restartK3s": settings.node_access.restart_k3s,
        "k3sRestartTimeout": settings.node_access.restart_timeout_seconds,
        "rolloutTimeout": settings.registry.rollout_timeout_seconds,
        "monitoring": settings.registry.monitoring.enabled,
        "monitoringNamespace": settings.registry.monitoring.namespace,
        "migrateFromGuide": settings.node_access.migrate_from_guide,
        "osTrustStore": settings.node_access.os_trust_store,
        "clusterCidr": settings.registry.cluster_cidr,
        "deleteEnabled": settings.registry.delete_enabled,
    }
    # Declared: the required keys and every key with a default. Optional keys without a default
    # stay undeclared, or the CLI would require them (tests/test_cli_config.py).
    optional_without_default = {"storageClass", "sshPrivateKey", "nodeSelector", "nodes", "existingClaim", "mirrors",
                                "monitoringLabels", "retention", "garbageCollection"}
    assert set(declared) == set(KNOWN_KEYS) - optional_without_default
    for key, entry in declared.items():
        assert entry["type"] in ("string", "integer", "boolean", "array") and entry["description"]
        if entry["type"] == "array":
            assert entry["items"] == {"type": "string"}
        if key in defaults:
            assert entry["default"] == defaults[key], key
        else:
            assert key in ("hostname", "loadBalancerIp") and "default" not in entry, key


def test_project_file_keeps_state_local_and_refreshes_before_every_operation():
    project = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
    assert project["name"] == "k3s-registry"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    assert project["backend"]["url"].startswith("file://")
    # Drift on nodes is only seen by a refresh (components/node/scripts_resource.py).
    assert project["options"] == {"refresh": "always"}


def test_the_projects_own_shell_scripts_are_shellcheck_clean():
    import subprocess

    scripts = [*(PROJECT_DIR / "scripts" / name for name in ("deploy", "test", "toolchain", "bench")),
               PROJECT_DIR / ".ci" / "run", PROJECT_DIR / "toolchain" / "vendor-upstream"]
    result = subprocess.run(["shellcheck", "--severity=style", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
