"""From the manual guide's registry to ours on the same volume, with the real registry (distribution 2.8).

(a) The guide's registry runs as its docker.yaml runs it (below, verbatim): as root (registry:2
    has no USER and the pod no securityContext), plain TLS with its own self-signed certificate,
    no authentication, the claim's ``registry`` directory (``subPath``) at /var/lib/registry, the
    storage root of registry:2's default config. An image is pushed to it, then it stops.
(b) The kubelet sets up the volume for our pod's fsGroup (``apply_fs_group``, a transcription
    of its code): the guide left every file root:root.
(c) Our registry starts exactly as the captured Deployment and Secret declare it with
    ``existingClaim``: uid 10001, read-only root, auth on; the same directory is the claim.
(d) With our credentials the guide's image is there, by tag and by digest, with the digest it
    was pushed with; a new image is pushed; the catalog lists both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import evaluate
from pod import kubelet_sub_path, registry_pod, registry_pod_settings
from testbed.certs import self_signed_cert
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.registry import HostDir, apply_fs_group, image_for, start_registry
from testbed.sshnodes import start_node

GUIDE_CLAIM = "longhorn-docker-registry-pvc"
# The manual guide's docker.yaml, as written there.
GUIDE_DEPLOYMENT = yaml.safe_load("""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: registry
  namespace: docker-registry
spec:
  replicas: 1
  selector:
    matchLabels:
      app: registry
  template:
    metadata:
      labels:
        app: registry
        name: registry
    spec:
      nodeSelector:
        node-type: worker
      containers:
      - name: registry
        image: registry:2
        ports:
        - containerPort: 5000
        env:
        - name: REGISTRY_HTTP_TLS_CERTIFICATE
          value: "/certs/tls.crt"
        - name: REGISTRY_HTTP_TLS_KEY
          value: "/certs/tls.key"
        volumeMounts:
        - name: lv-storage
          mountPath: /var/lib/registry
          subPath: registry
        - name: certs
          mountPath: /certs
      volumes:
        - name: lv-storage
          persistentVolumeClaim:
            claimName: longhorn-docker-registry-pvc
        - name: certs
          secret:
            secretName: docker-registry-tls-cert
""")

# This file's loopback addresses (other tests use other ones).
GUIDE_IP = "127.0.0.211"
REGISTRY_IP = "127.0.0.212"
CLIENT_IP = "127.0.0.213"
HOSTNAME = "registry.cube.test"
CONFIG = {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "existingClaim": GUIDE_CLAIM}
GUIDE_IMAGE = "my-ubuntu"  # the guide's own example
NEW_IMAGE = "apps/after-migration"


def start_guide_registry(workdir: Path, claim: Path, tls_files: dict[str, bytes]):
    """The guide's pod, read off its Deployment: env, mounts (with subPath), no securityContext."""
    pod = GUIDE_DEPLOYMENT["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "securityContext" not in pod and "securityContext" not in container, "the guide's registry runs as root"
    sources = {volume["name"]: volume for volume in pod["volumes"]}
    volumes: dict = {}
    for mount in container["volumeMounts"]:
        source = sources[mount["name"]]
        if "secret" in source:
            assert source["secret"]["secretName"] == "docker-registry-tls-cert"
            volumes[mount["mountPath"]] = tls_files
        else:
            assert source["persistentVolumeClaim"]["claimName"] == GUIDE_CLAIM
            volumes[mount["mountPath"]] = HostDir(kubelet_sub_path(claim, mount.get("subPath", "")))
    port = container["ports"][0]["containerPort"]
    env = {item["name"]: item["value"] for item in container["env"]}
    return start_registry(workdir, listen_ip=GUIDE_IP, port=port, env=env, volumes=volumes,
                          image=image_for(container["image"]))


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG)


