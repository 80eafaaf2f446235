"""Starts the real registry exactly as the declared Deployment and Secret would run it, after
its declared init containers (the garbage collector), each run to its end as the kubelet runs
them, on the same volumes.

Everything comes from the captured resources: the container's environment, where each volume
is mounted, which Secret backs the certs volume (matched by the name the Deployment refers
to) and what that Secret holds, the user and group ids and the read-only root. The only
thing the test adds is the listen address, which a pod gets from its network namespace.
An environment variable taken from a Secret (``valueFrom.secretKeyRef``) gets that key of the
declared Secret the reference names, as the kubelet resolves it when it starts the container.
With several Deployments (the registry and its pull-through caches) ``deployment`` names the
one to start (its Pulumi resource name, like ``registry-cache-docker-io-deployment``).

A claim the program declares gets a fresh test-bed volume. A claim it only refers to (an
existing one, ``existingClaim``) must be handed in as ``claims``: claim name -> the host
directory that is that volume; the pod then sees its ``subPath`` as the kubelet would mount it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Evaluation
from testbed.registry import HostDir, RunningRegistry, image_for, run_container, start_registry

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"


def _env_value(evaluation: Evaluation, item: dict[str, Any]) -> str:
    if "value" in item:
        return item["value"]
    if "valueFrom" not in item:
        # An empty value, as the API server stores it (EnvVar's value is omitempty): the kubelet
        # sets the variable, empty (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables).
        return ""
    reference = item.get("valueFrom", {}).get("secretKeyRef")
    if reference is None:
        raise AssertionError(f"env {item['name']} has a source the test bed cannot provide: {item}")
    files = _secret_files(evaluation, reference["name"])
    if reference["key"] not in files:
        raise AssertionError(f"env {item['name']} refers to key {reference['key']!r}, which Secret {reference['name']!r} lacks")
    return files[reference["key"]].decode()


def _deployment(evaluation: Evaluation, deployment: str | None) -> Any:
    return evaluation.one(DEPLOYMENT) if deployment is None else evaluation.named(deployment)


def _secret_files(evaluation: Evaluation, secret_name: str) -> dict[str, bytes]:
    for secret in evaluation.of_type(SECRET):
        if secret.outputs["metadata"]["name"] == secret_name:
            return {key: value.encode() for key, value in secret.inputs["stringData"].items()}
    raise AssertionError(f"the Deployment mounts Secret {secret_name!r}, which the program does not declare")


def _claim_volume(evaluation: Evaluation, claim_name: str, mount: dict[str, Any], claims: Mapping[str, Path]) -> Any:
    declared = {claim.outputs["metadata"]["name"] for claim in evaluation.of_type(CLAIM)}
    if claim_name in declared:
        return "pvc"
    if claim_name not in claims:
        raise AssertionError(
            f"the Deployment mounts claim {claim_name!r}, which the program does not declare and the test does not provide"
        )
    return HostDir(kubelet_sub_path(Path(claims[claim_name]), mount.get("subPath", "")))


def kubelet_sub_path(volume: Path, sub_path: str) -> Path:
    """The directory a container sees for a volume mount with this ``subPath``.

    The kubelet creates a missing subPath, as root, with the mode of the volume's root
    (pkg/kubelet/kubelet_pods.go makeMounts: SafeMakeDir(subPath, volumePath, perm)).
    """
    if not sub_path:
        return volume
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise AssertionError(f"subPath {sub_path!r} leaves the volume")
    directory = volume / sub_path
    if not directory.exists():
        directory.mkdir(parents=True)
        directory.chmod(os.stat(volume).st_mode & 0o7777)
    return directory


def _volume_source(
    evaluation: Evaluation, volume: dict[str, Any], mount: dict[str, Any], claims: Mapping[str, Path]
) -> Any:
    if "secret" in volume:
        return _secret_files(evaluation, volume["secret"]["secretName"])
    if "persistentVolumeClaim" in volume:
        return _claim_volume(evaluation, volume["persistentVolumeClaim"]["claimName"], mount, claims)
    if "emptyDir" in volume:
        return "emptydir"
    raise AssertionError(f"volume {volume['name']} has a source the test bed cannot provide: {volume}")


def _container_settings(
    evaluation: Evaluation, pod: dict[str, Any], container: dict[str, Any], claims: Mapping[str, Path]
) -> dict[str, Any]:
    """One container of the pod as the test bed runs it: its environment, its volumes at their
    mount paths, its user (the container's securityContext over the pod's), its root."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    pod_security = pod.get("securityContext", {})
    container_security = container.get("securityContext", {})
    return {
        "env": {item["name"]: _env_value(evaluation, item) for item in container.get("env", [])},
        "volumes": {
            mount["mountPath"]: _volume_source(evaluation, volumes[mount["name"]], mount, claims)
            for mount in container.get("volumeMounts", [])
        },
        "run_as_uid": container_security.get("runAsUser", pod_security.get("runAsUser")),
        "run_as_gid": container_security.get("runAsGroup", pod_security.get("runAsGroup")),
        "fs_group": pod_security.get("fsGroup"),
        "read_only_root": bool(container_security.get("readOnlyRootFilesystem")),
    }


