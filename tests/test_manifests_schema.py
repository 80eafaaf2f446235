"""Every Kubernetes object validates, strictly, against the upstream schemas of 1.28 and 1.33."""

import kubernetes_validate
import pytest

from harness import GUIDE_CONFIG, evaluate
from manifests import kubernetes_manifests

KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")
CONFIGS = {
    "guide": GUIDE_CONFIG,
    "defaults": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3"},
    "ecdsa-custom-port": {**GUIDE_CONFIG, "keyAlgorithm": "ECDSA", "port": "443", "certIpAddresses": ["fd00::5"]},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def manifests(request):
    return kubernetes_manifests(evaluate(CONFIGS[request.param]))


def test_the_program_declares_the_five_kinds(manifests):
    assert sorted(m["kind"] for m in manifests) == [
        "Deployment", "Namespace", "PersistentVolumeClaim", "Secret", "Service",
    ]


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
