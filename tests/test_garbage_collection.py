"""The garbageCollection setting: the registry pod's init container that collects, and the
maintenance CronJob that restarts the registry so that it does (the resource graph under the
mocks; the script's shell is checked here too).

What the collector does to a volume is tests/test_garbage_collection_real.py (distribution 3.1.1);
what the restart does on a cluster, with the Role's token, is tests/test_cluster_real.py.
"""

import subprocess

import pytest

from components.cluster.admission import RESTART_ANNOTATION, UNCHANGED_FIELDS
from components.cluster.garbage_collection import garbage_collect_script
from components.cluster.maintenance import CURL_IMAGE, RESTART_SCRIPT
from components.config import ConfigError, parse_settings

from harness import evaluate

BASE = {"hostname": "registry.cube.test", "loadBalancerIp": "192.168.0.202"}
CRON_JOB = "kubernetes:batch/v1:CronJob"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def pod_of(declared, name="registry-deployment"):
    return declared.named(name).inputs["spec"]["template"]["spec"]


def init_script(declared) -> str:
    (init,) = pod_of(declared)["initContainers"]
    assert init["command"][:2] == ["/bin/sh", "-c"]
    return init["command"][2]


def maintenance_job(declared):
    return declared.named("registry-maintenance-cron-job").inputs


def test_by_default_the_registry_collects_at_every_start_and_restarts_on_sunday_night():
    settings = parse_settings(BASE).registry.garbage_collection
    assert (settings.enabled, settings.schedule, settings.time_zone) == (True, "30 3 * * 0", "Etc/UTC")
    declared = evaluate(BASE)
    pod = pod_of(declared)
    (init,) = pod["initContainers"]
    (registry,) = pod["containers"]
    assert init["name"] == "garbage-collect"
    assert init["image"] == registry["image"]
    assert init["securityContext"] == registry["securityContext"]
    data = [mount for mount in registry["volumeMounts"] if mount["name"] == "data"]
    state = {"name": "garbage-collection", "mountPath": "/run/garbage-collection"}
    assert init["volumeMounts"] == [*data, state]  # the same claim, the same place; its own emptyDir
    assert {"name": "garbage-collection", "emptyDir": {"sizeLimit": "1Mi"}} in pod["volumes"]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "value": "/var/lib/registry"} in init["env"]
    assert "--delete-untagged" not in init_script(declared)  # no retention: untagged images stay
    assert declared.named("registry-deployment").inputs["spec"]["strategy"] == {"type": "Recreate"}
    job = maintenance_job(declared)
    assert (job["spec"]["schedule"], job["spec"]["timeZone"], job["spec"]["concurrencyPolicy"]) == (
        "30 3 * * 0", "Etc/UTC", "Forbid")


@pytest.mark.parametrize(("retention", "deletes_untagged"), [
    ({"keepLast": 3}, True),
    ({"keepLast": 3, "dryRun": True}, False),  # a dry run deletes nothing, the collector neither
])
def test_untagged_images_go_only_with_retention_deleting(retention, deletes_untagged):
    declared = evaluate({**BASE, "retention": retention})
    assert ("--delete-untagged" in init_script(declared)) is deletes_untagged


def test_the_schedule_and_time_zone_can_be_set():
    declared = evaluate({**BASE, "garbageCollection": {"schedule": "0 4 * * 6", "timeZone": "Europe/Berlin"}})
    job = maintenance_job(declared)["spec"]
    assert (job["schedule"], job["timeZone"]) == ("0 4 * * 6", "Europe/Berlin")
    assert pod_of(declared)["initContainers"]


def test_off_there_is_no_collector_and_no_restart():
    declared = evaluate({**BASE, "garbageCollection": False})
    assert "initContainers" not in pod_of(declared)
    assert not [resource for resource in declared.resources if "maintenance" in resource.name]


def test_an_existing_claim_is_collected_where_the_registry_reads_it():
    declared = evaluate({**BASE, "existingClaim": "registry-data"})
    (init,) = pod_of(declared)["initContainers"]
    assert init["volumeMounts"][0] == {"name": "data", "mountPath": "/var/lib/registry", "subPath": "registry"}


