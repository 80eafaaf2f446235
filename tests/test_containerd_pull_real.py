"""A real containerd pulls through what the program writes on a node.

The chain, each link real except one: the program's k3s step writes registries.yaml on a real
test host (sshd); rancher/wharfie's parser (k3s's own, built by scripts/toolchain) reads it;
tests/testbed/k3s_containerd.py turns that into containerd's hosts.toml files and the CRI
plugin's credentials the way k3s's agent does (a transcription: k3s's module cannot be built
here, see there); Debian's containerd (1.6, the CRI plugin k3s embeds) runs in the node's
namespaces, so it resolves the registry's name with the node's /etc/hosts; and crictl asks it
for images exactly as the kubelet does (CRI PullImage; ``--creds`` is a pod's imagePullSecret,
sent with no server address, as the kubelet sends it). The registry and its caches run from
their declared Deployments (the caches' upstream is a stand-in docker.io, open to anonymous
pulls like Docker Hub's public images). When containerd gives up on a cache it falls back to
the upstream's own endpoint (registry-1.docker.io, quay.io), which the node's /etc/hosts puts
where nothing listens: a pull that bypassed the cache fails here.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness import evaluate
from nodebed import NodeSpec, run_phase, running_nodes, units_for
from pod import registry_pod
from pulumi_real import toolchain_dir
from testbed.certs import self_signed_cert
from testbed.k3s_containerd import registry_auth_toml, write_hosts_dir
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.registry import UPSTREAM_PORT, pointed_at_upstream, start_upstream

HOSTNAME = "registry.pull.test"
REGISTRY_IP = "127.0.0.241"
NODE_IP = "127.0.0.242"
UPSTREAM_IP = "127.0.0.243"
NOWHERE_IP = "127.0.0.244"
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
CONFIG = {
    "hostname": HOSTNAME,
    "loadBalancerIp": REGISTRY_IP,
    "nodes": [{"name": "pull01", "host": NODE_IP, "role": "agent"}],
    # docker.io through an anonymous cache, quay.io through a password-protected one.
    "mirrors": [{"upstream": "docker.io", "anonymous": True}, {"upstream": "quay.io"}],
}
PRIVATE_PATH = "apps/hello:1.0"
PUBLIC_PATH = "library/hello:1.0"
PULL_SECRET = "ci-bot:token-for-another-registry"


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG)


def address(declared, upstream: str | None = None) -> str:
    """``host:port`` of the registry, or of the cache of ``upstream``, as the program declared it."""
    return declared.outputs["registryAddress"] if upstream is None else declared.outputs["mirrors"][upstream]


def service_port(declared, name: str) -> int:
    (port,) = declared.named(f"{name}-service").inputs["spec"]["ports"]
    return port["port"]


@pytest.fixture(scope="module")
def private_image(declared):
    return f"{address(declared)}/{PRIVATE_PATH}"


@pytest.fixture(scope="module")
def node(declared, client_key, tmp_path_factory):
    # The upstreams' own endpoints, where containerd falls back to, on a loopback address where
    # nothing listens: the fallback fails at once, and no lookup leaves the machine.
    hosts = f"127.0.0.1\tlocalhost\n{REGISTRY_IP}\t{HOSTNAME}\n{NOWHERE_IP}\tregistry-1.docker.io quay.io\n".encode()
    with running_nodes([NodeSpec("pull01", NODE_IP, hosts, units=units_for("agent"))], client_key,
                       tmp_path_factory.mktemp) as nodes:
        run_phase(declared, nodes.values(), "create", client_key)
        yield nodes["pull01"]


@pytest.fixture(scope="module")
def upstream_ca():
    return self_signed_cert("upstream.test", ip_addresses=[UPSTREAM_IP])


@pytest.fixture(scope="module")
def images(declared, upstream_ca, tmp_path_factory):
    """The registry and both caches, from their declared Deployments; an image in the registry
    and one in the stand-in upstream. Returns the digests by name."""
    upstream = start_upstream(tmp_path_factory.mktemp("upstream"), UPSTREAM_IP, upstream_ca)
    pointed = pointed_at_upstream(UPSTREAM_IP, upstream_ca.cert_pem)
    certs = tmp_path_factory.mktemp("certs")
    (certs / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    (certs / "upstream.crt").write_bytes(upstream_ca.cert_pem)
    try:
        with registry_pod(declared, tmp_path_factory.mktemp("registry"), REGISTRY_IP,
                          deployment="registry-deployment") as registry, \
             registry_pod(declared, tmp_path_factory.mktemp("docker-io"), REGISTRY_IP,
                          deployment="registry-cache-docker-io-deployment",
                          port=service_port(declared, "registry-cache-docker-io"), **pointed), \
             registry_pod(declared, tmp_path_factory.mktemp("quay-io"), REGISTRY_IP,
                          deployment="registry-cache-quay-io-deployment",
                          port=service_port(declared, "registry-cache-quay-io"), **pointed):
            private = build_oci_layout(tmp_path_factory.mktemp("private") / "hello", "1.0", b"built on a laptop\n")
            credentials = f"{declared.outputs['registryUsername']}:{declared.outputs['registryPassword']}"
            destination = f"docker://{REGISTRY_IP}:{service_port(declared, 'registry')}/{PRIVATE_PATH}"
            pushed = skopeo_copy(f"oci:{private}:1.0", destination,
                                 extra_args=["--dest-cert-dir", str(certs), "--dest-creds", credentials])
            assert pushed.returncode == 0, pushed.stderr.decode() + registry.log()
            public = build_oci_layout(tmp_path_factory.mktemp("public") / "hello", "1.0", b"a public image\n")
            pushed = skopeo_copy(f"oci:{public}:1.0", f"docker://{UPSTREAM_IP}:{UPSTREAM_PORT}/{PUBLIC_PATH}",
                                 extra_args=["--dest-cert-dir", str(certs)])
            assert pushed.returncode == 0, pushed.stderr.decode() + upstream.log()
            yield {"private": manifest_digest(private, "1.0"), "public": manifest_digest(public, "1.0")}
    finally:
        upstream.stop()


class Containerd:
    """Debian's containerd in the node's mount and UTS namespaces, configured as k3s would."""

    def __init__(self, node, workdir: Path, registry: dict):
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        certs = workdir / "certs.d"
        self.hosts = write_hosts_dir(registry, certs)
        config = workdir / "config.toml"
        config.write_text(f"""\
