"""What the maintenance job's token may change: only the restart annotation.

RBAC grants verbs, not fields: the Role that lets the maintenance job ``patch`` the registry's
Deployment (maintenance.py) would let a stolen token of its ServiceAccount swap the image of the
pod that mounts the TLS key, the htpasswd Secret and every image. A ValidatingAdmissionPolicy
(admissionregistration.k8s.io/v1, GA since Kubernetes 1.30, served by k3s) closes that: every
update that account makes to a Deployment must leave everything as it was but the pod template's
``kubectl.kubernetes.io/restartedAt``. The API server evaluates it in process (no webhook to
run); a policy and its binding are cluster-wide objects, named after the namespace.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from .naming import object_labels

RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
"""What `kubectl rollout restart` (and the maintenance job) sets on the pod template."""

# Everything of a Deployment an update could change, but the pod template's annotations (the
# restart's) and what the API server keeps itself (status, resourceVersion, generation,
# managedFields).
UNCHANGED_FIELDS = (
    "metadata.labels", "metadata.annotations", "metadata.finalizers", "metadata.ownerReferences",
    "spec.replicas", "spec.selector", "spec.strategy", "spec.minReadySeconds", "spec.revisionHistoryLimit",
    "spec.paused", "spec.progressDeadlineSeconds", "spec.template.metadata.labels", "spec.template.spec",
)
TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations"
DENIED_MESSAGE = (f"the registry's maintenance account may only restart the registry (the pod template's "
                  f"{RESTART_ANNOTATION}); it changed something else")


def unchanged(field: str) -> str:
    """CEL: ``field`` is absent from both the old and the new object, or equal in both."""
    return (f"(has(object.{field}) ? (has(oldObject.{field}) && object.{field} == oldObject.{field})"
            f" : !has(oldObject.{field}))")


def only_the_restart_annotation_changes() -> str:
    """CEL: the update leaves every field but the restart annotation as it was."""
    new, old = f"object.{TEMPLATE_ANNOTATIONS}", f"oldObject.{TEMPLATE_ANNOTATIONS}"
    annotations = (
        f"(has({new}) && has({old})"
        f" && {new}.all(k, k == '{RESTART_ANNOTATION}' || (k in {old} && {old}[k] == {new}[k]))"
        f" && {old}.all(k, k == '{RESTART_ANNOTATION}' || k in {new}))"
    )
    return " && ".join([*(unchanged(field) for field in UNCHANGED_FIELDS), annotations])


def create_restart_only_policy(
    name: str,
    component: str,
    namespace: pulumi.Input[str],
    service_account_name: pulumi.Input[str],
    parent: pulumi.Resource,
) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding:
    """The policy and its binding (Deny) for updates of Deployments in ``namespace`` by the
    ServiceAccount ``service_account_name`` of that namespace."""
    opts = pulumi.ResourceOptions(parent=parent)
    policy_name = pulumi.Output.concat(namespace, f"-{name}-{component}-restart-only")
    labels = object_labels(name, component)
    username = pulumi.Output.concat("system:serviceaccount:", namespace, ":", service_account_name)
    policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
        f"{name}-{component}-admission-policy",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=labels),
        spec=k8s.admissionregistration.v1.ValidatingAdmissionPolicySpecArgs(
            failure_policy="Fail",
            match_constraints=k8s.admissionregistration.v1.MatchResourcesArgs(
                resource_rules=[k8s.admissionregistration.v1.NamedRuleWithOperationsArgs(
                    api_groups=["apps"], api_versions=["*"], operations=["UPDATE"], resources=["deployments"],
                )],
            ),
            match_conditions=[k8s.admissionregistration.v1.MatchConditionArgs(
                name="the-maintenance-account",
                expression=pulumi.Output.concat("request.userInfo.username == '", username, "'"),
            )],
            validations=[k8s.admissionregistration.v1.ValidationArgs(
                expression=only_the_restart_annotation_changes(), message=DENIED_MESSAGE, reason="Forbidden",
            )],
        ),
        opts=opts,
    )
    return k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
        f"{name}-{component}-admission-policy-binding",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=policy_name, labels=labels),
        spec=k8s.admissionregistration.v1.ValidatingAdmissionPolicyBindingSpecArgs(
            policy_name=policy.metadata.name,
            validation_actions=["Deny"],
            match_resources=k8s.admissionregistration.v1.MatchResourcesArgs(
                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"kubernetes.io/metadata.name": namespace},
                ),
            ),
        ),
        opts=opts,
    )
