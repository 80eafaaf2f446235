"""Tag retention for real: regbot (built from regclient's module at the CronJob image's release)
runs the program's script, with the declared configuration, environment and arguments, against
the real registry (distribution 3.1.1) started as declared.

The job runs as its pod would: as the image's user, in a mount namespace whose /etc holds only
the hosts file the kubelet writes from the pod's hostAliases and the ConfigMap at its mount
path, with its password taken from the declared Secret. Then the registry restarts, and its
declared init container (distribution's collector) shows what the deletes give back.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import Evaluation, evaluate
from images import LAYER_BYTES, Pusher, credentials_of, tags_of, unique_layer, volume_bytes
from pod import _secret_files, registry_pod, run_job_container
from pulumi_real import toolchain_dir
from testbed.distribution_api import RegistryApi
from testbed.oci import build_oci_image_index, build_oci_layout, manifest_digest, skopeo_copy

HOSTNAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.160"
DRY_RUN_IP = "127.0.0.161"
RETENTION = {"keepLast": 1, "keepDays": 10, "protect": ["latest", "v[0-9]*"]}
CONFIG = {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "retention": RETENTION}
RETENTION_JOB = "registry-retention-cron-job"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
DATA = "/var/lib/registry"
REGBOT_PATH = "/run/image/regbot"


def days_ago(days: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


# tag -> (days old, or None for no date; the image it is: tags naming the same image share its digest)
IMAGES: dict[str, dict[str, tuple[int | None, str]]] = {
    "app": {
        "v1.0.0": (400, "release"),   # protected (v[0-9]*)
        "build-1": (60, "one"),       # goes; `latest` is the same image, so only the tag goes
        "latest": (60, "one"),        # protected
        "build-2": (30, "two"),       # goes with its manifest
        "build-3": (5, "three"),      # the most recent, and younger than 10 days
        "nightly": (None, "undated"), # no date: kept
    },
    "tools": {
        "0.1": (90, "tools"),         # the only tag of its repository: the most recent there
    },
}
EXPECTED_KEPT = {"app": {"v1.0.0", "latest", "build-3", "nightly"}, "tools": {"0.1"}}


@dataclass
class Pushed:
    layout: Path
    digests: dict[str, str]  # "repo:tag" -> manifest digest


def push_images(registry_ip: str, credentials: str, cert_dir: Path, workdir: Path) -> Pushed:
    layout = workdir / "layout"
    digests = {}
    created: dict[str, str | None] = {}
    for repo, tags in IMAGES.items():
        for tag, (age, image) in tags.items():
            key = f"{repo}-{tag}"
            created.setdefault(image, None if age is None else days_ago(age))
            build_oci_layout(layout, key, unique_layer(image), base=[unique_layer("shared base")], created=created[image])
            pushed = skopeo_copy(f"oci:{layout}:{key}", f"docker://{registry_ip}:5000/{repo}:{tag}",
                                 extra_args=["--dest-cert-dir", str(cert_dir), "--dest-creds", credentials])
            assert pushed.returncode == 0, pushed.stderr.decode()
            digests[f"{repo}:{tag}"] = manifest_digest(layout, key)
    assert digests["app:build-1"] == digests["app:latest"]
    return Pushed(layout, digests)


def job_container(evaluation: Evaluation) -> dict:
    (container,) = evaluation.named(RETENTION_JOB).inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def run_job(evaluation: Evaluation, workdir: Path) -> subprocess.CompletedProcess[str]:
    """The declared retention pod, run by regbot as its container would run it: /etc and /run
    are fresh (the kubelet's hosts file, from hostAliases), each volume is copied to its mount
    path with the mode the kubelet gives it and the pod's fsGroup, the user is the pod's."""
    pod = evaluation.named(RETENTION_JOB).inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = job_container(evaluation)
    # kubelet's hosts file for a pod with hostAliases (pkg/kubelet/kubelet_pods.go, hostsEntriesFromHostAliases).
    hosts = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost", "# Entries added by HostAliases."]
    hosts += [f"{alias['ip']}\t{' '.join(alias['hostnames'])}" for alias in pod["hostAliases"]]
    files: dict[str, tuple[bytes | Path, int]] = {"/etc/hosts": (("\n".join(hosts) + "\n").encode(), 0o644)}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            (source,) = [c for c in evaluation.of_type(CONFIG_MAP)
                         if c.outputs["metadata"]["name"] == volume["configMap"]["name"]]
            content = {key: text.encode() for key, text in source.inputs["data"].items()}
            mode = volume["configMap"].get("defaultMode", 0o644)
        else:
            content = _secret_files(evaluation, volume["secret"]["secretName"])
            mode = volume["secret"]["defaultMode"]
        for key, data in content.items():
            files[f"{mount['mountPath']}/{key}"] = (data, mode)
    # regbot, the image's entrypoint, from the release the image carries.
    files[REGBOT_PATH] = (toolchain_dir() / "regbot", 0o755)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"} | {item["name"]: item["value"] for item in container["env"]}
    return run_job_container(workdir, pod=pod, args=[REGBOT_PATH, *container["args"]], files=files,
                             fresh_dirs=["/etc", "/run"], env=env, timeout=300)


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG)


@pytest.fixture(scope="module")
def cert_dir(declared, tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs.d")
    (directory / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    return directory


def test_the_dry_run_lists_what_would_go_and_deletes_nothing(cert_dir, tmp_path):
    dry = evaluate({**CONFIG, "loadBalancerIp": DRY_RUN_IP, "retention": {**RETENTION, "dryRun": True}})
    assert "--dry-run" in job_container(dry)["args"]
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_text(dry.outputs["caCertificatePem"])
    with registry_pod(dry, tmp_path / "pod", DRY_RUN_IP):
        push_images(DRY_RUN_IP, credentials_of(dry), certs, tmp_path)
        ran = run_job(dry, tmp_path / "job")
        assert ran.returncode == 0, ran.stderr
        for repo, tags in IMAGES.items():
            assert tags_of(DRY_RUN_IP, repo, dry.outputs["caCertificatePem"], credentials_of(dry)) == set(tags)
    assert '"delete app:build-1 ' in ran.stderr and '"delete app:build-2 ' in ran.stderr, ran.stderr
    assert "dry-run=true" in ran.stderr and "dry-run=false" not in ran.stderr
    assert '"keep app:latest (protected)"' in ran.stderr
    assert '"keep app:nightly (no creation date)"' in ran.stderr
    assert '"retention: 2 tag(s) to delete"' in ran.stderr


def test_retention_deletes_the_old_tags_keeps_the_rest_whole_and_gc_frees_their_blobs(
    declared, cert_dir, tmp_path
):
    ca_pem = declared.outputs["caCertificatePem"]
    credentials = credentials_of(declared)
    with registry_pod(declared, tmp_path / "pod", REGISTRY_IP) as registry:
        pushed = push_images(REGISTRY_IP, credentials, cert_dir, tmp_path)
        ran = run_job(declared, tmp_path / "job")
        assert ran.returncode == 0, ran.stderr + registry.log()
        for repo, kept in EXPECTED_KEPT.items():
            assert tags_of(REGISTRY_IP, repo, ca_pem, credentials) == kept, ran.stderr
        # The job logged in as its own user, never as the registry's.
        job_users = {line.split("auth.user.name=")[1].split()[0] for line in registry.log().splitlines()
                     if "auth.user.name=" in line and 'useragent="regclient/regbot' in line}
        assert job_users == {"retention"}, job_users
        volume = registry.volume_path(DATA)
        before = volume_bytes(volume)
    # The registry restarts (the maintenance CronJob's restart, or any other): its init container
    # collects, with --delete-untagged since retention is on, before the registry serves again.
    with registry_pod(declared, tmp_path / "pod", REGISTRY_IP) as restarted:
        assert "blob eligible for deletion" in restarted.init_logs["garbage-collect"], restarted.init_logs
        after = volume_bytes(volume)
        # build-2's own layer is gone; build-1's image is `latest`'s and stays.
        freed = before - after
        assert LAYER_BYTES <= freed < 2 * LAYER_BYTES, (before, after, restarted.init_logs)
        print(f"\nretention: volume {before} bytes before garbage collection, {after} after: {freed} freed")
        for repo, kept in EXPECTED_KEPT.items():
            for tag in kept:
                pulled = skopeo_copy(f"docker://{REGISTRY_IP}:5000/{repo}:{tag}", f"oci:{tmp_path / 'pulled'}:{repo}-{tag}",
                                     extra_args=["--src-cert-dir", str(cert_dir), "--src-creds", credentials])
                assert pulled.returncode == 0, pulled.stderr.decode()  # skopeo verifies every digest
                assert manifest_digest(tmp_path / "pulled", f"{repo}-{tag}") == pushed.digests[f"{repo}:{tag}"]


def test_the_job_has_its_own_password_and_never_the_registrys(declared):
    config = declared.one(CONFIG_MAP).inputs["data"]["config.yml"]
    password = declared.outputs["registryPassword"]
    job_password = declared.named("registry-retention-credentials").inputs["stringData"]["password"]
    assert job_password and job_password != password
    job = json.dumps(declared.named(RETENTION_JOB).inputs)
    assert password not in job and job_password not in job
    assert password not in config and job_password not in config  # regbot reads the mounted file


MULTI_IP = "127.0.0.169"
MULTI_RETENTION = {"keepLast": 1, "protect": ["latest"]}


def test_indexes_their_platforms_and_referrers_are_kept_together_and_dated_by_their_images(tmp_path):
    """What buildx, cosign and oras leave in a repository, as a Pi cluster's registry holds it:
    ``latest`` and ``1.0``, one two-platform index with its attestation manifests, the same
    platform images also tagged ``1.0-amd64`` and ``1.0-arm64``, an SBOM about the index (an OCI
    1.1 referrer with ``subject``, pushed by digest, found through the referrers tag schema's
    ``sha256-<hex>``); ``2.0``, a newer index for arm64 and arm only (none for the amd64 node the
    job runs on); ``0.9``, an old single-platform image with a cosign signature
    (``sha256-<hex>.sig``). Retention keeps the most recent image and ``latest``."""
    declared = evaluate({"hostname": HOSTNAME, "loadBalancerIp": MULTI_IP, "retention": MULTI_RETENTION})
    pusher = Pusher(declared, MULTI_IP, tmp_path)
    api = RegistryApi(f"https://{MULTI_IP}:5000", declared.outputs["caCertificatePem"], pusher.credentials)
    with registry_pod(declared, tmp_path / "pod", MULTI_IP) as registry:
        build_oci_image_index(pusher.layout, "1.0", {"amd64": unique_layer("1.0 amd64"), "arm64": unique_layer("1.0 arm64")},
                              attestations=True, created=days_ago(60), platform_tags=True)
        index_1 = manifest_digest(pusher.layout, "1.0")
        platforms_1 = {arch: manifest_digest(pusher.layout, f"1.0-{arch}") for arch in ("amd64", "arm64")}
        for tag, source, all_platforms in (("1.0", "1.0", True), ("latest", "1.0", True),
                                           ("1.0-amd64", "1.0-amd64", False), ("1.0-arm64", "1.0-arm64", False)):
            pusher.push_layout(source, "app", tag, all_platforms=all_platforms)
        index_2 = pusher.push_index("app", "2.0", {"arm64": unique_layer("2.0 arm64"), "arm": unique_layer("2.0 arm")},
                                    created=days_ago(5))
        build_oci_layout(pusher.layout, "0.9", unique_layer("0.9"), created=days_ago(90))
        old = pusher.push_layout("0.9", "app", "0.9")
        subject_1 = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_1,
                     "size": len((pusher.layout / "blobs/sha256" / index_1.removeprefix("sha256:")).read_bytes())}
        sbom = api.push_artifact("app", "application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}', subject_1)
        sbom_tag = api.push_referrers_tag("app", index_1, [sbom])
        subject_old = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": old,
                       "size": len((pusher.layout / "blobs/sha256" / old.removeprefix("sha256:")).read_bytes())}
        signature_tag = old.replace(":", "-") + ".sig"
        signature = api.push_artifact("app", "application/vnd.dev.cosign.simplesigning.v1+json",
                                      b'{"critical": {}}', subject_old, reference=signature_tag)
        ran = run_job(declared, tmp_path / "job")
        assert ran.returncode == 0, ran.stderr + registry.log()
        assert '"keep app:2.0 (among the 1 most recent)"' in ran.stderr, ran.stderr  # dated by its arm images
        assert f'"keep app:{sbom_tag} (its subject {index_1} is kept)"' in ran.stderr, ran.stderr
        assert pusher.tags("app") == {"latest", "2.0", sbom_tag}, ran.stderr
        before = volume_bytes(registry.volume_path(DATA))
    with registry_pod(declared, tmp_path / "pod", MULTI_IP) as restarted:
        log = restarted.init_logs["garbage-collect"]
        after = volume_bytes(restarted.volume_path(DATA))
        # 0.9 and its signature go: its own layer, config and manifest, the signature's blobs.
        assert LAYER_BYTES <= before - after < 2 * LAYER_BYTES, (before, after, log)
        for reference, digest in (("app:latest", index_1), ("app:2.0", index_2)):
            pulled = pusher.pull(reference, all_platforms=True)  # every platform, every digest verified
            assert pulled.returncode == 0, pulled.stderr.decode() + log
            assert pusher.pulled_digest(reference) == digest
        for digest in platforms_1.values():
            assert pusher.pull(f"app@{digest}").returncode == 0, log  # listed by `latest`: kept
        assert api.get_manifest("app", sbom["digest"])[0] == 200, log  # its subject stays: so does it
        assert pusher.pull(f"app@{old}").returncode != 0
        assert api.get_manifest("app", signature["digest"])[0] == 404
    print(f"\nindexes and referrers: {before} bytes before, {after} after: {before - after} freed (0.9 and its signature)")


def test_a_tag_whose_manifest_cannot_be_read_is_kept_and_said(tmp_path):
    """Bad input: the job keeps what it cannot look at (a manifest whose bytes were damaged on
    the volume), says so in its log, and decides the rest as usual."""
    ip = "127.0.0.176"
    declared = evaluate({"hostname": HOSTNAME, "loadBalancerIp": ip, "retention": {"keepLast": 1, "protect": []}})
    pusher = Pusher(declared, ip, tmp_path)
    with registry_pod(declared, tmp_path / "pod", ip) as registry:
        for number, age in ((1, 30), (2, 20), (3, 10)):
            build_oci_layout(pusher.layout, f"{number}.0", unique_layer(f"build {number}"), created=days_ago(age))
            pusher.push_layout(f"{number}.0", "app", f"{number}.0")
        damaged = manifest_digest(pusher.layout, "1.0").removeprefix("sha256:")
        blob = registry.volume_path(DATA) / "docker/registry/v2/blobs/sha256" / damaged[:2] / damaged / "data"
        blob.write_bytes(b"{damaged")
        ran = run_job(declared, tmp_path / "job")
        assert ran.returncode == 0, ran.stderr + registry.log()
        assert '"keep app:1.0 (its manifest cannot be read: ' in ran.stderr, ran.stderr
        assert '"keep app:3.0 (among the 1 most recent)"' in ran.stderr and '"delete app:2.0 ' in ran.stderr
        assert pusher.tags("app") == {"1.0", "3.0"}
