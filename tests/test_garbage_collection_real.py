"""Garbage collection for real: the declared init container (distribution 3's collector, with
the program's script) runs on the registry's volume whenever its pod starts, as the kubelet runs
it, and the real registry then serves what is left.

Each test restarts the registry as the maintenance CronJob does (the pod stops; the new one
collects, then serves) and measures the volume before and after. A push racing that restart
either lands whole or fails, and never leaves a broken image.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
from pathlib import Path

from harness import Evaluation, evaluate
from images import LAYER_BYTES, Pusher, pushed_ok, unique_layer, volume_bytes
from pod import registry_pod, start_registry_pod
from testbed.distribution_api import MEDIA_MANIFEST, RegistryApi, canonical, descriptor
from testbed.registry import REGISTRY_2_8

HOSTNAME = "registry.cube.test"
DATA = "/var/lib/registry"
INIT = "garbage-collect"


def declared_with(ip: str, **config) -> Evaluation:
    return evaluate({"hostname": HOSTNAME, "loadBalancerIp": ip, **config})


def copy_volume(source: Path, target: Path) -> None:
    """The volume's files with their owners and modes (as the pod's user wrote them)."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def test_without_retention_the_collector_frees_what_was_deleted_and_keeps_untagged_images(tmp_path):
    ip = "127.0.0.162"
    declared = declared_with(ip)
    pusher = Pusher(declared, ip, tmp_path)
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        assert "nothing is stored yet" in registry.init_logs[INIT]  # a fresh volume: nothing to do
        replaced = pushed_ok(pusher, "app", "latest", "first build")
        current = pushed_ok(pusher, "app", "latest", "second build")  # `latest` moves on
        deleted = pushed_ok(pusher, "app", "old", "old build")
        removed = subprocess.run(["skopeo", "delete", "--cert-dir", str(pusher.certs), "--creds", pusher.credentials,
                                  f"docker://{ip}:5000/app@{deleted}"], capture_output=True, text=True, check=False)
        assert removed.returncode == 0, removed.stderr
        volume = registry.volume_path(DATA)
        before = volume_bytes(volume)
    with registry_pod(declared, tmp_path / "pod", ip) as restarted:
        after = volume_bytes(volume)
        log = restarted.init_logs[INIT]
        assert "eligible for deletion" in log and "manifest eligible for deletion" not in log, log
        # The deleted image's own layer is gone; the one `latest` left behind stays (no retention).
        assert LAYER_BYTES <= before - after < 2 * LAYER_BYTES, (before, after, log)
        for reference, digest in ((f"app@{replaced}", replaced), ("app:latest", current)):
            assert pusher.pull(reference).returncode == 0
            assert pusher.pulled_digest(reference) == digest
        assert pusher.pull(f"app@{deleted}").returncode != 0
    print(f"\nwithout retention: {before} bytes before, {after} after: {before - after} freed (the deleted image)")


def test_with_retention_the_images_a_moved_tag_left_behind_go_too(tmp_path):
    ip = "127.0.0.163"
    declared = declared_with(ip, retention={"keepLast": 5})
    pusher = Pusher(declared, ip, tmp_path)
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        replaced = {pushed_ok(pusher, "app", "latest", f"build {number}") for number in range(3)}
        current = pushed_ok(pusher, "app", "latest", "build 3")
        volume = registry.volume_path(DATA)
        before = volume_bytes(volume)
    with registry_pod(declared, tmp_path / "pod", ip) as restarted:
        after = volume_bytes(volume)
        log = restarted.init_logs[INIT]
        assert log.count("manifest eligible for deletion") == 3, log
        # Three untagged images: three own layers (and their configs and manifests) freed.
        assert 3 * LAYER_BYTES <= before - after < 4 * LAYER_BYTES, (before, after, log)
        assert pusher.pull("app:latest").returncode == 0
        assert pusher.pulled_digest("app:latest") == current
        for digest in replaced:
            assert pusher.pull(f"app@{digest}").returncode != 0
    print(f"\nwith retention: {before} bytes before, {after} after: {before - after} freed (3 untagged images)")


