"""Minimal OCI image layouts built in Python, pushed with skopeo.

Why: there is no Docker daemon here, yet tests must push a real image to the
registry and pull it back.  One tiny layer whose payload the caller chooses
lets tests tell images apart; every byte is deterministic (fixed mtimes,
sorted JSON, gzip without name/time) so the same input gives the same
manifest digest every time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
PAYLOAD_PATH = "testbed/payload"  # where the payload sits inside the layer

Runner = Callable[[list[str]], "subprocess.CompletedProcess[bytes]"]


def build_oci_layout(
    dest: Path, tag: str, payload: bytes, *, base: Sequence[bytes] = (), created: str | None = None
) -> Path:
    """Write (or add ``tag`` to) an OCI image layout at ``dest``; return ``dest``.

    Adding a second tag to an existing layout keeps the first one, so one
    directory can hold several images (``oci:DEST:TAG`` selects one).
    ``base``: payloads of layers under the image's own one (images with the same base share
    those blobs); ``created``: the config's creation time (RFC 3339), none by default.
    """
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_tars = [_layer_tar(layer_payload) for layer_payload in (*base, payload)]
    layers = [_write_blob(blobs, _gzip(layer_tar)) for layer_tar in layer_tars]
    config = _write_blob(blobs, _canonical_json(_image_config(layer_tars, created)))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config},
        "layers": [{"mediaType": MEDIA_LAYER, **layer} for layer in layers],
    }
    manifest = _write_blob(blobs, _canonical_json(manifest_doc))
    _update_index(dest, tag, manifest)
    (dest / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))
    return dest


def build_oci_image_index(dest: Path, tag: str, payloads: Mapping[str, bytes], *, attestations: bool = False,
                          created: str | None = None, platform_tags: bool = False) -> Path:
    """Write (or add ``tag`` to) the layout at ``dest`` as a multi-platform image: an image index
    whose entries are one image per architecture (``payloads``: architecture -> its layer's
    payload), as ``docker buildx build --platform ...`` pushes. Push it with ``skopeo copy --all``.

    ``attestations``: each image also gets the attestation manifest buildx (0.10 on) stores beside
    it, as BuildKit lays it out (docs/attestations/attestation-storage.md; the annotation keys
    are util/attestation/types.go): an image manifest with an image config for compatibility and
    one ``application/vnd.in-toto+json`` layer (annotated ``in-toto.io/predicate-type``), listed
    in the index with platform ``unknown/unknown`` and the annotations
    ``vnd.docker.reference.type: attestation-manifest`` and ``vnd.docker.reference.digest`` (the
    image it describes). ``created``: each image config's creation time. ``platform_tags``: each
    platform's image is also tagged ``<tag>-<architecture>`` in the layout (pushed alone, it is
    the per-platform tag some builds push beside the index)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    entries = []
    for architecture, payload in payloads.items():
        layer_tar = _layer_tar(payload)
        layer = _write_blob(blobs, _gzip(layer_tar))
        config = _write_blob(blobs, _canonical_json(_image_config([layer_tar], created, architecture=architecture)))
        manifest = _write_blob(blobs, _canonical_json({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, **config},
            "layers": [{"mediaType": MEDIA_LAYER, **layer}],
        }))
        entries.append({"mediaType": MEDIA_MANIFEST, **manifest, "platform": {"architecture": architecture, "os": "linux"}})
        if platform_tags:
            _update_index(dest, f"{tag}-{architecture}", manifest)
        if attestations:
            entries.append(_attestation_entry(blobs, manifest["digest"], architecture))
    index = _write_blob(blobs, _canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}))
    _update_index(dest, tag, index, media_type=MEDIA_INDEX)
    (dest / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))
    return dest


def _attestation_entry(blobs: Path, subject: str, architecture: str) -> dict[str, Any]:
    statement = _canonical_json({
        "_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": f"pkg:docker/testbed@1.0?platform=linux%2F{architecture}",
                     "digest": {"sha256": subject.removeprefix("sha256:")}}],
        "predicate": {"buildType": "https://mobyproject.org/buildkit@v1"},
    })
    layer = _write_blob(blobs, statement)
    config = _write_blob(blobs, _canonical_json({
        "architecture": "unknown", "os": "unknown", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }))
    manifest = _write_blob(blobs, _canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config},
        "layers": [{"mediaType": "application/vnd.in-toto+json", **layer,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }))
    return {"mediaType": MEDIA_MANIFEST, **manifest, "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.digest": subject,
                            "vnd.docker.reference.type": "attestation-manifest"}}


def manifest_digest(dest: Path, tag: str) -> str:
    """The ``sha256:...`` manifest digest stored for ``tag`` in the layout.

    A registry reports the same digest (``Docker-Content-Digest``) after a
    push without conversion, which makes "is the right image there" checks exact.
    """
    for entry in json.loads((dest / "index.json").read_text())["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return str(entry["digest"])
    raise KeyError(tag)


def skopeo_copy(
    src: str,
    dst: str,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    run: Runner | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """``skopeo copy [extra_args] SRC DST``; never raises on failure.

    ``run`` lets the copy happen somewhere else, e.g. ``node.run_local`` so
    that the node's /etc/hosts and trust store apply (``env`` is then
    ignored; put settings in ``extra_args``).  Check ``returncode`` yourself.
    """
    argv = ["skopeo", "copy", *extra_args, src, dst]
    if run is not None:
        return run(argv)
    return subprocess.run(
        argv, check=False, capture_output=True, env=dict(env) if env is not None else None, timeout=timeout
    )


def _layer_tar(payload: bytes) -> bytes:
    """An uncompressed tar with one directory and one file, fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        folder = tarfile.TarInfo(PAYLOAD_PATH.rsplit("/", 1)[0])
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(folder)
        info = tarfile.TarInfo(PAYLOAD_PATH)
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    """gzip with no file name and mtime 0, so output depends on input only."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", filename="", mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def _image_config(
    layer_tars: Sequence[bytes], created: str | None = None, architecture: str = "amd64"
) -> dict[str, Any]:
    """Image config: linux/``architecture``, a diff id per layer, a harmless default command."""
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest() for tar in layer_tars]},
    }
    if created is not None:
        config["created"] = created
    return config


def _canonical_json(doc: Mapping[str, Any]) -> bytes:
    """Sorted, compact JSON: the same document always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    """Store ``data`` content-addressed; return its descriptor fields."""
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _update_index(dest: Path, tag: str, manifest: Mapping[str, Any], media_type: str = MEDIA_MANIFEST) -> None:
    """Point ``tag`` at ``manifest`` (of ``media_type``) in index.json, keeping other tags."""
    index_path = dest / "index.json"
    entries: list[dict[str, Any]] = []
    if index_path.exists():
        old = json.loads(index_path.read_text())
        entries = [e for e in old["manifests"] if e.get("annotations", {}).get(REF_NAME) != tag]
    entries.append({"mediaType": media_type, **manifest, "annotations": {REF_NAME: tag}})
    entries.sort(key=lambda e: e["annotations"][REF_NAME])
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}
    index_path.write_bytes(_canonical_json(index))
