"""Garbage collection: distribution's collector, run on the registry's volume before the registry
serves, as the first (init) container of its pod.

``registry garbage-collect`` must never run beside a registry that accepts pushes: it marks what
the stored manifests reference, then deletes every other blob, including one an upload has just
put and a manifest is about to name (distribution's docs, "Garbage collection"). An init
container runs to its end before the registry container starts, on the same ReadWriteOnce claim,
and the Deployment's Recreate strategy stops the old pod first, so nothing writes meanwhile. A
restart on a schedule (maintenance.py) makes that happen in a quiet hour.

``--delete-untagged`` (with retention only: see RegistrySettings.deletes_untagged) also removes
the manifests no tag names, the images a re-pushed ``latest`` left behind. distribution 2.8's
collector cannot do that safely once an image index (a multi-platform image, or one buildx
pushed with its attestations) is stored: it looks up only tags, so the platform manifests an
index lists count as untagged; it deletes them, and since it never walks an index's children,
their layers too (registry/storage/garbagecollect.go at v2.8.3, MarkAndSweep). The script looks
for a stored index first and then collects without ``--delete-untagged``, saying why.

Pull-through caches need none of this: what expires in proxy mode, distribution deletes itself.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from ..settings import RegistrySettings
from .deployment import container_security_context
from .naming import DATA_MOUNT_PATH

CONTAINER_NAME = "garbage-collect"
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
"""The registry:2 image's configuration file; the pod's environment overrides what it sets."""


def index_check_function() -> str:
    """``index_stored DIR``: exits 0 when a manifest stored under the v2 directory DIR is an
    image index. Each repository's manifests are its ``_manifests/revisions/sha256/<hex>/link``
    files (distribution's storage paths.go); the blob they name is the manifest itself. An index
    (OCI or Docker's manifest list) is the manifest with a ``manifests`` member: matching on the
    member, not the mediaType (optional in an OCI index), errs towards keeping."""
    return r"""index_stored() {
  find "$1/repositories" -type f -path '*/_manifests/revisions/sha256/*/link' | while read -r link; do
    hex=$(cat "$link")
    hex=${hex#sha256:}
    if grep -q '"manifests"' "$1/blobs/sha256/${hex%"${hex#??}"}/$hex/data" 2>/dev/null; then
      echo "$link"
      break
    fi
  done | grep -q .
}"""


def garbage_collect_script(delete_untagged: bool, storage_root: str = DATA_MOUNT_PATH) -> str:
    """The init container's script (POSIX sh, for the image's busybox): collect, then end, so
    the registry starts, also when the collector fails (a manifest it cannot read: its log says
    so). A volume with nothing stored yet has nothing to collect (and the collector would fail
    on it: the repositories directory does not exist)."""
    lines = [
        "set -eu",
        f"v2={storage_root}/docker/registry/v2",
        *([index_check_function()] if delete_untagged else []),
        'if [ ! -d "$v2/repositories" ]; then',
        '  echo "garbage-collect: nothing is stored yet; nothing to collect"',
        "  exit 0",
        "fi",
    ]
    if delete_untagged:
        lines += [
            'options="--delete-untagged"',
            'if index_stored "$v2"; then',
            ('  echo "garbage-collect: an image index (a multi-platform image) is stored: manifests no tag names'
             " are kept, since distribution 2.8 would delete the index's platform manifests with them\""),
            '  options=""',
            "fi",
            "# shellcheck disable=SC2086 # options is one word or none",
            f"if registry garbage-collect $options {REGISTRY_CONFIG}; then",
        ]
    else:
        lines.append(f"if registry garbage-collect {REGISTRY_CONFIG}; then")
    lines += [
        "  exit 0",
        "fi",
        # A collector that fails has deleted nothing a manifest names (it sweeps only once every
        # manifest is marked), so the registry serves rather than stays down for it.
        'echo "garbage-collect: the collector failed (see above); the registry starts anyway, uncollected" >&2',
    ]
    return "\n".join(lines) + "\n"


def garbage_collect_container(settings: RegistrySettings, data_sub_path: str | None) -> k8s.core.v1.ContainerArgs:
    """The init container: the registry's image, user and volume (the same ``subPath``), and
    only the storage part of its environment."""
    return k8s.core.v1.ContainerArgs(
        name=CONTAINER_NAME,
        image=settings.image,
        image_pull_policy="IfNotPresent",
        command=["/bin/sh", "-c", garbage_collect_script(settings.deletes_untagged)],
        env=[k8s.core.v1.EnvVarArgs(name="REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", value=DATA_MOUNT_PATH)],
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path=DATA_MOUNT_PATH, sub_path=data_sub_path)],
        # The collector holds every referenced digest in memory: the registry's own limits.
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "64Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        ),
        security_context=container_security_context(),
    )
