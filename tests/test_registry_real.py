"""The real registry (distribution 3, the release of the declared image), started with exactly what
the program declares, over what its image brings (the registry:3 image's config.yml and ENV).

The certificate and key are the ones the TLS resources produce under the mocks, the Secret
carries them, and the Deployment says where they are mounted and how the registry is told.
"""

import base64
import json
import socket
import ssl
import subprocess

import pytest

from harness import evaluate
from pod import registry_pod, registry_pod_settings
from testbed.oci import build_oci_layout, manifest_digest, skopeo_copy
from testbed.sshnodes import start_node

HOSTNAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.202"
CONFIG = {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "certDnsNames": ["*.cube.test"]}


@pytest.fixture(scope="module")
def declared():
    return evaluate(CONFIG)


@pytest.fixture(scope="module")
def ca_pem(declared):
    return declared.outputs["caCertificatePem"]


@pytest.fixture(scope="module")
def registry(declared, tmp_path_factory):
    with registry_pod(declared, tmp_path_factory.mktemp("registry-pod"), REGISTRY_IP) as running:
        yield running


@pytest.fixture(scope="module")
def client(registry, client_key, tmp_path_factory):
    """A machine whose /etc/hosts maps the registry name to the test IP, like a user's laptop."""
    node = start_node(
        "laptop", "127.0.0.31", tmp_path_factory.mktemp("laptop"),
        hosts_content=f"127.0.0.1 localhost laptop\n{REGISTRY_IP} {HOSTNAME}\n".encode(),
        authorized_pubkey=client_key.public_key_line,
    )
    yield node
    node.stop()


