"""From distribution 2.8 to 3 on the same volume: a stack the previous release deployed
(``registry:2.8.3``) holds single- and multi-platform images; this release's pod (``registry:3.1.1``,
its collector with ``--delete-untagged`` under retention) serves every image and digest the old
one served, every platform of every index.

The previous release's pod is what that release's own program declares (its tree, its test
harness, in a process of its own), run by the test bed with distribution 2.8 (Debian's 2.8.2,
the stand-in for the image's 2.8.3: the same storage layout); this release's pod then starts on
the same volume, with the release the toolchain builds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import evaluate
from images import Pusher, credentials_of, pushed_ok, unique_layer, volume_bytes
from pod import registry_pod
from releases import declared_by_release, release_tree
from testbed.certs import self_signed_cert
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.registry import UPSTREAM_PORT, pointed_at_upstream, start_upstream

PREVIOUS_RELEASE = "e161c5a"  # the last release that ran registry:2.8.3
IP = "127.0.0.168"
DATA = "/var/lib/registry"
INIT = "garbage-collect"
CONFIG = {"hostname": "registry.cube.test", "loadBalancerIp": IP, "retention": {"keepLast": 5}}


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    return declared_by_release(release_tree(tmp_path_factory.mktemp("previous"), PREVIOUS_RELEASE), CONFIG)


def test_an_upgrade_from_registry_2_8_serves_every_image_and_platform_it_served(previous, tmp_path):
    image = previous.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry:2.8.3", image
    before = Pusher(previous, IP, tmp_path / "before")
    with registry_pod(previous, tmp_path / "pod", IP) as old:
        digests = {
            "app:1.0": pushed_ok(before, "app", "1.0", "single platform"),
            "multi:1.0": before.push_index("multi", "1.0", {"amd64": unique_layer("multi amd64"),
                                                            "arm64": unique_layer("multi arm64")}),
            # What `docker buildx build --push` stores by default: the image with its attestation.
            "buildx:1.0": before.push_index("buildx", "1.0", {"arm": unique_layer("buildx arm")}, attestations=True),
        }
        for reference, digest in digests.items():
            assert before.pull(reference, all_platforms=True).returncode == 0
            assert before.pulled_digest(reference) == digest
        stored = volume_bytes(old.volume_path(DATA))
    declared = evaluate(CONFIG)
    after = Pusher(declared, IP, tmp_path / "after")
    with registry_pod(declared, tmp_path / "pod", IP) as new:
        log = new.init_logs[INIT]
        assert "--delete-untagged" not in log and "manifest eligible for deletion" not in log, log
        assert volume_bytes(new.volume_path(DATA)) == stored, "nothing stored was collected"
        for reference, digest in digests.items():
            pulled = after.pull(reference, all_platforms=True)
            assert pulled.returncode == 0, pulled.stderr.decode() + new.log()
            assert after.pulled_digest(reference) == digest, reference
        assert after.pull("app:1.0").returncode == 0
        # And it takes new pushes on the old volume.
        pushed_ok(after, "app", "2.0", "after the upgrade")


CACHE_CONFIG = {"hostname": "registry.cube.test", "loadBalancerIp": "127.0.0.173",
                "mirrors": [{"upstream": "docker.io"}]}
CACHE = "registry-cache-docker-io-deployment"
UPSTREAM_IP = "127.0.0.174"


def test_a_cache_filled_by_registry_2_8_still_serves_after_the_upgrade_with_the_upstream_gone(tmp_path):
    """The previous release's pull-through cache (distribution 2.8 in proxy mode) fetched an image
    from docker.io (a stand-in); after the upgrade, this release's cache (3.1.1) on the same
    volume serves it from its own storage once docker.io is gone, same digest. (Either release
    must reach the upstream when it starts: README, "When things are down".)"""
    previous = declared_by_release(release_tree(tmp_path, PREVIOUS_RELEASE), CACHE_CONFIG)
    declared = evaluate(CACHE_CONFIG)
    assert "registry:2.8.3" in json.dumps(previous.named(CACHE).inputs)
    (port,) = declared.named("registry-cache-docker-io-service").inputs["spec"]["ports"]
    ca = self_signed_cert("upstream.test", ip_addresses=[UPSTREAM_IP])
    upstream = start_upstream(tmp_path / "upstream", UPSTREAM_IP, ca)
    try:
        certs = tmp_path / "upstream-certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(ca.cert_pem)
        layout = build_oci_layout(tmp_path / "image", "1.0", b"cached before the upgrade\n")
        pushed = skopeo_copy(f"oci:{layout}:1.0", f"docker://{UPSTREAM_IP}:{UPSTREAM_PORT}/library/hello:1.0",
                             extra_args=["--dest-cert-dir", str(certs)])
        assert pushed.returncode == 0, pushed.stderr.decode()
        digest = manifest_digest(layout, "1.0")
        with registry_pod(previous, tmp_path / "cache", "127.0.0.173", deployment=CACHE, port=port["port"],
                          **pointed_at_upstream(UPSTREAM_IP, ca.cert_pem)) as old:
            assert pull_through(previous, port["port"], tmp_path / "before") == digest, old.log()
            # A proxy stores what it streamed to the client in the background (registry/proxy
            # proxyblobstore.go, ServeBlob: storeLocal in a goroutine): the pod is stopped only
            # once every blob of the image is on its volume, as a pod that ran on would have it.
            wait_until_stored(old.volume_path(DATA), layout)
        with registry_pod(declared, tmp_path / "cache", "127.0.0.173", deployment=CACHE, port=port["port"],
                          **pointed_at_upstream(UPSTREAM_IP, ca.cert_pem)) as new:
            upstream.stop()
            assert pull_through(declared, port["port"], tmp_path / "after") == digest, new.log()
    finally:
        upstream.stop()


def wait_until_stored(volume: Path, layout: Path, timeout: float = 30) -> None:
    """Until each blob of the OCI layout (manifest, config, layers) is in the volume's blob store."""
    wanted = [volume / "docker/registry/v2/blobs/sha256" / blob.name[:2] / blob.name / "data"
              for blob in (layout / "blobs" / "sha256").iterdir()]
    deadline = time.monotonic() + timeout
    while not all(path.is_file() for path in wanted):
        assert time.monotonic() < deadline, [str(path) for path in wanted if not path.is_file()]
        time.sleep(0.2)


def pull_through(declared, port: int, destination) -> str:
    cert_dir = destination.parent / f"{destination.name}-ca"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    pulled = skopeo_copy(f"docker://127.0.0.173:{port}/library/hello:1.0", f"oci:{destination}:1.0",
                         extra_args=["--src-cert-dir", str(cert_dir), "--src-creds", credentials_of(declared)])
    assert pulled.returncode == 0, pulled.stderr.decode()
    return manifest_digest(destination, "1.0")
