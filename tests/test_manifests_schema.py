"""Every Kubernetes object validates, strictly, against the upstream schemas of 1.30 and 1.33.

1.30 is the oldest Kubernetes (and k3s) the program supports: the maintenance job's
ValidatingAdmissionPolicy is admissionregistration.k8s.io/v1, GA in 1.30 (components/cluster/admission.py)."""

import kubernetes_validate
import pytest

from harness import GUIDE_CONFIG, evaluate
from manifests import kubernetes_manifests

KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
CONFIGS = {
    "guide": GUIDE_CONFIG,
    "defaults": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3"},
    "without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false"},
    "ecdsa-custom-port": {**GUIDE_CONFIG, "keyAlgorithm": "ECDSA", "port": "443", "certIpAddresses": ["fd00::5"]},
    # The retention CronJob, its ServiceAccount, ConfigMap, credentials Secret and NetworkPolicy.
    "retention": {**GUIDE_CONFIG, "retention": {"keepLast": 10, "keepDays": 30, "protect": ["latest", "v*"]}},
    "retention-without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false",
                               "retention": {"keepDays": 7, "dryRun": True, "timeZone": "Europe/Berlin"}},
    "caches": {**GUIDE_CONFIG, "mirrors": [
        {"upstream": "docker.io", "username": "robot", "password": "not-a-real-password"},
        {"upstream": "harbor.lab.test", "url": "https://harbor.lab.test:8443", "storageSize": "50Gi"},
    ]},
    "anonymous-cache": {**GUIDE_CONFIG, "nodes": [{"name": "cube01", "host": "192.168.0.111", "role": "agent"}],
                        "mirrors": [{"upstream": "docker.io", "anonymous": True}, {"upstream": "ghcr.io"}]},
    "caches-without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false",
                            "mirrors": [{"upstream": "ghcr.io"}]},
    "garbage-collection-scheduled": {**GUIDE_CONFIG, "retention": {"keepLast": 10},
                                     "garbageCollection": {"schedule": "0 4 * * 6", "timeZone": "Europe/Berlin"}},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def manifests(request):
    config = CONFIGS[request.param]
    return kubernetes_manifests(evaluate(config, secret_keys=("mirrors",) if "mirrors" in config else ()))


def kinds_for(config_name):
    config = CONFIGS[config_name]
    secrets = ["Secret"] if config.get("auth") == "false" else ["Secret", "Secret"]
    caches = config.get("mirrors", [])
    secrets += ["Secret" for mirror in caches if "password" in mirror]
    per_cache = ["Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service"] * len(caches)
    retention = []
    if "retention" in config:  # and, with auth, its credentials
        retention = ["ConfigMap", "CronJob", "NetworkPolicy", "ServiceAccount", *secrets[1:2]]
    # garbage collection is on in each: the maintenance CronJob, its ServiceAccount, Role, RoleBinding, NetworkPolicy,
    # and the admission policy (and its binding) that lets its token restart only
    maintenance = ["CronJob", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount",
                   "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    return sorted(["Deployment", "Namespace", "NetworkPolicy", "PersistentVolumeClaim", "Service", *secrets, *per_cache,
                   *retention, *maintenance])


def test_the_program_declares_every_kind(manifests, request):
    config_name = request.node.callspec.params["manifests"]
    assert sorted(m["kind"] for m in manifests) == kinds_for(config_name)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_in_strict_mode(manifests, version):
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(manifests):
    """Guards the check above: a misspelt field must not pass."""
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