version = 2
root = "{workdir}/root"
state = "{workdir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{workdir}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs}"
{registry_auth_toml(registry)}""")
        self.log_path = workdir / "containerd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["nsenter", f"--target={node.pid}", "--mount", "--uts", "--", "containerd", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.crictl("images").returncode != 0:
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def crictl(self, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(toolchain_dir() / "crictl"), "--image-endpoint", f"unix://{self.socket}",
                               "--timeout", "60s", *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def pull(self, image: str, pull_secret: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.crictl("pull", *(["--creds", pull_secret] if pull_secret else []), image)

    def digest_of(self, image: str) -> str:
        status = json.loads(self.crictl("inspecti", "-o", "json", image).stdout)["status"]
        return next(d.split("@", 1)[1] for d in status["repoDigests"])

    def forget(self, image: str) -> None:
        self.crictl("rmi", image)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def containerd(node, images, tmp_path_factory):
    read = subprocess.run([str(toolchain_dir() / "wharfie-registries"), "/dev/stdin"],
                          input=node.read_file(REGISTRIES), capture_output=True, check=False)
    assert read.returncode == 0, read.stderr.decode()
    running = Containerd(node, tmp_path_factory.mktemp("containerd"), json.loads(read.stdout))
    yield running
    running.stop()


def test_the_hosts_configuration_is_what_k3s_derives_from_the_file(containerd, node, declared):
    """Guards the pulls below: containerd got our CA for the registry and both caches, and
    credentials only where registries.yaml has them."""
    document = yaml.safe_load(node.read_file(REGISTRIES))
    registry, docker_io, quay_io = address(declared), address(declared, "docker.io"), address(declared, "quay.io")
    ca_file = document["configs"][registry]["tls"]["ca_file"]
    assert set(containerd.hosts) == {registry, docker_io, quay_io, "docker.io", "quay.io"}
    assert f'[host."https://{docker_io}/v2"]' in containerd.hosts["docker.io"]
    assert f'ca = ["{ca_file}"]' in containerd.hosts["docker.io"]
    assert 'server = "https://registry-1.docker.io/v2"' in containerd.hosts["docker.io"]
    assert "auth" not in document["configs"][docker_io] and "auth" in document["configs"][quay_io]


def test_containerd_pulls_the_private_image_with_the_nodes_credentials_and_ca(containerd, images, private_image):
    pulled = containerd.pull(private_image)
    assert pulled.returncode == 0, pulled.stderr + containerd.log()
    assert containerd.digest_of(private_image) == images["private"]
    containerd.forget(private_image)


def test_a_pull_secret_of_the_registrys_own_user_pulls_it_too(containerd, declared, images, private_image):
    secret = f"{declared.outputs['registryUsername']}:{declared.outputs['registryPassword']}"
    pulled = containerd.pull(private_image, secret)
    assert pulled.returncode == 0, pulled.stderr + containerd.log()
    containerd.forget(private_image)


@pytest.mark.parametrize("pull_secret", [None, PULL_SECRET], ids=["without-pull-secret", "with-pull-secret"])
def test_a_public_image_comes_through_the_anonymous_cache(containerd, images, pull_secret):
    image = f"docker.io/{PUBLIC_PATH}"
    pulled = containerd.pull(image, pull_secret)
    assert pulled.returncode == 0, pulled.stderr + containerd.log()
    assert containerd.digest_of(image) == images["public"]
    containerd.forget(image)


def test_the_password_protected_cache_serves_nodes_but_a_pull_secret_bypasses_it(containerd, images, declared):
    """Why anonymous caches exist (k3s-io/k3s#8026): with the pod's secret, containerd sends it
    to the cache, which refuses it, and falls back to the upstream (here: no internet)."""
    image = f"quay.io/{PUBLIC_PATH}"
    pulled = containerd.pull(image)
    assert pulled.returncode == 0, pulled.stderr + containerd.log()
    assert containerd.digest_of(image) == images["public"]
    containerd.forget(image)
    bypassed = containerd.pull(image, PULL_SECRET)
    assert bypassed.returncode != 0, "the cache refused the pod's secret; only the upstream was left"
    assert f"pulling from host {address(declared, 'quay.io')} failed with status code [manifests 1.0]: 401" in bypassed.stderr, \
        bypassed.stderr
