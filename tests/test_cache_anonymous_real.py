"""An anonymous cache (``anonymous: true``) with the real registry: it serves nodes without
credentials, so a pod's imagePullSecret no longer sends its pulls past the cache.

With an imagePullSecret, the kubelet hands containerd the pod's credentials, and containerd's
CRI uses them, and only them, for every host it tries (containerd pkg/cri/server/image_pull.go,
registryHosts: ``hostauth := auth``, the request's, before the configured one; ParseAuth
returns them for any host when the kubelet leaves ServerAddress empty; k3s-io/k3s#8026).
Like containerd's resolver, skopeo sends credentials only in answer to a 401 challenge: a
client holding a pull secret's credentials is what both caches see here. The password cache
answers 401 to them (containerd then goes on to the upstream); the anonymous cache serves the
image. Both caches proxy the same stand-in upstream (TLS with its own CA, open to anonymous
pulls, as Docker Hub is for public images), started from exactly what the program declares.
Who may reach the anonymous cache (the Service's source ranges, the NetworkPolicy) is
kube-proxy's and kube-router's to enforce; tests/test_cache_graph.py checks what is declared.
"""

from __future__ import annotations

import pytest

from harness import evaluate
from pod import registry_pod
from testbed.certs import self_signed_cert
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.registry import UPSTREAM_PORT, pointed_at_upstream, start_upstream

CACHE_IP = "127.0.0.231"
UPSTREAM_IP = "127.0.0.232"
HOSTNAME = "registry.anonymous.test"
CONFIG = {
    "hostname": HOSTNAME,
    "loadBalancerIp": CACHE_IP,
    "nodes": [{"name": "anon01", "host": "127.0.0.233", "role": "agent"}],
    "mirrors": [{"upstream": "docker.io", "anonymous": True}, {"upstream": "ghcr.io"}],
}
ANONYMOUS, PROTECTED = "registry-cache-docker-io", "registry-cache-ghcr-io"
IMAGE = "library/hello:1.0"
# What a pod's imagePullSecret holds: credentials for some registry, not for our caches.
PULL_SECRET = "ci-bot:token-for-another-registry"


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG)


@pytest.fixture(scope="module")
def upstream_ca():
    return self_signed_cert("upstream.test", ip_addresses=[UPSTREAM_IP])


@pytest.fixture(scope="module")
def upstream_digest(upstream_ca, tmp_path_factory):
    running = start_upstream(tmp_path_factory.mktemp("upstream"), UPSTREAM_IP, upstream_ca)
    certs = tmp_path_factory.mktemp("upstream-certs")
    (certs / "ca.crt").write_bytes(upstream_ca.cert_pem)
    layout = build_oci_layout(tmp_path_factory.mktemp("image") / "hello", "1.0", b"public, through the cache\n")
    pushed = skopeo_copy(f"oci:{layout}:1.0", f"docker://{UPSTREAM_IP}:{UPSTREAM_PORT}/{IMAGE}",
                         extra_args=["--dest-cert-dir", str(certs)])
    assert pushed.returncode == 0, pushed.stderr.decode() + running.log()
    yield manifest_digest(layout, "1.0")
    running.stop()


def service_port(declared, cache: str) -> int:
    (port,) = declared.named(f"{cache}-service").inputs["spec"]["ports"]
    return port["port"]


@pytest.fixture(scope="module")
def caches(declared, upstream_digest, upstream_ca, tmp_path_factory):
    """Both caches, each from its declared Deployment; only the upstream's address and CA changed."""
    upstream = pointed_at_upstream(UPSTREAM_IP, upstream_ca.cert_pem)
    with registry_pod(declared, tmp_path_factory.mktemp("anonymous"), CACHE_IP, deployment=f"{ANONYMOUS}-deployment",
                      port=service_port(declared, ANONYMOUS), **upstream) as anonymous, \
         registry_pod(declared, tmp_path_factory.mktemp("protected"), CACHE_IP, deployment=f"{PROTECTED}-deployment",
                      port=service_port(declared, PROTECTED), **upstream) as protected:
        yield {ANONYMOUS: anonymous, PROTECTED: protected}


@pytest.fixture(scope="module")
def cert_dir(declared, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ca")
    (directory / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    return directory


def pull(declared, cache: str, cert_dir, destination, *creds: str):
    reference = f"docker://{CACHE_IP}:{service_port(declared, cache)}/{IMAGE}"
    return skopeo_copy(reference, f"oci:{destination}:1.0",
                       extra_args=["--src-cert-dir", str(cert_dir), *(["--src-creds", creds[0]] if creds else [])])


def test_the_anonymous_cache_serves_a_node_without_credentials(caches, declared, cert_dir, upstream_digest, tmp_path):
    pulled = pull(declared, ANONYMOUS, cert_dir, tmp_path / "image")
    assert pulled.returncode == 0, pulled.stderr.decode() + caches[ANONYMOUS].log()
    assert manifest_digest(tmp_path / "image", "1.0") == upstream_digest


def test_a_pods_pull_secret_is_refused_by_the_password_cache_and_served_by_the_anonymous_one(
        caches, declared, cert_dir, upstream_digest, tmp_path):
    refused = pull(declared, PROTECTED, cert_dir, tmp_path / "protected", PULL_SECRET)
    assert refused.returncode != 0 and b"unauthorized" in refused.stderr.lower(), refused.stderr
    served = pull(declared, ANONYMOUS, cert_dir, tmp_path / "anonymous", PULL_SECRET)
    assert served.returncode == 0, served.stderr.decode() + caches[ANONYMOUS].log()
    assert manifest_digest(tmp_path / "anonymous", "1.0") == upstream_digest


def test_the_password_cache_still_serves_its_own_credentials(caches, declared, cert_dir, upstream_digest, tmp_path):
    """Guards the refusal above: it is the credentials, not the cache, that failed."""
    credentials = f"{declared.outputs['registryUsername']}:{declared.outputs['registryPassword']}"
    pulled = pull(declared, PROTECTED, cert_dir, tmp_path / "image", credentials)
    assert pulled.returncode == 0, pulled.stderr.decode() + caches[PROTECTED].log()


def test_nobody_pushes_to_the_anonymous_cache(caches, declared, cert_dir, tmp_path):
    layout = build_oci_layout(tmp_path / "mine", "1.0", b"not for a cache\n")
    pushed = skopeo_copy(f"oci:{layout}:1.0", f"docker://{CACHE_IP}:{service_port(declared, ANONYMOUS)}/mine:1.0",
                         extra_args=["--dest-cert-dir", str(cert_dir)])
    assert pushed.returncode != 0 and b"unsupported" in pushed.stderr.lower(), pushed.stderr
