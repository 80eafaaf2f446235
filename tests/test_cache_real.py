"""A pull-through cache with the real registry (distribution 3.1.1 in proxy mode), started from
exactly what the program declares for it.

The stand-in upstream plays docker.io: a second real registry on its own loopback address with
its own CA, holding ``library/hello:1.0``, behind a token server (Docker Hub's auth scheme) that
grants tokens only to one user (like an authenticated Docker Hub or a quay.io robot account).
distribution hands its upstream credentials only to a token realm, and since 3.1 only to one
under the upstream's own registrable domain (see testbed/token_auth.py), which is what public
registries use: the stand-in is ``registry-1.upstream.test`` with its realm at
``auth.upstream.test``, names the cache's container resolves to the stand-in's address as the
cluster's DNS resolves docker.io's. The cache runs from its captured Deployment, the TLS and htpasswd
Secrets it mounts and the upstream Secret its secretKeyRefs name (resolved as the kubelet
would). The test changes exactly two things in its environment, both about where the upstream
is: ``REGISTRY_PROXY_REMOTEURL`` points at the stand-in instead of registry-1.docker.io, and
``SSL_CERT_FILE`` names a bundle with the stand-in's CA (mounted read-only by the test). It
listens on the cache's Service port, which kube-proxy would forward to the container port.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import evaluate
from pod import registry_pod, start_registry_pod
from testbed.certs import self_signed_cert
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.registry import UPSTREAM_PORT, pointed_at_upstream, start_upstream
from testbed.sshnodes import start_node
from testbed.token_auth import TokenServer

HOSTNAME = "registry.cache.test"
CACHE_IP = "127.0.0.221"
UPSTREAM_IP = "127.0.0.222"
# Docker Hub's layout: the registry and its token service under one registrable domain
# (registry-1.docker.io, auth.docker.io); distribution 3.1 hands the upstream credentials to no
# realm outside it (registry/proxy/proxyauth.go, realmAllowed).
UPSTREAM_NAME, AUTH_NAME = "registry-1.upstream.test", "auth.upstream.test"
PUSHER_IP = "127.0.0.227"
LAPTOP_IP = "127.0.0.223"
UPSTREAM_USER, UPSTREAM_PASSWORD = "robot", "upstream-Pa55word-for-the-cache"
CONFIG = {
    "hostname": HOSTNAME,
    "loadBalancerIp": CACHE_IP,
    "mirrors": [{"upstream": "docker.io", "username": UPSTREAM_USER, "password": UPSTREAM_PASSWORD}],
}
CACHE_DEPLOYMENT = "registry-cache-docker-io-deployment"
CACHE_SERVICE = "registry-cache-docker-io-service"
IMAGE = "library/hello:1.0"


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG, secret_keys=("mirrors",))


@pytest.fixture(scope="module")
def cache_port(declared):
    service = declared.named(CACHE_SERVICE).inputs["spec"]
    (port,) = service["ports"]
    container = declared.named(CACHE_DEPLOYMENT).inputs["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] == container["ports"][0]["name"], "the Service forwards to the container port"
    assert f"{HOSTNAME}:{port['port']}" == declared.outputs["mirrors"]["docker.io"]
    return port["port"]


@pytest.fixture(scope="module")
def credentials(declared):
    return declared.outputs["registryUsername"], declared.outputs["registryPassword"]


@pytest.fixture(scope="module")
def upstream_ca():
    return self_signed_cert("upstream.test", dns_names=[UPSTREAM_NAME, AUTH_NAME], ip_addresses=[UPSTREAM_IP])


@pytest.fixture(scope="module")
def token_server(upstream_ca, tmp_path_factory):
    """The stand-in's auth service: a token only for the cache's upstream user."""
    server = TokenServer(UPSTREAM_IP, 5443, upstream_ca, tmp_path_factory.mktemp("token"),
                         username=UPSTREAM_USER, password=UPSTREAM_PASSWORD, realm_host=AUTH_NAME)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstream(upstream_ca, token_server, tmp_path_factory):
    """The stand-in docker.io: TLS with its own CA, token auth like Docker Hub's."""
    running = start_upstream(tmp_path_factory.mktemp("upstream"), UPSTREAM_IP, upstream_ca,
                             env=token_server.registry_env("/certs/tls.crt"))
    yield running
    running.stop()


