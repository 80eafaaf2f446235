"""What only a real cluster says: the real `pulumi` with the kubernetes provider applying the
program's objects to the test bed's cluster (tests/testbed/cluster.py: a real control plane,
a kwok node that makes pods Ready, MetalLB's controller, k3s's local-path class).

Each stack here manages only the cluster side (no nodes) in a namespace and on an address of
its own. The cases: a claim size the API refuses, a Deployment whose pod can never be
scheduled, an existing claim (the manual guide's) that `destroy` must leave with its namespace,
what the provider renders (render mode) checked against the schemas and checkov, the
monitoring objects against the Prometheus Operator's CRDs, and the maintenance CronJob's
restart, run by the real kubectl with its ServiceAccount's token.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client

from pod import run_job_container
from pulumi_real import RealStack, toolchain_dir
from test_manifest_scan import ALLOWED_SKIPS, checks, scan
from test_manifests_schema import KUBERNETES_VERSIONS
from testbed.apiserver import API_PORT
from testbed.cluster import DEFAULT_NODE

HOSTNAME = "registry.cube.test"


def new_stack(root, kube_cluster, name, namespace, ip, **config):
    stack = RealStack(root, name, kubeconfig=kube_cluster.kubeconfig_path)
    stack.config_set("hostname", HOSTNAME)
    stack.config_set("loadBalancerIp", ip)
    stack.config_set("namespace", namespace)
    for key, value in config.items():
        stack.config_set(key, value)
    return stack


def apis(kube_cluster):
    api = kube_cluster.client()
    return client.CoreV1Api(api), client.AppsV1Api(api)


# ------------------------------------------------------------------ a claim the API cannot resize

RESIZE_NAMESPACE = "resize-test"


@pytest.fixture(scope="module")
def resize_stack(tmp_path_factory, kube_cluster):
    stack = new_stack(tmp_path_factory.mktemp("resize"), kube_cluster, "resize", RESIZE_NAMESPACE, "127.0.0.81",
                      rolloutTimeout=20)
    stack.up().check()
    yield stack
    stack.destroy().check()


def claim_request(kube_cluster, namespace=RESIZE_NAMESPACE):
    core, _ = apis(kube_cluster)
    claim = core.read_namespaced_persistent_volume_claim("registry-data", namespace)
    return claim.spec.resources.requests["storage"], claim.status.phase, claim.status.capacity


def test_the_claim_is_bound_on_the_node_the_pod_runs_on(resize_stack, kube_cluster):
    core, _ = apis(kube_cluster)
    assert claim_request(kube_cluster) == ("15Gi", "Bound", {"storage": "15Gi"})
    (pod,) = core.list_namespaced_pod(RESIZE_NAMESPACE).items
    assert pod.spec.node_name == DEFAULT_NODE


def test_a_smaller_storage_size_fails_preview_and_up_saying_what_to_do(resize_stack, kube_cluster):
    resize_stack.config_set("storageSize", "10Gi")
    expected = (f"storageSize is 10Gi, but the claim {RESIZE_NAMESPACE}/registry-data holds 15Gi, and Kubernetes "
                "never shrinks a claim. Set storageSize back to 15Gi (or more).")
    try:
        preview = resize_stack.preview()
        assert preview.returncode != 0 and expected in preview.output, preview.output[-3000:]
        up = resize_stack.up()
        assert up.returncode != 0 and expected in up.output, up.output[-3000:]
        # Stopped before the API server: it never answered about fields.
        assert "status.capacity" not in up.output
        assert claim_request(kube_cluster)[0] == "15Gi"
    finally:
        resize_stack.config_set("storageSize", "15Gi")
    resize_stack.preview("--expect-no-changes").check()


def test_a_larger_size_on_k3s_local_path_is_refused_by_the_api_and_changes_nothing(resize_stack, kube_cluster):
    """The refusal is the cluster's: the local-path class does not allow volume expansion (the
    README's "Growing the volume" says what to do)."""
    resize_stack.config_set("storageSize", "20Gi")
    try:
        up = resize_stack.up()
        assert up.returncode != 0
        refusal = ("only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc "
                   "must support resize")
        assert refusal in up.output, up.output[-3000:]
        assert claim_request(kube_cluster)[0] == "15Gi"
    finally:
        resize_stack.config_set("storageSize", "15Gi")
    resize_stack.preview("--expect-no-changes").check()


