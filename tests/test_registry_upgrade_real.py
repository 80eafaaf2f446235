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

import pytest
from releases import declared_by_release, release_tree

from harness import evaluate
from images import Pusher, pushed_ok, unique_layer, volume_bytes
from pod import registry_pod

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