def machine(name: str, ip: str, resolves: tuple[str, str], client_key, tmp_path_factory):
    """A test host named ``name`` on ``ip`` whose /etc/hosts maps ``resolves`` (address, names)."""
    node = start_node(
        name, ip, tmp_path_factory.mktemp(name),
        hosts_content=f"127.0.0.1 localhost {name}\n{resolves[0]} {resolves[1]}\n".encode(),
        authorized_pubkey=client_key.public_key_line,
    )
    yield node
    node.stop()


@pytest.fixture(scope="module")
def publisher(upstream, client_key, tmp_path_factory):
    """Whoever publishes to the stand-in docker.io: a machine that resolves its names."""
    yield from machine("publisher", PUSHER_IP, (UPSTREAM_IP, f"{UPSTREAM_NAME} {AUTH_NAME}"), client_key,
                       tmp_path_factory)


@pytest.fixture(scope="module")
def upstream_digest(upstream, upstream_ca, publisher, tmp_path_factory):
    directory = tmp_path_factory.mktemp("upstream-certs")
    (directory / "ca.crt").write_bytes(upstream_ca.cert_pem)
    layout = build_oci_layout(tmp_path_factory.mktemp("image") / "hello", "1.0", b"hello through the cache\n")
    pushed = skopeo_copy(
        f"oci:{layout}:1.0", f"docker://{UPSTREAM_NAME}:{UPSTREAM_PORT}/{IMAGE}",
        extra_args=["--dest-cert-dir", str(directory), "--dest-creds", f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}"],
        run=publisher.run_local,
    )
    assert pushed.returncode == 0, pushed.stderr.decode() + upstream.log()
    return manifest_digest(layout, "1.0")


def cache_overrides(upstream_ca) -> dict[str, Any]:
    """The only changes to the declared pod: where the upstream is and its CA."""
    return pointed_at_upstream(UPSTREAM_IP, upstream_ca.cert_pem, names=(UPSTREAM_NAME, AUTH_NAME))