def test_a_pod_that_can_never_be_scheduled_fails_the_up_within_the_rollout_timeout_naming_it(resize_stack, kube_cluster):
    """A nodeSelector no node matches: the update fails after rolloutTimeout (20 s here), naming
    the Deployment, instead of succeeding while the old pod goes (Recreate; see
    components/cluster/rollout.py) or waiting the provider's 10 minutes."""
    core, apps = apis(kube_cluster)
    resize_stack.config_set("nodeSelector", '{"node-type": "nowhere"}')
    try:
        started = time.monotonic()
        up = resize_stack.up()
        took = time.monotonic() - started
        assert up.returncode != 0, up.output[-3000:]
        assert f'"{RESIZE_NAMESPACE}/registry" failed to fully initialize or become live' in up.output, up.output[-3000:]
        assert took < 20 + 60, f"the update took {took:.0f} s"
        pending = [pod for pod in core.list_namespaced_pod(RESIZE_NAMESPACE).items if pod.status.phase == "Pending"]
        assert pending and not pending[0].spec.node_name
        scheduled = {c.type: c for c in pending[0].status.conditions}["PodScheduled"]
        assert scheduled.status == "False" and scheduled.reason == "Unschedulable"
    finally:
        # A selector the node matches (kwok's node has the labels a k3s server has).
        resize_stack.config_set("nodeSelector", '{"node-role.kubernetes.io/control-plane": "true"}')
    resize_stack.up().check()
    assert apps.read_namespaced_deployment("registry", RESIZE_NAMESPACE).status.available_replicas == 1
    (pod,) = [pod for pod in core.list_namespaced_pod(RESIZE_NAMESPACE).items if pod.status.phase == "Running"]
    assert pod.spec.node_name == DEFAULT_NODE
    assert pod.spec.node_selector == {"node-role.kubernetes.io/control-plane": "true"}
    resize_stack.preview("--expect-no-changes").check()


# ------------------------------------------------------------------ the guide's claim

GUIDE_NAMESPACE, GUIDE_CLAIM = "guide-registry", "docker-registry-pvc"


