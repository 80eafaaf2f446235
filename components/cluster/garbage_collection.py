"""Garbage collection: distribution's collector, run on the registry's volume before the registry
serves, as the first (init) container of its pod.

``registry garbage-collect`` must never run beside a registry that accepts pushes: it marks what
the stored manifests reference, then deletes every other blob, including one an upload has just
put and a manifest is about to name (distribution's docs, "Garbage collection"). An init
container runs to its end before the registry container starts, on the same ReadWriteOnce claim,
and the Deployment's Recreate strategy stops the old pod first, so nothing writes meanwhile. A
restart on a schedule (maintenance.py) makes that happen in a quiet hour.

``--delete-untagged`` (with retention only: see RegistrySettings.deletes_untagged) also removes
the manifests no tag names, the images a re-pushed ``latest`` left behind. distribution 3 keeps
what a kept image index lists (a multi-platform image, or one buildx pushed with its attestation
manifest): registry/storage/garbagecollect.go at v3.1.1 marks every manifest a marked manifest
references, recursively (markManifestReferences), and then takes every marked manifest off the
list of untagged ones to delete (unmarkReferencedManifest); a repository with no tags at all
(pushed only by digest) is passed over instead of failing the run (ErrRepositoryUnknown).
distribution 2.8 did neither, which is why the program refuses a 2.8 image (config/stack.py).

A collector that fails must not keep the registry down (it sweeps only once every manifest is
marked, so a failed run has deleted nothing a manifest names), and must not go unnoticed either:
the init container then ends with an error once, which the kubelet answers by running it again
(a Deployment's pod restarts a failed init container); the second run finds the mark the first
left in the pod's own emptyDir and ends well, so the registry starts, uncollected. The failure
stays in the pod's status for its lifetime (the init container's restart count, its last state's
exit code and, by FallbackToLogsOnError, the collector's last log lines as its message), in the
kubelet's BackOff event, and with monitoring in the RegistryGarbageCollectionFailed alert (from
kube-state-metrics' kube_pod_init_container_status_restarts_total; monitoring.py).

Pull-through caches need none of this: what expires in proxy mode, distribution deletes itself.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from ..settings import RegistrySettings
from .deployment import container_security_context
from .naming import DATA_MOUNT_PATH

CONTAINER_NAME = "garbage-collect"
REGISTRY_CONFIG = "/etc/distribution/config.yml"
"""The registry:3 image's configuration file; the pod's environment overrides what it sets."""
STATE_VOLUME = "garbage-collection"
STATE_MOUNT_PATH = "/run/garbage-collection"
"""The pod's own emptyDir, where a failed first run leaves its mark for the second."""
FAILED_MARK = f"{STATE_MOUNT_PATH}/failed"


def garbage_collect_script(delete_untagged: bool, storage_root: str = DATA_MOUNT_PATH) -> str:
    """The init container's script (POSIX sh, for the image's busybox): collect, then end, so
    the registry starts. A collector that fails (a manifest it cannot read: its log says so)
    ends the first run with an error, and the kubelet's second run lets the registry start. A
    volume with nothing stored yet has nothing to collect."""
    options = "--delete-untagged " if delete_untagged else ""
    lines = [
        "set -eu",
        f"v2={storage_root}/docker/registry/v2",
        f'if [ -e {FAILED_MARK} ]; then',
        ('  echo "garbage-collect: the collector failed at the start of this pod (kubectl logs --previous says'
         ' why); the registry starts uncollected"'),
        "  exit 0",
        "fi",
        'if [ ! -d "$v2/repositories" ]; then',
        '  echo "garbage-collect: nothing is stored yet; nothing to collect"',
        "  exit 0",
        "fi",
        *missing_manifest_check(),
        f"if registry garbage-collect {options}{REGISTRY_CONFIG}; then",
        "  exit 0",
        "fi",
        # A collector that fails has deleted nothing a manifest names (it sweeps only once every
        # manifest is marked): the registry serves, once this failure is on the pod's record.
        f"touch {FAILED_MARK}",
        ('echo "garbage-collect: the collector failed (see above); the registry starts uncollected once this'
         ' container has run again" >&2'),
        "exit 1",
    ]
    return "\n".join(lines) + "\n"


def missing_manifest_check() -> list[str]:
    """Lines that stop the collection, as a failure, when a stored manifest's blob is missing.

    distribution's collector stops marking a repository at a manifest it cannot find
    (PathNotFound, which MarkAndSweep lets pass) and then sweeps the blobs of every image of that
    repository it had not marked yet: one lost manifest would cost its neighbours their layers.
    Each manifest is a ``_manifests/revisions/sha256/<hex>/link`` of its repository, whose blob
    is ``blobs/sha256/<first two hex digits>/<hex>/data`` (registry/storage/paths.go)."""
    return [
        'missing=$(find "$v2/repositories" -type f -path "*/_manifests/revisions/sha256/*/link" | while read -r link; do',
        '  digest=$(cat "$link")',
        "  hex=${digest#sha256:}",
        '  if [ ! -f "$v2/blobs/sha256/${hex%"${hex#??}"}/$hex/data" ]; then',
        '    repository=${link#"$v2/repositories/"}',
        ('    echo "garbage-collect: ${repository%%/_manifests/*}@$digest: its blob is missing; restore it, or remove'
         ' ${link%/link} (kubectl exec into the registry container)"'),
        "  fi",
        "done)",
        'if [ -n "$missing" ]; then',
        '  echo "$missing" >&2',
        f"  touch {FAILED_MARK}",
        ('  echo "garbage-collect: nothing is collected while a manifest is missing (distribution would sweep the'
         ' layers of the images of its repository it had not reached)" >&2'),
        "  exit 1",
        "fi",
    ]


def state_volume() -> k8s.core.v1.VolumeArgs:
    """The collector's emptyDir: it lives as long as the pod, across the init container's runs."""
    return k8s.core.v1.VolumeArgs(name=STATE_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Mi"))


def garbage_collect_container(settings: RegistrySettings, data_sub_path: str | None) -> k8s.core.v1.ContainerArgs:
    """The init container: the registry's image, user and volume (the same ``subPath``), and
    only the storage part of its environment."""
    return k8s.core.v1.ContainerArgs(
        name=CONTAINER_NAME,
        image=settings.image,
        image_pull_policy="IfNotPresent",
        command=["/bin/sh", "-c", garbage_collect_script(settings.deletes_untagged)],
        env=[k8s.core.v1.EnvVarArgs(name="REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", value=DATA_MOUNT_PATH)],
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="data", mount_path=DATA_MOUNT_PATH, sub_path=data_sub_path),
            k8s.core.v1.VolumeMountArgs(name=STATE_VOLUME, mount_path=STATE_MOUNT_PATH),
        ],
        # A failed run's last log lines become its status message (kubectl describe pod).
        termination_message_policy="FallbackToLogsOnError",
        # The collector holds every referenced digest in memory: the registry's own limits.
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "64Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        ),
        security_context=container_security_context(),
    )
