"""Images the registry tests push and what they read back: incompressible layers (so the volume's
size shows which are stored), the volume's size, a repository's tags, the declared credentials,
and a skopeo client of one registry pod."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from harness import Evaluation
from testbed.oci import build_oci_image_index, build_oci_layout, manifest_digest, skopeo_copy

LAYER_BYTES = 512 * 1024


def unique_layer(name: str) -> bytes:
    """Incompressible bytes, so the volume's size shows which layers are stored."""
    seed = hashlib.sha256(name.encode()).digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(LAYER_BYTES // 32))


def tags_of(registry_ip: str, repo: str, ca_pem: str, credentials: str) -> set[str]:
    context = ssl.create_default_context(cadata=ca_pem)
    request = urllib.request.Request(f"https://{registry_ip}:5000/v2/{repo}/tags/list",
                                     headers={"Authorization": "Basic " + b64encode(credentials.encode()).decode()})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return set(json.load(response)["tags"] or [])
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return set()
        raise


def volume_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def credentials_of(evaluation: Evaluation) -> str:
    return f"{evaluation.outputs['registryUsername']}:{evaluation.outputs['registryPassword']}"


class Pusher:
    """skopeo against one registry pod, with the declared CA and credentials."""

    def __init__(self, declared: Evaluation, ip: str, workdir: Path):
        self.ip, self.layout, self.pulled = ip, workdir / "layout", workdir / "pulled"
        self.certs = workdir / "certs"
        self.certs.mkdir(parents=True, exist_ok=True)
        (self.certs / "ca.crt").write_text(declared.outputs["caCertificatePem"])
        self.credentials = credentials_of(declared)
        self.ca_pem = declared.outputs["caCertificatePem"]

    def push(self, repo: str, tag: str, image: str, *, timeout: float = 120) -> tuple[subprocess.CompletedProcess[bytes], str]:
        """Push a two-layer image (a shared base and ``image``'s own 512 KiB layer); its digest."""
        key = f"{repo}-{tag}-{image}".replace(" ", "-")
        build_oci_layout(self.layout, key, unique_layer(image), base=[unique_layer("shared base")])
        pushed = skopeo_copy(f"oci:{self.layout}:{key}", f"docker://{self.ip}:5000/{repo}:{tag}",
                             extra_args=["--dest-cert-dir", str(self.certs), "--dest-creds", self.credentials],
                             timeout=timeout)
        return pushed, manifest_digest(self.layout, key)

    def push_index(self, repo: str, tag: str, platforms: dict[str, bytes], *, attestations: bool = False,
                   created: str | None = None) -> str:
        key = f"{repo}-{tag}"
        build_oci_image_index(self.layout, key, platforms, attestations=attestations, created=created)
        return self.push_layout(key, repo, tag, all_platforms=True)

    def push_layout(self, key: str, repo: str, tag: str, *, all_platforms: bool = False) -> str:
        """Push what the layout holds under ``key`` as ``repo:tag`` (an index with every platform
        when ``all_platforms``); its digest."""
        pushed = skopeo_copy(f"oci:{self.layout}:{key}", f"docker://{self.ip}:5000/{repo}:{tag}",
                             extra_args=[*(["--all"] if all_platforms else []), "--dest-cert-dir", str(self.certs),
                                         "--dest-creds", self.credentials])
        assert pushed.returncode == 0, pushed.stderr.decode()
        return manifest_digest(self.layout, key)

    def pull(self, reference: str, *, all_platforms: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Copy ``repo:tag`` or ``repo@digest`` out; skopeo verifies every blob's digest."""
        target = reference.replace(":", "-").replace("@", "-")
        return skopeo_copy(f"docker://{self.ip}:5000/{reference}", f"oci:{self.pulled}:{target}",
                           extra_args=[*(["--all"] if all_platforms else []),
                                       "--src-cert-dir", str(self.certs), "--src-creds", self.credentials])

    def pulled_digest(self, reference: str) -> str:
        return manifest_digest(self.pulled, reference.replace(":", "-").replace("@", "-"))

    def tags(self, repo: str) -> set[str]:
        return tags_of(self.ip, repo, self.ca_pem, self.credentials)


def pushed_ok(pusher: Pusher, repo: str, tag: str, image: str) -> str:
    pushed, digest = pusher.push(repo, tag, image)
    assert pushed.returncode == 0, pushed.stderr.decode()
    return digest
