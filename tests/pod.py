"""Starts the real registry exactly as the declared Deployment and Secret would run it.

Everything comes from the captured resources: the container's environment, where each volume
is mounted, which Secret backs the certs volume (matched by the name the Deployment refers
to) and what that Secret holds, the user and group ids and the read-only root. The only
thing the test adds is the listen address, which a pod gets from its network namespace.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator
from typing import Any

from harness import Evaluation
from testbed.registry import RunningRegistry, start_registry

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"


def _secret_files(evaluation: Evaluation, secret_name: str) -> dict[str, bytes]:
    for secret in evaluation.of_type(SECRET):
        if secret.outputs["metadata"]["name"] == secret_name:
            return {key: value.encode() for key, value in secret.inputs["stringData"].items()}
    raise AssertionError(f"the Deployment mounts Secret {secret_name!r}, which the program does not declare")


def _volume_source(evaluation: Evaluation, volume: dict[str, Any]) -> Any:
    if "secret" in volume:
        return _secret_files(evaluation, volume["secret"]["secretName"])
    if "persistentVolumeClaim" in volume:
        return "pvc"
    if "emptyDir" in volume:
        return "emptydir"
    raise AssertionError(f"volume {volume['name']} has a source the test bed cannot provide: {volume}")


def registry_pod_settings(evaluation: Evaluation) -> dict[str, Any]:
    """The arguments for ``start_registry``, read off the declared Deployment."""
    pod = evaluation.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    pod_security = pod.get("securityContext", {})
    container_security = container.get("securityContext", {})
    return {
        "env": {item["name"]: item["value"] for item in container["env"]},
        "volumes": {
            mount["mountPath"]: _volume_source(evaluation, volumes[mount["name"]])
            for mount in container["volumeMounts"]
        },
        "run_as_uid": container_security.get("runAsUser", pod_security.get("runAsUser")),
        "run_as_gid": container_security.get("runAsGroup", pod_security.get("runAsGroup")),
        "fs_group": pod_security.get("fsGroup"),
        "read_only_root": bool(container_security.get("readOnlyRootFilesystem")),
        # Only the volumes the Deployment declares are writable (its emptyDir at /tmp included).
        "writable_tmp": False,
        "container_port": container["ports"][0]["containerPort"],
    }


def start_registry_pod(evaluation: Evaluation, workdir: Path, listen_ip: str) -> RunningRegistry:
    settings = registry_pod_settings(evaluation)
    port = settings.pop("container_port")
    env = dict(settings.pop("env"))
    # A pod listens on all of its own addresses; here the "pod" shares the loopback network.
    env["REGISTRY_HTTP_ADDR"] = f"{listen_ip}:{port}"
    return start_registry(workdir, listen_ip=listen_ip, port=port, env=env, **settings)


@contextlib.contextmanager
def registry_pod(evaluation: Evaluation, workdir: Path, listen_ip: str) -> Iterator[RunningRegistry]:
    """The registry pod for the length of a ``with`` block (a fixture's lifetime)."""
    running = start_registry_pod(evaluation, workdir, listen_ip)
    try:
        yield running
    finally:
        running.stop()