def https_get(
    path: str,
    context: ssl.SSLContext,
    server_hostname: str = HOSTNAME,
    accept: str = "*/*",
    credentials: tuple[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET over TLS to the registry's IP, verifying the certificate for ``server_hostname``."""
    authorization = ""
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        authorization = f"Authorization: Basic {token}\r\n"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {server_hostname}:5000\r\nAccept: {accept}\r\n{authorization}"
        "Connection: close\r\n\r\n"
    )
    with (
        socket.create_connection((REGISTRY_IP, 5000), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(request.encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def trusting(ca_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem)
    return context


def test_the_registry_runs_as_declared(registry, declared):
    settings = registry_pod_settings(declared)
    assert settings["read_only_root"] is True and settings["run_as_uid"] == 10001
    assert registry.run_inside(["touch", "/probe"]).returncode != 0, "the root filesystem must be read-only"


def test_what_the_images_config_opens_stays_closed(registry, ca_pem, credentials):
    """registry:3's own config.yml opens a debug server on :5001 and logs at debug level; the
    declared pod turns both off (monitoring is off here)."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((REGISTRY_IP, 5001), timeout=5).close()
    assert https_get("/v2/", trusting(ca_pem), credentials=credentials)[0] == 200
    log = registry.log()
    assert "level=info" in log and "level=debug" not in log, log[-2000:]


@pytest.fixture(scope="module")
def credentials(declared):
    return declared.outputs["registryUsername"], declared.outputs["registryPassword"]


def test_a_client_trusting_only_the_ca_connects_by_hostname(registry, ca_pem, credentials):
    status, _ = https_get("/v2/", trusting(ca_pem), credentials=credentials)
    assert status == 200


def test_without_credentials_the_api_answers_401(registry, ca_pem):
    status, _ = https_get("/v2/", trusting(ca_pem))
    assert status == 401


def test_wrong_credentials_are_refused(registry, ca_pem, credentials):
    status, _ = https_get("/v2/", trusting(ca_pem), credentials=(credentials[0], "not-the-password"))
    assert status == 401


def test_the_probe_path_answers_without_credentials(registry, ca_pem, declared):
    probe = declared.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    for kind in ("readinessProbe", "livenessProbe"):
        status, _ = https_get(probe[kind]["httpGet"]["path"], trusting(ca_pem))
        assert status == 200, kind


def test_every_declared_name_verifies(registry, ca_pem):
    for name in (HOSTNAME, "other.cube.test", REGISTRY_IP):
        assert https_get("/", trusting(ca_pem), server_hostname=name)[0] == 200, name


def test_a_name_outside_the_certificate_is_refused(registry, ca_pem):
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        https_get("/", trusting(ca_pem), server_hostname="registry.elsewhere.test")


def test_a_client_that_does_not_trust_the_certificate_is_refused(registry):
    with pytest.raises(ssl.SSLCertVerificationError, match=r"self.signed|unable to get local issuer"):
        https_get("/", ssl.create_default_context())


@pytest.fixture
def cert_dir(ca_pem, tmp_path):
    """What skopeo and Docker read: a directory with the CA as ca.crt."""
    directory = tmp_path / "certs.d"
    directory.mkdir()
    (directory / "ca.crt").write_text(ca_pem)
    return directory


def test_an_anonymous_push_is_refused_with_401(registry, client, cert_dir, tmp_path):
    layout = build_oci_layout(tmp_path / "image", "1.0", b"anonymous\n")
    pushed = skopeo_copy(
        f"oci:{layout}:1.0", f"docker://{HOSTNAME}:5000/demo/anonymous:1.0",
        extra_args=["--dest-cert-dir", str(cert_dir)], run=client.run_local,
    )
    assert pushed.returncode != 0
    assert b"authentication required" in pushed.stderr or b"401" in pushed.stderr, pushed.stderr


def test_skopeo_pushes_with_the_generated_credentials_and_the_catalog_lists_it(
    registry, ca_pem, credentials, client, cert_dir, tmp_path
):
    layout = build_oci_layout(tmp_path / "image", "1.0", b"hello from the cube\n")
    pushed = skopeo_copy(
        f"oci:{layout}:1.0", f"docker://{HOSTNAME}:5000/demo/hello:1.0",
        extra_args=["--dest-cert-dir", str(cert_dir), "--dest-creds", ":".join(credentials)], run=client.run_local,
    )
    assert pushed.returncode == 0, pushed.stderr.decode() + registry.log()
    status, body = https_get("/v2/_catalog", trusting(ca_pem), credentials=credentials)
    assert status == 200 and json.loads(body)["repositories"] == ["demo/hello"]
    status, _ = https_get(
        f"/v2/demo/hello/manifests/{manifest_digest(layout, '1.0')}",
        trusting(ca_pem),
        accept="application/vnd.oci.image.manifest.v1+json",
        credentials=credentials,
    )
    assert status == 200
    assert any(registry.volume_path("/var/lib/registry").rglob("data")), "images must land on the volume"


def test_skopeo_without_the_certificate_is_refused(registry, client, credentials, tmp_path):
    layout = build_oci_layout(tmp_path / "image", "1.0", b"untrusted\n")
    pushed = skopeo_copy(
        f"oci:{layout}:1.0", f"docker://{HOSTNAME}:5000/demo/untrusted:1.0",
        extra_args=["--dest-creds", ":".join(credentials)], run=client.run_local,
    )
    assert pushed.returncode != 0
    assert b"certificate signed by unknown authority" in pushed.stderr


def skopeo_on(client, *argv: str):
    return client.run_local(["skopeo", *argv])


def test_a_client_with_the_credentials_deletes_an_image_and_nobody_else_can(
    registry, ca_pem, credentials, client, cert_dir, tmp_path
):
    """deleteEnabled (on by default): DELETE of the manifest by digest, as `skopeo delete` sends it."""
    layout = build_oci_layout(tmp_path / "image", "1.0", b"to be deleted\n")
    reference = f"docker://{HOSTNAME}:5000/demo/short-lived:1.0"
    pushed = skopeo_copy(f"oci:{layout}:1.0", reference,
                         extra_args=["--dest-cert-dir", str(cert_dir), "--dest-creds", ":".join(credentials)],
                         run=client.run_local)
    assert pushed.returncode == 0, pushed.stderr.decode() + registry.log()
    anonymous = skopeo_on(client, "delete", "--cert-dir", str(cert_dir), reference)
    assert anonymous.returncode != 0 and b"authentication required" in anonymous.stderr, anonymous.stderr
    deleted = skopeo_on(client, "delete", "--cert-dir", str(cert_dir), "--creds", ":".join(credentials), reference)
    assert deleted.returncode == 0, deleted.stderr.decode() + registry.log()
    status, _ = https_get(f"/v2/demo/short-lived/manifests/{manifest_digest(layout, '1.0')}", trusting(ca_pem),
                          accept="application/vnd.oci.image.manifest.v1+json", credentials=credentials)
    assert status == 404


def test_with_delete_off_the_registry_refuses_every_delete(tmp_path, tmp_path_factory):
    kept = evaluate({**CONFIG, "loadBalancerIp": "127.0.0.207", "deleteEnabled": "false"})
    with registry_pod(kept, tmp_path_factory.mktemp("kept-pod"), "127.0.0.207") as running:
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_text(kept.outputs["caCertificatePem"])
        creds = f"{kept.outputs['registryUsername']}:{kept.outputs['registryPassword']}"
        layout = build_oci_layout(tmp_path / "image", "1.0", b"kept forever\n")
        reference = "docker://127.0.0.207:5000/demo/kept:1.0"
        pushed = skopeo_copy(f"oci:{layout}:1.0", reference, extra_args=["--dest-cert-dir", str(certs), "--dest-creds", creds])
        assert pushed.returncode == 0, pushed.stderr.decode() + running.log()
        refused = subprocess.run(["skopeo", "delete", "--cert-dir", str(certs), "--creds", creds, reference],
                                 capture_output=True, check=False)
        assert refused.returncode != 0 and b"unsupported" in refused.stderr.lower(), refused.stderr
