"""existingClaim: the manual guide's volume claim is mounted, never declared; nothing else changes.

The guide's cluster has, in namespace docker-registry, the claim longhorn-docker-registry-pvc
with its images, mounted by its Deployment with ``subPath: registry`` at /var/lib/registry.
With ``existingClaim`` the program declares no claim (so it can neither delete nor resize it,
and ``destroy`` leaves it), mounts that claim where the guide's registry kept its images, and
only labels the namespace the claim lives in (a NamespacePatch, never deleted). Every other
object is declared exactly as without ``existingClaim``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_migration_registry_real import GUIDE_CLAIM, GUIDE_DEPLOYMENT

from components.cluster.naming import DATA_MOUNT_PATH

from harness import GUIDE_CONFIG, Evaluation, evaluate
from manifests import kubernetes_manifests
from test_manifest_scan import (
    ALLOWED_SKIPS,
    KINDS_WITHOUT_CHECKS,
    MIN_CHECKS_PER_CONFIG,
    checks,
    describe,
    restricted_violations,
    scan,
    write_manifests,
)
from test_manifests_schema import KUBERNETES_VERSIONS
from testbed.registry import REGISTRY_2_IMAGE_CONFIG

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
NAMESPACE = "kubernetes:core/v1:Namespace"
NAMESPACE_PATCH = "kubernetes:core/v1:NamespacePatch"

# storageClass with existingClaim is only for the caches' claims (the claim has its class already).
OWN_CLAIM_CONFIG = {key: value for key, value in GUIDE_CONFIG.items() if key != "storageClass"}
EXISTING_CLAIM_CONFIG = {**OWN_CLAIM_CONFIG, "existingClaim": GUIDE_CLAIM}


@pytest.fixture(scope="module")
def own():
    return evaluate(OWN_CLAIM_CONFIG)


@pytest.fixture(scope="module")
def existing():
    return evaluate(EXISTING_CLAIM_CONFIG)


def pod_spec(evaluation: Evaluation) -> dict[str, Any]:
    return evaluation.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]


def data_volume(evaluation: Evaluation) -> dict[str, Any]:
    return next(volume for volume in pod_spec(evaluation)["volumes"] if volume["name"] == "data")


def data_mount(evaluation: Evaluation) -> dict[str, Any]:
    (container,) = pod_spec(evaluation)["containers"]
    return next(mount for mount in container["volumeMounts"] if mount["name"] == "data")


def test_no_volume_claim_is_declared(own, existing):
    assert len(own.of_type(CLAIM)) == 1, "guards the check: without existingClaim the program declares its claim"
    assert existing.of_type(CLAIM) == []
    names = [r.outputs.get("metadata", {}).get("name") for r in existing.resources if r.type.startswith("kubernetes:")]
    assert GUIDE_CLAIM not in names, "the guide's claim must never be a resource of the program"


def test_with_an_existing_claim_the_storage_class_is_the_caches():
    """A migrated guide user adding caches can give their claims a class; the registry's claim stays the guide's."""
    evaluation = evaluate({**EXISTING_CLAIM_CONFIG, "storageClass": "longhorn",
                           "mirrors": [{"upstream": "docker.io"}, {"upstream": "ghcr.io", "port": 5443}]})
    claims = evaluation.of_type(CLAIM)
    assert len(claims) == 2 and all(claim.inputs["spec"]["storageClassName"] == "longhorn" for claim in claims)
    assert GUIDE_CLAIM not in [claim.inputs["metadata"]["name"] for claim in claims]


def test_the_data_volume_is_exactly_the_configured_claim(existing):
    assert data_volume(existing) == {"name": "data", "persistentVolumeClaim": {"claimName": GUIDE_CLAIM}}
    every_claim_reference = [
        value for r in existing.resources for key, value in _walk(r.inputs) if key == "claimName"
    ]
    assert every_claim_reference == [GUIDE_CLAIM]


def test_the_claim_is_mounted_where_the_guides_registry_kept_its_images(existing):
    """The guide's pod: the claim's ``registry`` directory at /var/lib/registry, which is the
    storage root of registry:2's default config. Ours: the same directory at our storage root."""
    guide_pod = GUIDE_DEPLOYMENT["spec"]["template"]["spec"]
    guide_volume = next(v for v in guide_pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == GUIDE_CLAIM)
    (guide_container,) = guide_pod["containers"]
    guide_mount = next(m for m in guide_container["volumeMounts"] if m["name"] == guide_volume["name"])
    guide_env = {item["name"]: item["value"] for item in guide_container["env"]}
    assert "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY" not in guide_env
    guide_root = yaml.safe_load(REGISTRY_2_IMAGE_CONFIG)["storage"]["filesystem"]["rootdirectory"]
    assert guide_mount["mountPath"] == guide_root, "the guide's images are at the root of its mount"

    (container,) = pod_spec(existing)["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    mount = data_mount(existing)
    assert env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] == mount["mountPath"] == DATA_MOUNT_PATH
    assert mount == {"name": "data", "mountPath": DATA_MOUNT_PATH, "subPath": guide_mount["subPath"]}