def test_destroy_removes_what_the_program_created_and_leaves_an_existing_claim_and_its_namespace(
        tmp_path, kube_cluster):
    core, _ = apis(kube_cluster)
    # What the manual guide's kubectl apply left: its namespace and claim, with its own label.
    core.create_namespace({"metadata": {"name": GUIDE_NAMESPACE, "labels": {"made-by": "guide"}}})
    core.create_namespaced_persistent_volume_claim(GUIDE_NAMESPACE, {
        "metadata": {"name": GUIDE_CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "15Gi"}}}})
    stack = new_stack(tmp_path, kube_cluster, "guide", GUIDE_NAMESPACE, "127.0.0.82", existingClaim=GUIDE_CLAIM)
    stack.up().check()
    (pod,) = core.list_namespaced_pod(GUIDE_NAMESPACE).items
    assert [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim] == [GUIDE_CLAIM]
    labels = core.read_namespace(GUIDE_NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted" and labels["made-by"] == "guide"

    stack.destroy().check()
    namespace = core.read_namespace(GUIDE_NAMESPACE)
    assert namespace.status.phase == "Active"
    assert {k: v for k, v in namespace.metadata.labels.items() if k != "kubernetes.io/metadata.name"} == \
        {"made-by": "guide"}, "our labels went, the guide's stayed"
    assert core.read_namespaced_persistent_volume_claim(GUIDE_CLAIM, GUIDE_NAMESPACE).status.phase == "Bound"
    left = [*core.list_namespaced_secret(GUIDE_NAMESPACE).items, *core.list_namespaced_service(GUIDE_NAMESPACE).items,
            *client.AppsV1Api(kube_cluster.client()).list_namespaced_deployment(GUIDE_NAMESPACE).items]
    assert [item.metadata.name for item in left] == []


# ------------------------------------------------------------------ what the provider renders

@pytest.fixture(scope="module")
def rendered_stack(tmp_path_factory, kube_cluster):
    root = tmp_path_factory.mktemp("rendered")
    stack = RealStack(root, "rendered", kubeconfig=kube_cluster.kubeconfig_path, render_dir=root / "manifests")
    stack.config_set("hostname", HOSTNAME)
    stack.config_set("loadBalancerIp", "127.0.0.83")
    stack.up().check()
    return stack


def test_what_the_provider_renders_passes_the_schemas_in_strict_mode(rendered_stack):
    rendered = rendered_stack.rendered().resources
    assert sorted(r.inputs["kind"] for r in rendered) == sorted(
        ["Namespace", "Secret", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy",
         # the maintenance restart, and the admission policy that lets its token do nothing else
         "CronJob", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy",
         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
    for resource in rendered:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(resource.inputs, version, strict=True)


def test_what_the_provider_renders_passes_checkov(rendered_stack):
    render_dir = rendered_stack.render_dir
    report = scan(render_dir)
    assert checks(report, "passed", render_dir), "checkov ran no check on the rendered files"
    assert [c["check_id"] for c in checks(report, "failed", render_dir)] == []
    assert {c["check_id"] for c in checks(report, "skipped", render_dir)} <= ALLOWED_SKIPS


# ------------------------------------------------------------------ monitoring

def test_monitoring_objects_are_accepted_by_the_operators_schemas_and_go_with_destroy(tmp_path, kube_cluster):
    """The ServiceMonitor and PrometheusRule pass the API server's validation against the
    Prometheus Operator's CRDs (generated from its types, scripts/toolchain); the metrics
    Service is a ClusterIP; destroy takes them all."""
    namespace = "monitored-test"
    stack = new_stack(tmp_path, kube_cluster, "monitored", namespace, "127.0.0.84", monitoring=True)
    stack.config_set("monitoringLabels", '{"release": "kube-prometheus-stack"}')
    stack.up().check()
    custom: Any = client.CustomObjectsApi(kube_cluster.client())
    core, _ = apis(kube_cluster)
    (monitor,) = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "servicemonitors")["items"]
    (rule,) = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "prometheusrules")["items"]
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == [
        "RegistryVolumeNearlyFull", "RegistryDown", "RegistryCertificateExpiresSoon", "RegistryGarbageCollectionFailed"]
    metrics = core.read_namespaced_service("registry-metrics", namespace)
    assert metrics.spec.type == "ClusterIP" and [p.port for p in metrics.spec.ports] == [5001]
    stack.destroy().check()
    assert namespace not in [n.metadata.name for n in core.list_namespace().items]


# ------------------------------------------------------------------ the maintenance restart

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A strategic-merge patch ($1) of the registry's Deployment with the pod's token, as the job's
# restart sends its own: prints the API server's status code, then its answer.
PATCH_WITH_THE_TOKEN = f"""set -eu
account={SERVICE_ACCOUNT_DIR}
api="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/apps/v1"
printf 'Authorization: Bearer %s\\n' "$(cat "$account/token")" |
  curl --silent --show-error --cacert "$account/ca.crt" --header @- --request PATCH \\
    --header 'Content-Type: application/strategic-merge-patch+json' --data "$1" \\
    --write-out '%{{http_code}}\\n' --output /tmp/answer \\
    "$api/namespaces/$(cat "$account/namespace")/deployments/registry"
cat /tmp/answer
"""
KUBECTL_PATH = "/run/stolen/kubectl"  # kubectl 1.37.2 built from source: what a thief would run


def run_as_job_pod(kube_cluster, pod: dict[str, Any], token: str, namespace: str, workdir: Path,
                   kubectl_args: list[str] | None = None, command: list[str] | None = None,
                   ) -> subprocess.CompletedProcess[str]:
    """The job's container as the kubelet runs it: its command (the restart script, by the
    machine's sh and curl, the programs the curl image has) and environment, as the pod's user,
    with what a mounted ServiceAccount token gives a pod: the token, the cluster's CA and the
    namespace at the standard path, and KUBERNETES_SERVICE_HOST/PORT (here: the test API server's
    address, for the kubernetes Service's). Its emptyDir is a fresh /tmp. With ``kubectl_args``
    (kubectl) or ``command``, something else runs with the same token: what a stolen token could
    be used for."""
    (container,) = pod["containers"]
    files: dict[str, tuple[bytes | Path, int]] = {
        f"{SERVICE_ACCOUNT_DIR}/{name}": (data, 0o644)
        for name, data in (("token", token.encode()), ("ca.crt", kube_cluster.api.ca_pem), ("namespace", namespace.encode()))
    }
    files[KUBECTL_PATH] = (toolchain_dir() / "kubectl", 0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "KUBECACHEDIR": "/tmp/kube-cache",
           "KUBERNETES_SERVICE_HOST": kube_cluster.api.ip, "KUBERNETES_SERVICE_PORT": str(API_PORT),
           **{item["name"]: item["value"] for item in container.get("env", [])}}
    args = [KUBECTL_PATH, *kubectl_args] if kubectl_args is not None else command or container["command"]
    return run_job_container(workdir, pod=pod, args=args, files=files, fresh_dirs=["/run", "/tmp"], env=env,
                             timeout=120)


def test_the_maintenance_job_restarts_the_registry_with_its_token_and_may_do_nothing_else(tmp_path, kube_cluster):
    """The CronJob as the API server stored it, its container's script run by the real sh and
    curl with a token of its ServiceAccount (TokenRequest, as the kubelet mounts one): the
    restart goes through (the Role's patch of the registry's Deployment, the restart annotation
    only), the Deployment rolls a new pod, and Pulumi sees no change afterwards (the annotation
    is kubectl-rollout's field, not the program's). The same token in kubectl may do nothing
    else: RBAC forbids every other verb and object, and the admission policy every other change
    of the Deployment (its image, its replicas, an annotation of its own)."""
    namespace = "maintained-test"
    stack = new_stack(tmp_path, kube_cluster, "maintained", namespace, "127.0.0.85")
    stack.up().check()
    api = kube_cluster.client()
    core, apps = apis(kube_cluster)  # untyped, as the other tests use them
    try:
        cron_job = api.sanitize_for_serialization(client.BatchV1Api(api).read_namespaced_cron_job(
            "registry-maintenance", namespace))
        pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        token = core.create_namespaced_service_account_token(
            pod["serviceAccountName"], namespace, {"spec": {"expirationSeconds": 600}}).status.token
        before = apps.read_namespaced_deployment("registry", namespace)
        (old_pod,) = core.list_namespaced_pod(namespace).items

        restarted = run_as_job_pod(kube_cluster, pod, token, namespace, tmp_path / "job")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert restarted.stdout.strip() == "deployment.apps/registry restarted", restarted.stdout + restarted.stderr
        after = apps.read_namespaced_deployment("registry", namespace)
        assert "kubectl.kubernetes.io/restartedAt" in after.spec.template.metadata.annotations
        assert after.metadata.generation == before.metadata.generation + 1

        def rolled() -> bool:
            deployment = apps.read_namespaced_deployment("registry", namespace)
            pods = [p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]
            return (deployment.status.observed_generation == after.metadata.generation
                    and deployment.status.updated_replicas == 1 and deployment.status.available_replicas == 1
                    and [p.metadata.name for p in pods] != [old_pod.metadata.name] and len(pods) == 1)
        for _ in range(120):
            if rolled():
                break
            time.sleep(0.5)
        assert rolled(), kube_cluster.log()[-3000:]

        for forbidden in (["get", "secrets"], ["get", "deployments"], ["delete", "deployment", "registry"],
                          ["scale", "deployment/registry", "--replicas=0"],
                          ["rollout", "restart", "deployment/registry", "--namespace", "default"]):
            denied = run_as_job_pod(kube_cluster, pod, token, namespace, tmp_path / "denied", kubectl_args=forbidden)
            assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), (forbidden, denied.stderr)
        # A patch RBAC allows (kubectl cannot even send one: it GETs first), of anything but the
        # restart annotation, sent as the job sends its own: refused by the admission policy.
        for change in ('{"spec":{"template":{"spec":{"containers":[{"name":"registry","image":"evil.test/registry:1"}]}}}}',
                       '{"spec":{"replicas":0}}',
                       '{"metadata":{"annotations":{"stolen":"yes"}}}',
                       '{"spec":{"template":{"metadata":{"annotations":{"other":"x"}}}}}'):
            refused = run_as_job_pod(kube_cluster, pod, token, namespace, tmp_path / "refused",
                                     command=["/bin/sh", "-c", PATCH_WITH_THE_TOKEN, "patch", change])
            assert refused.returncode == 0, refused.stderr
            assert refused.stdout.startswith("403\n"), (change, refused.stdout)
            assert "ValidatingAdmissionPolicy" in refused.stdout and "may only restart the registry" in refused.stdout, \
                (change, refused.stdout)
        unchanged = apps.read_namespaced_deployment("registry", namespace)
        assert unchanged.spec.replicas == 1 and unchanged.spec.template.spec.containers[0].image == "registry:3.1.1"
        assert unchanged.metadata.generation == after.metadata.generation

        stack.preview("--expect-no-changes").check()
    finally:
        stack.destroy().check()