def registry_pod_settings(
    evaluation: Evaluation, claims: Mapping[str, Path] | None = None, deployment: str | None = None
) -> dict[str, Any]:
    """The arguments for ``start_registry``, read off the declared Deployment.

    ``claims``: existing claims the Deployment mounts (claim name -> host directory)."""
    pod = _deployment(evaluation, deployment).inputs["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container, "the registry container runs its image's entrypoint"
    return {
        **_container_settings(evaluation, pod, container, claims or {}),
        "image": image_for(container["image"]),
        "args": container.get("args", []),
        # Only the volumes the Deployment declares are writable (its emptyDir at /tmp included).
        "writable_tmp": False,
        "container_port": container["ports"][0]["containerPort"],
    }


# How often the test bed runs a failing init container again before it calls the pod stuck (the
# kubelet goes on for ever, with a back-off from 10 s to 5 min: here, at once).
INIT_CONTAINER_RUNS = 3


@dataclass
class InitContainerRecord:
    """An init container as the pod's status and ``kubectl logs`` tell it."""

    log: str
    """What its last run printed (``kubectl logs -c NAME``)."""
    restarts: int = 0
    """``restartCount``: the runs that failed before the last."""
    previous_log: str | None = None
    """What the run before the last printed (``kubectl logs --previous``)."""
    previous_exit_code: int | None = None
    """``lastState.terminated.exitCode``."""


def run_init_containers(
    evaluation: Evaluation, workdir: Path, claims: Mapping[str, Path] | None = None, deployment: str | None = None
) -> dict[str, InitContainerRecord]:
    """Each declared init container, in order, to its end, as the kubelet runs them before the
    pod's containers: on the pod's volumes (the same workdir; an emptyDir lives as long as the
    pod, across runs), as its user, with its command and arguments. One that fails is run again,
    as the kubelet does for a Deployment's pod (restartPolicy Always); one that never succeeds
    fails here, as the pod would never start. Returns each one's record, by name."""
    pod = _deployment(evaluation, deployment).inputs["spec"]["template"]["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"
    records = {}
    for container in pod.get("initContainers", []):
        settings = _container_settings(evaluation, pod, container, claims or {})
        runs: list[subprocess.CompletedProcess[str]] = []
        while len(runs) < INIT_CONTAINER_RUNS and (not runs or runs[-1].returncode != 0):
            runs.append(run_container(workdir, argv=[*container.get("command", []), *container.get("args", [])],
                                      image=image_for(container["image"]), **settings))
        if runs[-1].returncode != 0:
            raise AssertionError(f"init container {container['name']} exited {runs[-1].returncode} "
                                 f"{INIT_CONTAINER_RUNS} times:\n{runs[-1].stdout}")
        previous = runs[-2] if len(runs) > 1 else None
        record = InitContainerRecord(
            log=runs[-1].stdout, restarts=len(runs) - 1, previous_log=previous.stdout if previous else None,
            previous_exit_code=previous.returncode if previous else None,
        )
        records[container["name"]] = record
    return records


def start_registry_pod(
    evaluation: Evaluation,
    workdir: Path,
    listen_ip: str,
    claims: Mapping[str, Path] | None = None,
    deployment: str | None = None,
    env_overrides: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    port: int | None = None,
    extra_files: Mapping[str, Mapping[str, bytes]] | None = None,
    hosts: Mapping[str, str] | None = None,
) -> RunningRegistry:
    """``env_overrides``: what the test changes in the pod's environment, stated by the test.
    ``port``: listen there instead of the container port (a Service's port, which kube-proxy
    would forward to the container port). ``extra_files``: mount path -> files, read-only,
    that the test adds to the container (a CA bundle for a stand-in upstream). ``hosts``: names the
    container resolves (a stand-in upstream's), as the cluster's DNS would."""
    # A new pod: its emptyDirs are new.
    shutil.rmtree(workdir / "emptydir", ignore_errors=True)
    init_records = run_init_containers(evaluation, workdir, claims, deployment)
    settings = registry_pod_settings(evaluation, claims, deployment)
    container_port = settings.pop("container_port")
    port = port or container_port
    settings["volumes"] = {**settings["volumes"], **(extra_files or {})}
    env = {**settings.pop("env"), **(env_overrides or {})}
    # A pod listens on all of its own addresses; here the "pod" shares the loopback network.
    env["REGISTRY_HTTP_ADDR"] = f"{listen_ip}:{port}"
    if env.get("REGISTRY_HTTP_DEBUG_ADDR"):  # the debug server (metrics) too, on its declared port
        env["REGISTRY_HTTP_DEBUG_ADDR"] = f"{listen_ip}:{env['REGISTRY_HTTP_DEBUG_ADDR'].rsplit(':', 1)[1]}"
    running = start_registry(workdir, listen_ip=listen_ip, port=port, env=env, timeout=timeout, hosts=hosts,
                             **settings)
    running.init_logs = {name: record.log for name, record in init_records.items()}
    running.init_records = dict(init_records)
    return running


@contextlib.contextmanager
def registry_pod(
    evaluation: Evaluation,
    workdir: Path,
    listen_ip: str,
    claims: Mapping[str, Path] | None = None,
    deployment: str | None = None,
    env_overrides: Mapping[str, str] | None = None,
    port: int | None = None,
    extra_files: Mapping[str, Mapping[str, bytes]] | None = None,
    hosts: Mapping[str, str] | None = None,
) -> Iterator[RunningRegistry]:
    """The registry pod for the length of a ``with`` block (a fixture's lifetime)."""
    running = start_registry_pod(
        evaluation, workdir, listen_ip, claims, deployment, env_overrides, port=port, extra_files=extra_files,
        hosts=hosts,
    )
    try:
        yield running
    finally:
        running.stop()


def run_job_container(
    workdir: Path,
    *,
    pod: Mapping[str, Any],
    args: Sequence[str],
    files: Mapping[str, tuple[bytes | Path, int]],
    fresh_dirs: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """A job pod's container as the kubelet runs it here, in a mount namespace: each of
    ``fresh_dirs`` is an empty tmpfs of the pod's own (/etc, /run, an emptyDir at /tmp), and each
    of ``files`` (path -> content, or the path of a file: mode after a ``:`` in the key, e.g.
    ``/run/image/kubectl:755``; 644 by default) is in one of them, owned by root and the pod's
    fsGroup, as a volume's files are. The first ``args`` (the image's entrypoint, one of
    ``files``) runs as the pod's user, with the fsGroup as its group when there is one, and
    ``env``. /var/run is /run."""
    security = pod["securityContext"]
    group = security.get("fsGroup")
    staged = workdir / "staged"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    # A fresh dir that would hide the staged files (a /tmp over the workdir) is mounted after the copies.
    hiding = [d for d in fresh_dirs if staged.resolve().is_relative_to(d)]
    commands = ["set -eu", *(f"mount -t tmpfs -o mode={'1777' if d == '/tmp' else '755'} tmpfs {d}"
                             for d in fresh_dirs if d not in hiding)]
    for index, (path, (content, mode)) in enumerate(files.items()):
        target = path.replace("/var/run/", "/run/", 1)
        if not any(Path(target).is_relative_to(d) for d in fresh_dirs if d not in hiding):
            raise AssertionError(f"{target} is in none of the pod's own directories {fresh_dirs}")
        staged_file = staged / str(index)
        if isinstance(content, Path):
            shutil.copy(content, staged_file)
        else:
            staged_file.write_bytes(content)
        commands += [f"mkdir -p {shlex.quote(str(Path(target).parent))}",
                     f"cp {shlex.quote(str(staged_file))} {shlex.quote(target)}",
                     f"chown 0:{group or 0} {shlex.quote(target)}",
                     f"chmod {mode:o} {shlex.quote(target)}"]
    commands += [f"mount -t tmpfs -o mode={'1777' if d == '/tmp' else '755'} tmpfs {d}" for d in hiding]
    groups = f"--groups={group}" if group is not None else "--clear-groups"
    commands.append(f"exec setpriv --reuid={security['runAsUser']} --regid={security['runAsGroup']} {groups} "
                    + " ".join(shlex.quote(arg) for arg in args))
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(commands)],
                          env=dict(env), capture_output=True, text=True, timeout=timeout, check=False)