@pytest.fixture(scope="module")
def cache(declared, upstream_digest, upstream_ca, cache_port, tmp_path_factory):
    with registry_pod(
        declared, tmp_path_factory.mktemp("cache-pod"), CACHE_IP, deployment=CACHE_DEPLOYMENT,
        port=cache_port, **cache_overrides(upstream_ca),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def laptop(cache, client_key, tmp_path_factory):
    """A client whose /etc/hosts maps the registry name to the registry's IP."""
    yield from machine("laptop", LAPTOP_IP, (CACHE_IP, HOSTNAME), client_key, tmp_path_factory)


@pytest.fixture(scope="module")
def cert_dir(declared, tmp_path_factory):
    """The program's CA (stack output caCertificatePem), as skopeo reads it."""
    directory = tmp_path_factory.mktemp("cache-certs")
    (directory / "ca.crt").write_text(declared.outputs["caCertificatePem"])
    return directory


def skopeo(laptop, *argv: str):
    return laptop.run_local(["skopeo", *argv])


def cache_get(path: str, declared, port: int, credentials=None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=declared.outputs["caCertificatePem"])
    request = urllib.request.Request(f"https://{CACHE_IP}:{port}{path}")
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_upstream_credentials_reach_the_cache_only_through_the_secret(declared, upstream_ca):
    env = declared.named(CACHE_DEPLOYMENT).inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {item["name"]: item for item in env}
    assert by_name["REGISTRY_PROXY_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert UPSTREAM_PASSWORD not in json.dumps(declared.named(CACHE_DEPLOYMENT).inputs)
    overridden = set(cache_overrides(upstream_ca)["env_overrides"])
    assert overridden & {item["name"] for item in env} == {"REGISTRY_PROXY_REMOTEURL"}


def test_the_upstream_refuses_anonymous_pulls(upstream, upstream_digest, upstream_ca, publisher, tmp_path):
    """Guards the pulls below: the cache gets the image only with the Secret's credentials."""
    (tmp_path / "ca.crt").write_bytes(upstream_ca.cert_pem)
    inspected = skopeo_copy(f"docker://{UPSTREAM_NAME}:{UPSTREAM_PORT}/{IMAGE}", f"oci:{tmp_path / 'copy'}:1.0",
                            extra_args=["--src-cert-dir", str(tmp_path)], run=publisher.run_local)
    assert inspected.returncode != 0 and b"authentication required" in inspected.stderr, inspected.stderr


def test_a_client_pulls_through_the_cache_and_gets_the_upstream_digest(
    cache, laptop, cert_dir, credentials, cache_port, upstream_digest, declared, token_server, tmp_path
):
    reference = f"docker://{HOSTNAME}:{cache_port}/{IMAGE}"
    token_server.requests.clear()
    inspected = skopeo(laptop, "inspect", "--cert-dir", str(cert_dir), "--creds", ":".join(credentials), reference)
    assert inspected.returncode == 0, inspected.stderr.decode() + cache.log()
    assert json.loads(inspected.stdout)["Digest"] == upstream_digest
    copied = skopeo(laptop, "copy", "--src-cert-dir", str(cert_dir), "--src-creds", ":".join(credentials),
                    reference, f"oci:{tmp_path / 'pulled'}:1.0")
    assert copied.returncode == 0, copied.stderr.decode() + cache.log()
    assert manifest_digest(tmp_path / "pulled", "1.0") == upstream_digest
    # The cache fetched it as the upstream user, with what the Secret gave it.
    assert ("authorized", ["repository:library/hello:pull"]) in token_server.requests, token_server.requests
    assert all(who == "authorized" for who, _ in token_server.requests), token_server.requests
    status, body = cache_get("/v2/_catalog", declared, cache_port, credentials)
    assert status == 200 and json.loads(body)["repositories"] == ["library/hello"]


def test_anonymous_clients_get_401_from_the_cache(cache, declared, cache_port):
    assert cache_get("/v2/", declared, cache_port)[0] == 401
    assert cache_get(f"/v2/{IMAGE.replace(':', '/manifests/')}", declared, cache_port)[0] == 401


def test_the_probe_path_answers_on_the_cache(cache, declared, cache_port):
    container = declared.named(CACHE_DEPLOYMENT).inputs["spec"]["template"]["spec"]["containers"][0]
    for kind in ("readinessProbe", "livenessProbe"):
        assert cache_get(container[kind]["httpGet"]["path"], declared, cache_port)[0] == 200, kind


def test_pushing_to_the_cache_is_refused(cache, laptop, cert_dir, credentials, cache_port, tmp_path):
    layout = build_oci_layout(tmp_path / "image", "1.0", b"pushed to a cache\n")
    pushed = skopeo(laptop, "copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", ":".join(credentials),
                    f"oci:{layout}:1.0", f"docker://{HOSTNAME}:{cache_port}/library/pushed:1.0")
    assert pushed.returncode != 0
    assert b"unsupported" in pushed.stderr.lower() or b"405" in pushed.stderr, pushed.stderr


def blob_files(volume: Path) -> set[str]:
    """The blobs the registry keeps on its volume (distribution's filesystem layout)."""
    return {path.parent.name for path in (volume / "docker/registry/v2/blobs").rglob("data")}


def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return result


def test_expired_content_leaves_the_cache_and_is_pulled_again(
    declared, upstream, upstream_digest, upstream_ca, cache_port, cert_dir, credentials, client_key, token_server,
    tmp_path,
):
    """A cache's ttl is a delete: distribution's scheduler deletes what expired through the local
    store, which needs storage.delete.enabled. Here the scheduler's own state file is given an
    expiry in the past while the cache is stopped (no ttl is set: the default 168 h), so
    the restarted cache expires everything at once: the blobs are gone from its volume, and the
    next pull fetches them from the upstream again."""
    ip, client_ip = "127.0.0.225", "127.0.0.226"
    workdir = tmp_path / "expiring-cache"

    def start():
        return start_registry_pod(declared, workdir, ip, deployment=CACHE_DEPLOYMENT, port=cache_port,
                                  **cache_overrides(upstream_ca))

    client = start_node("expiry-client", client_ip, tmp_path / "client",
                        hosts_content=f"127.0.0.1 localhost\n{ip} {HOSTNAME}\n".encode(),
                        authorized_pubkey=client_key.public_key_line)
    reference = f"docker://{HOSTNAME}:{cache_port}/{IMAGE}"

    def pull(into: str):
        copied = skopeo(client, "copy", "--src-cert-dir", str(cert_dir), "--src-creds", ":".join(credentials),
                        reference, f"oci:{tmp_path / into}:1.0")
        assert copied.returncode == 0, copied.stderr.decode() + cache.log()
        assert manifest_digest(tmp_path / into, "1.0") == upstream_digest

    cache = start()
    try:
        volume = cache.volume_path("/var/lib/registry")
        pull("first")
        # A layer, the config and the manifest; the proxy writes what it streamed a moment after.
        cached = wait_for(lambda: found if len(found := blob_files(volume)) == 3 else None,
                          f"the cache keeps what it served: {blob_files(volume)}")
        state_file = volume / "scheduler-state.json"
        # The scheduler saves its entries every few seconds (indexSaveFrequency).
        entries = wait_for(lambda: state_file.exists() and json.loads(state_file.read_text()), "scheduler state")
        assert {entry["EntryType"] for entry in entries.values()} == {0, 1}, "blobs and the manifest are scheduled"
        cache.stop()
        for entry in entries.values():
            entry["ExpiryData"] = "2001-01-01T00:00:00Z"  # the field's JSON name in scheduler.go
        state_file.write_text(json.dumps(entries))
        cache = start()
        # A blob's expiry removes its data (OnBlobExpire: the repository's link, then the vacuum);
        # a manifest's removes its revision link (OnManifestExpire): its bytes are small, and go
        # with the next garbage collection.
        expired_blobs = {key.rsplit(":", 1)[1] for key, entry in entries.items() if entry["EntryType"] == 0}
        revisions = volume / "docker/registry/v2/repositories/library/hello/_manifests/revisions"
        manifest_link = revisions / "sha256" / upstream_digest.split(":")[1] / "link"
        wait_for(lambda: not (blob_files(volume) & expired_blobs) and not manifest_link.exists(),
                 f"expired content leaves the volume; still there: {blob_files(volume) & expired_blobs}\n" + cache.log())
        assert "Scheduler error" not in cache.log(), cache.log()
        assert blob_files(volume) == {upstream_digest.split(":")[1]}, "only the unlinked manifest's bytes are left"
        token_server.requests.clear()
        pull("again")
        assert ("authorized", ["repository:library/hello:pull"]) in token_server.requests, "fetched from the upstream"
        # The proxy stores what it streams to the client as it goes; the last bytes land a moment later.
        wait_for(lambda: blob_files(volume) == cached, f"cached again: {blob_files(volume)} != {cached}")
    finally:
        cache.stop()
        client.stop()


# These two stop the upstream: they run last (pytest keeps the file's order).

def test_with_the_upstream_stopped_the_cached_image_still_pulls(
    cache, laptop, cert_dir, credentials, cache_port, upstream, upstream_digest, tmp_path
):
    reference = f"docker://{HOSTNAME}:{cache_port}/{IMAGE}"
    first = skopeo(laptop, "inspect", "--cert-dir", str(cert_dir), "--creds", ":".join(credentials), reference)
    assert first.returncode == 0, first.stderr.decode()  # cached while the upstream was up
    upstream.stop()
    copied = skopeo(laptop, "copy", "--src-cert-dir", str(cert_dir), "--src-creds", ":".join(credentials),
                    reference, f"oci:{tmp_path / 'offline'}:1.0")
    assert copied.returncode == 0, copied.stderr.decode() + cache.log()
    assert manifest_digest(tmp_path / "offline", "1.0") == upstream_digest


def test_a_cache_started_while_the_upstream_is_down_exits(declared, upstream, upstream_ca, cache_port, tmp_path):
    """distribution (2.8 and 3.1.1 alike) asks the upstream for its auth challenge at start and
    panics when it cannot reach it: the pod crash-loops until the upstream is back (k3s then pulls
    from the upstream)."""
    upstream.stop()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="process died before") as failure:
        start_registry_pod(
            declared, tmp_path / "cache-down", "127.0.0.224", deployment=CACHE_DEPLOYMENT,
            port=cache_port, timeout=20, **cache_overrides(upstream_ca),
        )
    assert time.monotonic() - started < 10
    assert "panic" in str(failure.value) and "connection refused" in str(failure.value), str(failure.value)
    assert "registry exit status: 2" in failure.value.__notes__, failure.value.__notes__