def test_our_own_claim_is_mounted_whole(own):
    assert data_mount(own) == {"name": "data", "mountPath": DATA_MOUNT_PATH}


def test_the_namespace_is_labelled_not_owned(own, existing):
    """The claim lives in the namespace, so it exists; a NamespacePatch never deletes it."""
    assert existing.of_type(NAMESPACE) == []
    patch = existing.one(NAMESPACE_PATCH)
    assert patch.name == own.one(NAMESPACE).name and patch.parent == own.one(NAMESPACE).parent
    assert patch.inputs == own.one(NAMESPACE).inputs
    assert set(patch.inputs) == {"apiVersion", "kind", "metadata"}, "only our labels, nothing else"
    assert patch.inputs["metadata"]["name"] == "docker-registry"
    cluster_wide = ("kubernetes:admissionregistration.k8s.io/",)  # the maintenance token's admission policy
    for resource in existing.resources:
        if resource.type.startswith("kubernetes:") and resource is not patch:
            if resource.type.startswith(cluster_wide):
                assert "namespace" not in resource.inputs["metadata"], resource.name
                continue
            assert resource.inputs["metadata"]["namespace"] == "docker-registry", resource.name


def test_every_other_object_is_declared_as_without_existing_claim(own, existing):
    before, after = _comparable(own), _comparable(existing)
    claim_urns = {r.urn for r in own.of_type(CLAIM)}
    assert set(before) - set(after) == claim_urns and set(after) <= set(before)
    for urn, declared in after.items():
        assert declared == before[urn], urn
    assert existing.outputs == own.outputs
    deployment = existing.one(DEPLOYMENT)
    assert not set(deployment.dependencies) & claim_urns
    assert set(own.one(DEPLOYMENT).dependencies) & claim_urns, "guards the check: our own claim is waited for"


def test_every_manifest_is_valid_in_strict_mode(existing):
    manifests = kubernetes_manifests(existing)
    assert sorted(m["kind"] for m in manifests) == sorted([
        "Deployment", "Namespace", "NetworkPolicy", "Secret", "Secret", "Service",
        # the maintenance restart, and the admission policy that lets its token do nothing else
        "CronJob", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
    for version in KUBERNETES_VERSIONS:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_the_pod_meets_the_restricted_pod_security_standard(existing):
    assert restricted_violations(pod_spec(existing)) == []


def test_checkov_finds_nothing(existing, tmp_path):
    directory = tmp_path / "existing-claim"
    files = write_manifests(directory, kubernetes_manifests(existing))
    report = scan(directory)
    results = {kind: checks(report, kind, directory) for kind in ("passed", "failed", "skipped")}
    assert len(results["passed"] + results["failed"]) >= MIN_CHECKS_PER_CONFIG
    scanned = {Path(c["file_abs_path"]).name for kind in results.values() for c in kind}
    assert scanned == {p.name for p in files if p.stem.split("-", 1)[1] not in KINDS_WITHOUT_CHECKS}
    failed = results["failed"]
    assert not failed, f"{len(failed)} checkov finding(s):\n" + "\n".join(describe(c) for c in failed)
    for check in results["skipped"]:
        assert check["check_id"] in ALLOWED_SKIPS and (check["check_result"].get("suppress_comment") or "").strip()


def _walk(value: Any, key: str = ""):
    """Every (key, value) pair in nested inputs."""
    yield key, value
    if isinstance(value, dict):
        for child_key, child in value.items():
            yield from _walk(child, child_key)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child, key)


def _comparable(evaluation: Evaluation) -> dict[str, str]:
    """Each resource's declared inputs by URN, with the two intended differences taken out:
    the namespace's resource type, and which claim (and part of it) the data volume is."""
    declared = {}
    for resource in evaluation.resources:
        inputs = copy.deepcopy(resource.inputs)
        if resource.type == DEPLOYMENT:
            pod = inputs["spec"]["template"]["spec"]
            for volume in pod["volumes"]:
                if volume["name"] == "data":
                    volume["persistentVolumeClaim"]["claimName"] = "<claim>"
            for container in [*pod.get("initContainers", []), *pod["containers"]]:  # the collector's too
                for mount in container["volumeMounts"]:
                    if mount["name"] == "data":
                        mount.pop("subPath", None)
        urn = resource.urn.replace(f"${NAMESPACE_PATCH}::", f"${NAMESPACE}::")
        declared[urn] = json.dumps(
            {"inputs": inputs, "parent": resource.parent, "type": resource.type.replace(NAMESPACE_PATCH, NAMESPACE)},
            sort_keys=True,
        )
    return declared
