"""What `up` says when the config asks for a claim size the cluster cannot give.

Kubernetes never shrinks a bound claim: the API server refuses a storage request below the
claim's ``status.capacity`` (k8s.io/kubernetes pkg/apis/core/validation,
ValidatePersistentVolumeClaimUpdate: "field can not be less than status.capacity"). It grows
one only when the claim's StorageClass allows volume expansion (the PersistentVolumeClaimResize
admission plugin: "only dynamically provisioned pvc can be resized and the storageclass that
provisions the pvc must support resize"); k3s's local-path does not, Longhorn does.
pulumi-kubernetes passes those answers on as they are, about fields, not about the setting.

So each claim the program declares has a hook (``size_hooks``) that runs before an update, in
preview too: a smaller size stops there, naming the setting, the size the claim holds and what
to do, before anything reaches the API server. A larger size goes to the cluster, which grows
the claim where its class allows it and otherwise refuses with the admission plugin's words
(the README's "Growing the volume" says what to do then). An error hook could add that advice
beside the refusal, but with the engine of Pulumi 3.259 a failed update that calls one never
finishes (seen with tests/testbed/cluster.py), so there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from ..quantity import quantity_bytes


def _path(value: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def requested_size(properties: Mapping[str, Any] | None) -> str | None:
    return _path(properties, "spec", "resources", "requests", "storage")


def held_size(outputs: Mapping[str, Any] | None) -> str | None:
    """What the claim has: its capacity once bound, else what it asked for."""
    return _path(outputs, "status", "capacity", "storage") or requested_size(outputs)


def _claim(outputs: Mapping[str, Any] | None) -> str:
    return f"{_path(outputs, 'metadata', 'namespace')}/{_path(outputs, 'metadata', 'name')}"


def shrink_problem(setting: str, claim: str, held: str, asked: str) -> str | None:
    """Why ``asked`` cannot replace ``held``, or None when it is not smaller."""
    if quantity_bytes(asked) >= quantity_bytes(held):
        return None
    return (
        f"{setting} is {asked}, but the claim {claim} holds {held}, and Kubernetes never shrinks a "
        f"claim. Set {setting} back to {held} (or more). For a smaller volume, copy the images out "
        "first (skopeo sync), then delete the claim and run `pulumi up` again."
    )


def size_hooks(claim_resource_name: str, setting: str) -> pulumi.ResourceHookBinding:
    """The hook of one claim; ``setting`` is the config key its size comes from."""

    def refuse_a_smaller_size(args: pulumi.ResourceHookArgs) -> None:
        held, asked = held_size(args.old_outputs), requested_size(args.new_inputs)
        if held and asked:
            problem = shrink_problem(setting, _claim(args.old_outputs), held, asked)
            if problem:
                raise ValueError(problem)

    return pulumi.ResourceHookBinding(
        before_update=[pulumi.ResourceHook(
            f"{claim_resource_name}-size-check", refuse_a_smaller_size,
            opts=pulumi.ResourceHookOptions(on_dry_run=True),
        )],
    )