@pytest.fixture(scope="module")
def claim(tmp_path_factory):
    """The claim's volume as Longhorn hands it out: a fresh ext4 root, root:root 0755."""
    volume = tmp_path_factory.mktemp("claim") / "volume"
    volume.mkdir(mode=0o755)
    (volume / "lost+found").mkdir(mode=0o700)
    os.chown(volume, 0, 0)
    volume.chmod(0o755)
    return volume


@pytest.fixture(scope="module")
def client(client_key, tmp_path_factory):
    """Where skopeo runs: a machine of its own (private /etc and /var/lib), like a laptop."""
    node = start_node(
        "laptop", CLIENT_IP, tmp_path_factory.mktemp("laptop"),
        hosts_content=b"127.0.0.1 localhost laptop\n", authorized_pubkey=client_key.public_key_line,
    )
    yield node
    node.stop()


@pytest.fixture(scope="module")
def guide_push(claim, client, tmp_path_factory):
    """(a) The guide's registry on the claim; an image pushed to it as the guide did (no login)."""
    work = tmp_path_factory.mktemp("guide")
    pair = self_signed_cert(HOSTNAME, dns_names=[HOSTNAME], ip_addresses=[GUIDE_IP])
    (work / "certs").mkdir()
    (work / "certs" / "ca.crt").write_bytes(pair.cert_pem)
    layout = build_oci_layout(work / "image", "latest", b"pushed to the guide's registry\n")
    guide = start_guide_registry(work / "pod", claim, {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem})
    try:
        pushed = skopeo_copy(
            f"oci:{layout}:latest", f"docker://{GUIDE_IP}:5000/{GUIDE_IMAGE}:latest",
            extra_args=["--dest-cert-dir", str(work / "certs")], run=client.run_local,
        )
        assert pushed.returncode == 0, pushed.stderr.decode() + guide.log()
    finally:
        guide.stop()
    return manifest_digest(layout, "latest")


def storage_tree(claim: Path) -> Path:
    return claim / "registry" / "docker" / "registry" / "v2"


def test_the_guides_registry_left_its_images_root_owned_in_the_claims_registry_directory(claim, guide_push):
    repository = storage_tree(claim) / "repositories" / GUIDE_IMAGE
    assert repository.is_dir()
    entries = [claim, *claim.rglob("*")]
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in entries} == {(0, 0)}
    assert all(stat.S_IMODE(os.lstat(p).st_mode) & 0o020 == 0 for p in entries), "no group write anywhere yet"


@pytest.fixture(scope="module")
def fs_group(declared, claim, guide_push):
    """(b) What the kubelet does to the claim before our pod starts, from the declared pod spec."""
    pod = declared.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]
    group = pod["securityContext"]["fsGroup"]
    policy = pod["securityContext"]["fsGroupChangePolicy"]
    assert apply_fs_group(claim, group, change_policy=policy) is True, "root:root does not match: the kubelet walks"
    return group, policy


def test_the_kubelet_gives_the_volume_to_the_fs_group_once(claim, fs_group):
    group, policy = fs_group
    for path in [claim, *claim.rglob("*")]:
        info = os.lstat(path)
        assert info.st_uid == 0 and info.st_gid == group, path
        wanted = 0o2770 if stat.S_ISDIR(info.st_mode) else 0o660
        assert stat.S_IMODE(info.st_mode) & wanted == wanted, f"{path}: {oct(info.st_mode)}"
    assert apply_fs_group(claim, group, change_policy=policy) is False, "OnRootMismatch: the next pod start skips it"


@pytest.fixture(scope="module")
def registry(declared, claim, fs_group, tmp_path_factory):
    """(c) Our registry from the captured manifests, the claim being the guide's volume."""
    with registry_pod(declared, tmp_path_factory.mktemp("registry-pod"), REGISTRY_IP, claims={GUIDE_CLAIM: claim}) as running:
        yield running