def test_with_retention_an_image_index_keeps_every_platform_and_what_no_tag_names_goes(tmp_path):
    """distribution 3's collector with --delete-untagged marks what a tagged index lists (its
    platform manifests and their layers) and deletes only what nothing tagged refers to. The same
    volume collected by distribution 2.8's collector (Debian's, the release the program now
    refuses) loses the index's platform manifests: the reason 2.8 is refused."""
    ip, broken_ip = "127.0.0.164", "127.0.0.165"
    declared = declared_with(ip, retention={"keepLast": 5})
    pusher = Pusher(declared, ip, tmp_path)
    platforms = {"amd64": unique_layer("multi amd64"), "arm64": unique_layer("multi arm64")}
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        index = pusher.push_index("multi", "1.0", platforms)
        replaced = pushed_ok(pusher, "app", "latest", "first build")
        current = pushed_ok(pusher, "app", "latest", "second build")
        volume = registry.volume_path(DATA)
        before = volume_bytes(volume)
    leftover = tmp_path / "volume-before"
    copy_volume(volume, leftover)
    with registry_pod(declared, tmp_path / "pod", ip) as restarted:
        log = restarted.init_logs[INIT]
        assert log.count("manifest eligible for deletion") == 1 and replaced in log, log
        after = volume_bytes(volume)
        # The build `latest` left behind: its own layer, config and manifest.
        assert LAYER_BYTES <= before - after < 2 * LAYER_BYTES, (before, after, log)
        pulled = pusher.pull("multi:1.0", all_platforms=True)
        assert pulled.returncode == 0, pulled.stderr.decode()
        assert pusher.pulled_digest("multi:1.0") == index
        assert pusher.pull("app:latest").returncode == 0 and pusher.pulled_digest("app:latest") == current
        assert pusher.pull(f"app@{replaced}").returncode != 0
    print(f"\nan index beside a moved tag: {before} bytes before, {after} after: {before - after} freed")
    collected = subprocess.run(
        [str(REGISTRY_2_8.binary), "garbage-collect", "--delete-untagged", "/dev/stdin"],
        input=f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {leftover}\n",
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.count("manifest eligible for deletion") == 3, collected.stdout  # 2 platforms + app's
    without_collection = declared_with(broken_ip, garbageCollection=False)
    broken = Pusher(without_collection, broken_ip, tmp_path / "broken")
    with registry_pod(without_collection, tmp_path / "broken-pod", broken_ip) as registry:
        claim = registry.volume_path(DATA)
    shutil.rmtree(claim)
    copy_volume(leftover, claim)
    with registry_pod(without_collection, tmp_path / "broken-pod", broken_ip) as registry:
        assert registry.init_logs == {}
        failed = broken.pull("multi:1.0", all_platforms=True)
        assert failed.returncode != 0 and b"manifest unknown" in failed.stderr, failed.stderr.decode()


def test_a_collector_that_fails_leaves_the_registry_serving(tmp_path):
    """A manifest the collector cannot read (its blob's bytes damaged: a disk error, a bad copy)
    stops distribution's collector before it sweeps anything; the registry must still start, and
    the failure must stay on the pod's record: the init container ends with an error once (its
    last state, exit code 1, the collector's error in its log), the kubelet runs it again, and
    that run lets the registry start. The next pod collects again (its emptyDir is new).
    (A manifest whose blob is missing altogether is found before the collector runs: the next
    test.)"""
    ip = "127.0.0.167"
    declared = declared_with(ip, retention={"keepLast": 5})
    pusher = Pusher(declared, ip, tmp_path)
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        kept = pushed_ok(pusher, "app", "1.0", "an intact image")
        damaged = pushed_ok(pusher, "broken", "1.0", "an image whose manifest gets damaged")
        volume = registry.volume_path(DATA)
    hex_digest = damaged.removeprefix("sha256:")
    (volume / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data").write_bytes(b"{damaged")
    before = volume_bytes(volume)
    for start in range(2):
        with registry_pod(declared, tmp_path / "pod", ip) as restarted:
            record = restarted.init_records[INIT]
            assert (record.restarts, record.previous_exit_code) == (1, 1), (start, record)
            assert record.previous_log is not None and "failed to garbage collect" in record.previous_log, record
            assert "the registry starts uncollected once this container has run again" in record.previous_log
            assert "the collector failed at the start of this pod" in record.log, record.log
            assert "failed to garbage collect" not in record.log  # the second run does not collect
            assert volume_bytes(volume) == before  # nothing swept
            assert pusher.pull("app:1.0").returncode == 0
            assert pusher.pulled_digest("app:1.0") == kept


def test_a_push_racing_the_maintenance_restart_lands_whole_or_fails_cleanly(tmp_path):
    ip = "127.0.0.166"
    declared = declared_with(ip, retention={"keepLast": 50})
    pusher = Pusher(declared, ip, tmp_path)
    results: dict[str, tuple[int, str]] = {}  # tag -> (skopeo's exit status, the image's digest)
    stop = threading.Event()

    def push_until_stopped() -> None:
        number = 0
        while not stop.is_set():
            tag = f"race-{number}"
            pushed, digest = pusher.push("race", tag, f"racing build {number}", timeout=60)
            results[tag] = (pushed.returncode, digest)
            number += 1

    def landed() -> int:
        return sum(1 for status, _ in list(results.values()) if status == 0)

    def wait_for(count: int) -> None:
        for _ in range(600):
            if landed() >= count:
                return
            stop.wait(0.1)
        raise AssertionError(f"fewer than {count} pushes landed: {results}")

    workdir = tmp_path / "pod"
    registry = start_registry_pod(declared, workdir, ip)
    pushing = threading.Thread(target=push_until_stopped, daemon=True)
    try:
        pushed_ok(pusher, "race", "latest", "before the window")
        pushed_ok(pusher, "race", "latest", "replaced before the window")  # untagged: collected
        pushing.start()
        wait_for(2)
        registry.stop()  # the kubelet's SIGTERM, mid-push; the new pod collects, then serves
        with registry_pod(declared, workdir, ip) as registry:
            wait_for(landed() + 2)
            stop.set()
            pushing.join(timeout=120)
            log = registry.init_logs[INIT]
            assert "manifest eligible for deletion" in log, log
            failed = [tag for tag, (status, _) in results.items() if status != 0]
            assert failed, f"no push met the restart: {results}"
            stored = pusher.tags("race")
            for tag, (status, digest) in results.items():
                if status == 0:
                    assert tag in stored, tag
                if tag in stored:  # landed, or finished just as the connection went: whole either way
                    pulled = pusher.pull(f"race:{tag}")
                    assert pulled.returncode == 0, (tag, pulled.stderr.decode())
                    assert pusher.pulled_digest(f"race:{tag}") == digest
            # A failed push is simply not there: pushed again, it lands.
            retried, digest = pusher.push("race", failed[0], f"racing build {failed[0].split('-')[1]}")
            assert retried.returncode == 0, retried.stderr.decode()
            assert pusher.pull(f"race:{failed[0]}").returncode == 0
            assert pusher.pulled_digest(f"race:{failed[0]}") == digest
            print(f"\nracing pushes: {len(results) - len(failed)} landed, {len(failed)} failed during the restart")
    finally:
        stop.set()
        registry.stop()



def test_a_repository_pushed_only_by_digest_neither_fails_the_collector_nor_survives_retention(tmp_path):
    """distribution 2.8.3's collector failed the whole run on a repository with no tags at all
    (its Tags().All() error was fatal with --delete-untagged); 3.1.1 passes over it
    (ErrRepositoryUnknown), so the rest is still collected. Such an image is untagged: without
    retention it stays and pulls; with retention its blobs go like any untagged image's."""
    for retention, ip in ((False, "127.0.0.170"), (True, "127.0.0.171")):
        declared = declared_with(ip, **({"retention": {"keepLast": 5}} if retention else {}))
        pusher = Pusher(declared, ip, tmp_path / str(retention))
        api = RegistryApi(f"https://{ip}:5000", pusher.ca_pem, pusher.credentials)
        with registry_pod(declared, tmp_path / f"pod-{retention}", ip) as registry:
            replaced = pushed_ok(pusher, "app", "latest", f"first build {retention}")
            current = pushed_ok(pusher, "app", "latest", f"second build {retention}")
            layer = unique_layer(f"by digest {retention}")
            config = canonical({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
            api.put_blob("pinned", layer)
            api.put_blob("pinned", config)
            manifest = canonical({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                                  "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                                  "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)]})
            pinned = api.put_manifest("pinned", "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest, MEDIA_MANIFEST)
            assert pusher.tags("pinned") == set()
            before = volume_bytes(registry.volume_path(DATA))
        with registry_pod(declared, tmp_path / f"pod-{retention}", ip) as restarted:
            log = restarted.init_logs[INIT]
            assert "the collector failed" not in log and "failed to garbage collect" not in log, log
            after = volume_bytes(restarted.volume_path(DATA))
            assert pusher.pull("app:latest").returncode == 0 and pusher.pulled_digest("app:latest") == current
            if retention:
                assert "manifest tags path of repository pinned does not exist" in log, log
                # The build `latest` left behind and the image pushed by digest: two own layers.
                assert 2 * LAYER_BYTES <= before - after < 3 * LAYER_BYTES, (before, after, log)
                assert pusher.pull(f"app@{replaced}").returncode != 0
                assert api.get_manifest("pinned", pinned)[0] != 200
            else:
                assert before == after, log
                assert api.get_manifest("pinned", pinned)[0] == 200
                assert pusher.pull(f"pinned@{pinned}").returncode == 0


def test_a_manifest_whose_blob_is_missing_costs_no_other_image_of_its_repository(tmp_path):
    """A manifest whose blob has gone from the volume (a bad restore, a disk error): distribution's
    collector stops marking that repository there (PathNotFound) and sweeps the blobs of every
    image of it it had not reached yet. The collection must keep every image it cannot prove
    unreferenced: the pod's collector sees the missing blob first, collects nothing, and says so."""
    ip = "127.0.0.175"
    declared = declared_with(ip)
    pusher = Pusher(declared, ip, tmp_path)
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        intact = {f"{number}.0": pushed_ok(pusher, "app", f"{number}.0", f"image {number}") for number in range(4)}
        lost = pushed_ok(pusher, "app", "lost", "an image whose manifest blob goes")
        volume = registry.volume_path(DATA)
    hex_digest = lost.removeprefix("sha256:")
    shutil.rmtree(volume / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest)
    before = volume_bytes(volume)
    with registry_pod(declared, tmp_path / "pod", ip) as restarted:
        record = restarted.init_records[INIT]
        assert volume_bytes(volume) == before, record
        for tag, digest in intact.items():
            assert pusher.pull(f"app:{tag}").returncode == 0, (tag, record)
            assert pusher.pulled_digest(f"app:{tag}") == digest
        assert record.restarts == 1 and record.previous_log is not None, record
        revision = f"{DATA}/docker/registry/v2/repositories/app/_manifests/revisions/sha256/{hex_digest}"
        assert f"app@{lost}: its blob is missing; restore it, or remove {revision} " in record.previous_log, record
        # What the message tells to do (distribution answers a DELETE of that digest with 404):
        # remove the revision in the registry's container; the next start collects.
        assert restarted.run_inside(["rm", "-r", revision]).returncode == 0
    with registry_pod(declared, tmp_path / "pod", ip) as collected:
        record = collected.init_records[INIT]
        assert record.restarts == 0 and "blob eligible for deletion" in record.log, record
        for tag, digest in intact.items():
            assert pusher.pull(f"app:{tag}").returncode == 0, (tag, record)
            assert pusher.pulled_digest(f"app:{tag}") == digest


def test_an_index_that_lists_a_manifest_the_registry_lacks_is_refused_at_push(tmp_path):
    """Bad input the collector never meets: distribution 3.1.1 refuses an index that lists a
    manifest it does not hold (MANIFEST_BLOB_UNKNOWN), so every stored index has its children
    (one whose child's blob went later is the missing-manifest case above)."""
    ip = "127.0.0.177"
    declared = declared_with(ip, retention={"keepLast": 5})
    pusher = Pusher(declared, ip, tmp_path)
    api = RegistryApi(f"https://{ip}:5000", pusher.ca_pem, pusher.credentials)
    with registry_pod(declared, tmp_path / "pod", ip):
        present = pushed_ok(pusher, "app", "1.0", "a platform image")
        absent = "sha256:" + hashlib.sha256(b"a manifest nobody pushed").hexdigest()
        index = canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": MEDIA_MANIFEST, "digest": present, "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": MEDIA_MANIFEST, "digest": absent, "size": 1,
             "platform": {"architecture": "arm64", "os": "linux"}}]})
        status, _, answer = api.request("PUT", "/v2/app/manifests/2.0", index,
                                        {"Content-Type": "application/vnd.oci.image.index.v1+json"})
        assert status == 400 and b"MANIFEST_BLOB_UNKNOWN" in answer, (status, answer)
        assert pusher.tags("app") == {"1.0"}