def test_a_cache_is_never_collected():
    declared = evaluate({**BASE, "nodes": [{"name": "n1", "host": "192.168.0.11", "role": "server"}],
                         "mirrors": [{"upstream": "docker.io", "port": 5001}]})
    (cache,) = [d for d in declared.of_type(DEPLOYMENT) if "cache" in d.name]
    assert "initContainers" not in cache.inputs["spec"]["template"]["spec"]


@pytest.mark.parametrize(("value", "message"), [
    ("sometimes", "is not valid JSON"),
    ("3", "must be true, false or an object"),
    ('{"when": "0 3 * * *"}', "when: not a garbageCollection setting; known: schedule, timeZone"),
    ('{"schedule": "weekly"}', "schedule: 'weekly' is not a cron schedule"),
    ('{"timeZone": "Mars/Olympus"}', "timeZone: 'Mars/Olympus' is not a time zone name"),
])
def test_a_bad_value_names_the_key_and_the_fix(value, message):
    with pytest.raises(ConfigError) as raised:
        parse_settings({**BASE, "garbageCollection": value})
    assert any(problem.startswith("k3s-registry:garbageCollection: ") and message in problem
               for problem in raised.value.problems), raised.value.problems


def test_the_restart_may_patch_the_registry_deployment_and_nothing_else():
    declared = evaluate({**BASE, "namespace": "images"})
    (rule,) = declared.named("registry-maintenance-role").inputs["rules"]
    assert rule == {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["registry"],
                    "verbs": ["patch"]}
    binding = declared.named("registry-maintenance-role-binding").inputs
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "registry-maintenance"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "registry-maintenance", "namespace": "images"}]
    assert declared.named("registry-maintenance-service-account").inputs["automountServiceAccountToken"] is False
    pod = maintenance_job(declared)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("registry-maintenance", True)
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-c", RESTART_SCRIPT, "restart", "registry"]
    assert container["image"] == CURL_IMAGE and "args" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    policy = declared.named("registry-maintenance-network-policy").inputs["spec"]
    assert (policy["policyTypes"], policy["ingress"]) == (["Ingress"], [])


def test_an_admission_policy_lets_the_maintenance_account_change_nothing_but_the_restart_annotation():
    """What it does to real requests is tests/test_cluster_real.py's: here, what is declared."""
    declared = evaluate({**BASE, "namespace": "images"})
    policy = declared.named("registry-maintenance-admission-policy").inputs
    assert policy["metadata"]["name"] == "images-registry-maintenance-restart-only"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": ["apps"], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": ["deployments"]}]
    assert spec["matchConditions"] == [{"name": "the-maintenance-account", "expression":
                                        "request.userInfo.username == 'system:serviceaccount:images:registry-maintenance'"}]
    (validation,) = spec["validations"]
    for field in ("spec.template.spec", "spec.replicas", "spec.paused", "metadata.labels"):
        assert field in UNCHANGED_FIELDS and f"object.{field} == oldObject.{field}" in validation["expression"]
    assert f"k == '{RESTART_ANNOTATION}'" in validation["expression"]
    binding = declared.named("registry-maintenance-admission-policy-binding").inputs
    assert binding["metadata"]["name"] == binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "images"}}}


def test_the_restart_script_is_shellcheck_clean_posix_sh():
    checked = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=RESTART_SCRIPT.encode(),
                             capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode()


def test_no_job_pod_is_taken_for_the_registry():
    """The registry's Service and NetworkPolicy select its pods by label: a job's pod that matched
    would become an endpoint of the registry's address (and answer nothing)."""
    declared = evaluate({**BASE, "retention": {"keepLast": 3}, "monitoring": "true"})
    jobs = [job.inputs["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            for job in declared.of_type(CRON_JOB)]
    assert len(jobs) == 2
    selectors = [service.inputs["spec"]["selector"] for service in declared.of_type("kubernetes:core/v1:Service")]
    selectors += [policy.inputs["spec"]["podSelector"]["matchLabels"] for policy in
                  declared.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                  if "retention" not in policy.name and "maintenance" not in policy.name]
    for labels in jobs:
        for selector in selectors:
            assert not selector.items() <= labels.items(), (selector, labels)


@pytest.mark.parametrize("delete_untagged", [True, False])
def test_the_script_is_shellcheck_clean_posix_sh(delete_untagged):
    script = garbage_collect_script(delete_untagged)
    assert script.startswith("set -eu\n")
    checked = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=script.encode(),
                             capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode()

