"""The scheduled restart that makes the registry collect its garbage (garbage_collection.py) in a
quiet hour: a CronJob that restarts the registry's Deployment as ``kubectl rollout restart``
does.

A restart is a strategic-merge PATCH of the Deployment that sets the pod template's
``kubectl.kubernetes.io/restartedAt`` (k8s.io/kubectl pkg/cmd/rollout/rollout_restart.go,
RunRestart). The job sends that PATCH with curl (maintenance_restart.sh) from the curl project's
image, built for linux/amd64, arm64, arm/v7, 386 and ppc64le (curl/curl-container create_multi.sh):
the Kubernetes project's kubectl image is built for its server platforms only, and a 32-bit
Raspberry Pi OS node could never pull it. The job's ServiceAccount may patch exactly that
Deployment (a Role with ``patch`` on it by name, nothing else), and since RBAC cannot limit
which fields a patch changes, a ValidatingAdmissionPolicy refuses every update of that account
that changes anything but the restart annotation (admission.py). The Deployment's Recreate
strategy stops the serving pod before the new one, whose init container collects, starts: the
registry is unavailable for that minute or so, which is why the schedule is a quiet hour.
Pulumi's server-side apply leaves the annotation alone: it belongs to the field manager
``kubectl-rollout``, as kubectl's own restart's does.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from ..settings import GarbageCollectionSettings, RegistrySettings
from .admission import create_restart_only_policy
from .cron_job import job_service_account, quiet_hours_cron_job
from .deployment import container_security_context
from .naming import RUN_AS_ID, TMP_MOUNT_PATH, job_pod_labels, object_labels

CURL_IMAGE = "curlimages/curl:8.21.0"
"""The curl project's image (curl/curl-container; Alpine, so a POSIX sh with it)."""
RESTART_SCRIPT = (Path(__file__).parent / "maintenance_restart.sh").read_text()
COMPONENT = "maintenance"
RESTART_VERBS = ("patch",)
JOB_DEADLINE_SECONDS = 300
SCANNER_EXCEPTIONS = {
    "checkov.io/skip1": ("CKV_K8S_43=curl's release tag, pinned: the tests run the script with the machine's"
                         " curl; no digest of the published image can be checked here"),
    "checkov.io/skip2": ("CKV_K8S_15=IfNotPresent on purpose: the job runs in the quiet hours, when an edge"
                         " cluster may be offline; the image is a pinned release tag"),
    "checkov.io/skip3": ("CKV_K8S_38=the job is a Kubernetes API client: it authenticates with this token, whose"
                         " Role allows a patch of the registry's Deployment, and an admission policy only the restart"),
}


def restart_command(deployment_name: pulumi.Input[str]) -> list[pulumi.Input[str]]:
    """The container's command: the restart script, with the Deployment's name as its $1."""
    return ["/bin/sh", "-c", RESTART_SCRIPT, "restart", deployment_name]


def create_maintenance(
    name: str,
    settings: RegistrySettings,
    garbage_collection: GarbageCollectionSettings,
    namespace: pulumi.Input[str],
    deployment_name: pulumi.Input[str],
    parent: pulumi.Resource,
) -> k8s.batch.v1.CronJob:
    """The CronJob, its ServiceAccount, the Role that lets it patch ``deployment_name`` (only),
    the RoleBinding, the admission policy that lets that patch be a restart only, and a
    NetworkPolicy that admits nothing to its pod."""
    job = f"{name}-{COMPONENT}"
    opts = pulumi.ResourceOptions(parent=parent)
    labels = object_labels(name, COMPONENT)
    account = job_service_account(name, COMPONENT, namespace, parent)
    role = k8s.rbac.v1.Role(
        f"{job}-role",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=job, namespace=namespace, labels=labels),
        rules=[k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["apps"], resources=["deployments"], resource_names=[deployment_name],
            verbs=list(RESTART_VERBS),
        )],
        opts=opts,
    )
    k8s.rbac.v1.RoleBinding(
        f"{job}-role-binding",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=job, namespace=namespace, labels=labels),
        role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name),
        subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=account.metadata.name, namespace=namespace)],
        opts=opts,
    )
    create_restart_only_policy(name, COMPONENT, namespace, account.metadata.name, parent)
    k8s.networking.v1.NetworkPolicy(
        f"{job}-network-policy",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=job, namespace=namespace, labels=labels),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=job_pod_labels(name, COMPONENT)),
            # Nothing reaches the job. Its egress is the API server's, which a policy cannot
            # name portably (k3s's kubernetes Service DNATs to each server's own address); what
            # the job may do there is its Role.
            policy_types=["Ingress"],
            ingress=[],
        ),
        opts=opts,
    )
    pod_spec = k8s.core.v1.PodSpecArgs(
        service_account_name=account.metadata.name,
        automount_service_account_token=True,
        restart_policy="Never",
        node_selector=dict(settings.node_selector) or None,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True,
            run_as_user=RUN_AS_ID,
            run_as_group=RUN_AS_ID,
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        containers=[k8s.core.v1.ContainerArgs(
            name=COMPONENT,
            image=CURL_IMAGE,
            image_pull_policy="IfNotPresent",
            command=restart_command(deployment_name),
            # The API server's answer lands in /tmp; the root is read-only.
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=TMP_MOUNT_PATH)],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "10m", "memory": "32Mi"}, limits={"cpu": "500m", "memory": "128Mi"}
            ),
            security_context=container_security_context(),
        )],
        volumes=[k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="16Mi"))],
    )
    return quiet_hours_cron_job(
        name, COMPONENT, namespace, garbage_collection.schedule, garbage_collection.time_zone, pod_spec,
        deadline_seconds=JOB_DEADLINE_SECONDS, annotations=SCANNER_EXCEPTIONS, parent=parent,
    )