def test_our_registry_runs_as_declared_on_the_guides_volume(registry, declared, claim):
    settings = registry_pod_settings(declared, {GUIDE_CLAIM: claim})
    assert settings["run_as_uid"] == 10001 and settings["read_only_root"] is True
    assert settings["volumes"]["/var/lib/registry"] == HostDir(claim / "registry")
    assert registry.volume_path("/var/lib/registry") == (claim / "registry").resolve()
    assert registry.run_inside(["touch", "/probe"]).returncode != 0, "the root filesystem must be read-only"
    assert registry.run_inside(["id", "-u"]).stdout.strip() == b"10001"


@pytest.fixture(scope="module")
def credentials(declared):
    return f"{declared.outputs['registryUsername']}:{declared.outputs['registryPassword']}"


@pytest.fixture(scope="module")
def cert_dir(declared, tmp_path_factory):
    directory = tmp_path_factory.mktemp("our-ca")
    (directory / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    return directory


def skopeo(client, *argv: str):
    return client.run_local(["skopeo", *argv])


def test_the_guides_image_is_pulled_by_tag_with_the_digest_it_was_pushed_with(
    registry, client, guide_push, credentials, cert_dir
):
    raw = skopeo(client, "inspect", "--raw", "--creds", credentials, "--cert-dir", str(cert_dir),
                 f"docker://{REGISTRY_IP}:5000/{GUIDE_IMAGE}:latest")
    assert raw.returncode == 0, raw.stderr.decode() + registry.log()
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == guide_push


def test_the_guides_image_is_pulled_by_digest(registry, client, guide_push, credentials, cert_dir, tmp_path):
    pulled = skopeo_copy(
        f"docker://{REGISTRY_IP}:5000/{GUIDE_IMAGE}@{guide_push}", f"oci:{tmp_path / 'pulled'}:pulled",
        extra_args=["--src-creds", credentials, "--src-cert-dir", str(cert_dir)], run=client.run_local,
    )
    assert pulled.returncode == 0, pulled.stderr.decode() + registry.log()
    assert manifest_digest(tmp_path / "pulled", "pulled") == guide_push


def test_without_credentials_the_guides_image_is_refused(registry, client, guide_push, cert_dir):
    anonymous = skopeo(client, "inspect", "--raw", "--cert-dir", str(cert_dir),
                       f"docker://{REGISTRY_IP}:5000/{GUIDE_IMAGE}:latest")
    assert anonymous.returncode != 0
    assert b"authentication required" in anonymous.stderr or b"401" in anonymous.stderr, anonymous.stderr


def test_a_new_image_is_pushed_next_to_the_guides_and_the_catalog_lists_both(
    registry, client, guide_push, fs_group, credentials, cert_dir, claim, tmp_path, declared
):
    layout = build_oci_layout(tmp_path / "image", "1.0", b"pushed after the migration\n")
    pushed = skopeo_copy(
        f"oci:{layout}:1.0", f"docker://{REGISTRY_IP}:5000/{NEW_IMAGE}:1.0",
        extra_args=["--dest-cert-dir", str(cert_dir), "--dest-creds", credentials], run=client.run_local,
    )
    assert pushed.returncode == 0, pushed.stderr.decode() + registry.log()
    catalog = https_get("/v2/_catalog", declared.outputs["caCertificatePem"], credentials)
    assert catalog == {"repositories": sorted([GUIDE_IMAGE, NEW_IMAGE])}
    new_repository = storage_tree(claim) / "repositories" / NEW_IMAGE
    assert new_repository.is_dir(), "the new image lands in the guide's storage tree"
    assert os.stat(new_repository).st_uid == 10001 and os.stat(new_repository).st_gid == fs_group[0]


def https_get(path: str, ca_pem: str, credentials: str) -> dict:
    context = ssl.create_default_context(cadata=ca_pem)
    request = urllib.request.Request(
        f"https://{REGISTRY_IP}:5000{path}",
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
    )
    # Straight to the loopback address, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"GET {path}: {error.code} {error.read()!r}") from error
