"""Self-test of the test bed: every piece is shown working for real.

Needs root.  Nodes on 127.0.0.11/.12 (/.13 for the OpenRC node), the
registry on 127.0.0.202:5000; all traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from .certs import self_signed_cert
from .oci import build_oci_layout, manifest_digest, skopeo_copy
from .registry import REGISTRY_3_IMAGE_CONFIG, RunningRegistry, start_registry
from .sshexec import ClientKey, connect, generate_client_key, ssh_run
from .sshnodes import DEPLOY_UID, TestNode, start_node, start_nodes
from pulumi_real import pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the test bed needs root (namespaces, sshd)")

REGISTRY_NAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.202"
HOSTS = f"127.0.0.1 localhost\n{REGISTRY_IP} {REGISTRY_NAME}".encode()  # no final newline on purpose
REAL_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="module")
def client_key(workdir: Path) -> ClientKey:
    return generate_client_key(workdir / "client")


@pytest.fixture(scope="module")
def nodes(workdir: Path, client_key: ClientKey) -> Iterator[list[TestNode]]:
    started = start_nodes(
        [("node1", "127.0.0.11"), ("node2", "127.0.0.12")],
        workdir / "nodes",
        hosts_content=HOSTS,
        authorized_pubkey=client_key.public_key_line,
    )
    yield started
    for node in started:
        node.stop()


def run(
    node: TestNode, key: ClientKey, command: str, *, user: str = "root", stdin: bytes = b""
) -> tuple[int, str, str]:
    status, out, err = ssh_run(node, command, user=user, private_key_path=key.private_key_path, stdin=stdin)
    return status, out.decode(), err.decode()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine_view(*paths: str) -> dict[str, str | None]:
    """What the machine itself has at ``paths`` (a digest of each file below them), to compare."""
    view: dict[str, str | None] = {}
    for top in map(Path, paths):
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.exists() else []
        view[str(top)] = None if not top.exists() else ""
        view.update({str(f): sha(f) for f in files})
    return view


# Read when the module is collected, before any node starts.
MACHINE_PASSWD = Path("/etc/passwd").read_bytes()


# --- SSH hosts -----------------------------------------------------------------


def test_root_and_deploy_can_log_in(nodes: list[TestNode], client_key: ClientKey) -> None:
    for node in nodes:
        assert run(node, client_key, "id -u; hostname")[:2] == (0, f"0\n{node.name}\n")
        status, out, err = run(node, client_key, "id -un; id -u; sudo -n id -u", user="deploy")
        assert (status, out) == (0, f"deploy\n{DEPLOY_UID}\n0\n"), err
    # The user exists only inside the nodes: the machine's own accounts are as they were (a
    # machine may have a deploy user of its own).
    assert Path("/etc/passwd").read_bytes() == MACHINE_PASSWD


def test_stdin_is_passed_and_closed(nodes: list[TestNode], client_key: ClientKey) -> None:
    blob = os.urandom(300_000) + b"no final newline"
    status, out, _ = ssh_run(nodes[0], "cat", private_key_path=client_key.private_key_path, stdin=blob)
    assert (status, out) == (0, blob)
    status, out, err = ssh_run(nodes[0], "echo out; echo err >&2; exit 7", pkey=client_key.pkey())
    assert (status, out, err) == (7, b"out\n", b"err\n")


def test_env_requests_follow_acceptenv(nodes: list[TestNode], client_key: ClientKey) -> None:
    """AcceptEnv LANG LC_* is kept: only those env requests get through."""
    client = connect(nodes[0], pkey=client_key.pkey())
    try:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.update_environment({"LC_FOO": "passed", "K3S_TOKEN": "refused"})
        chan.exec_command('echo "$LC_FOO|${K3S_TOKEN:-unset}"')
        assert chan.makefile("rb").read() == b"passed|unset\n"
    finally:
        client.close()
    status, out, _ = run(nodes[0], client_key, "env")
    assert status == 0 and "LC_FOO" not in out  # ssh_run sends no env requests


def test_host_key_is_pinned(nodes: list[TestNode], client_key: ClientKey) -> None:
    impostor = SimpleNamespace(ip=nodes[0].ip, port=22, host_public_key=nodes[1].host_public_key)
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_run(impostor, "true", pkey=client_key.pkey())


def test_etc_hosts_is_a_bind_mount(nodes: list[TestNode], client_key: ClientKey) -> None:
    node, other = nodes[1], nodes[0]
    real_hosts = sha(Path("/etc/hosts"))
    assert node.read_file("/etc/hosts") == HOSTS
    status, _, err = run(node, client_key, "cp /etc/hosts /etc/hosts.new && mv /etc/hosts.new /etc/hosts")
    assert status != 0 and "busy" in err.lower()
    assert run(node, client_key, "sed -i 's/localhost/lh/' /etc/hosts")[0] != 0
    status, _, err = run(node, client_key, "cat > /etc/hosts", stdin=b"127.0.0.1 rewritten\n")
    assert status == 0, err
    assert node.read_file("/etc/hosts") == b"127.0.0.1 rewritten\n"
    assert other.read_file("/etc/hosts") == HOSTS
    assert sha(Path("/etc/hosts")) == real_hosts
    node.write_file("/etc/hosts", HOSTS)  # restore for later tests
    assert node.read_file("/etc/hosts") == HOSTS


def test_ca_store_is_per_node(nodes: list[TestNode], client_key: ClientKey) -> None:
    node, other = nodes
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    real_before, other_before = sha(REAL_BUNDLE), other.read_file(bundle)
    cert = self_signed_cert("testbed-ca.cube.test").cert_pem
    command = "cat > /usr/local/share/ca-certificates/testbed-ca.crt && update-ca-certificates"
    status, out, err = run(node, client_key, command, stdin=cert)
    assert status == 0, out + err
    assert cert.strip() in (node.read_file(bundle) or b"")
    assert node.exists("/etc/ssl/certs/testbed-ca.pem")
    assert other.read_file(bundle) == other_before and not other.exists("/etc/ssl/certs/testbed-ca.pem")
    assert sha(REAL_BUNDLE) == real_before
    assert not Path("/usr/local/share/ca-certificates/testbed-ca.crt").exists()


def test_fake_systemctl_records_restart(nodes: list[TestNode], client_key: ClientKey) -> None:
    node = nodes[0]
    node.clear_restart_log()
    command = "test -d /run/systemd/system && systemctl is-active --quiet k3s && systemctl restart k3s"
    assert run(node, client_key, command)[0] == 0
    assert run(node, client_key, "sudo -n /usr/bin/systemctl restart k3s", user="deploy")[0] == 0
    assert node.restart_log() == ["is-active --quiet k3s", "restart k3s", "restart k3s"]
    assert nodes[1].restart_log() == []
    node.clear_restart_log()
    assert node.restart_log() == []


def test_file_helpers_see_the_node_view(nodes: list[TestNode]) -> None:
    node, other = nodes
    machine_before = machine_view("/etc/rancher", "/var/lib/k3s-registry")
    node.write_file("/etc/rancher/k3s/registries.yaml", "mirrors: {}\n", mode=0o600)
    node.write_file("/var/lib/k3s-registry/state", b"x")
    assert node.run_local(["stat", "-c", "%a", "/etc/rancher/k3s/registries.yaml"]).stdout == b"600\n"
    snap = node.snapshot()
    assert snap["/etc/rancher/k3s/registries.yaml"] == b"mirrors: {}\n"
    assert snap["/var/lib/k3s-registry/state"] == b"x"
    assert snap["/etc/hosts"] == HOSTS
    assert any(v.startswith(b"/usr/share/ca-certificates/") for v in snap.values())  # symlink targets
    assert "/etc/rancher/k3s/registries.yaml" not in other.snapshot()
    assert machine_view("/etc/rancher", "/var/lib/k3s-registry") == machine_before
    node.remove("/etc/rancher")
    node.remove("/var/lib/k3s-registry")
    assert not node.exists("/etc/rancher") and node.read_file("/etc/rancher/k3s/registries.yaml") is None
    with pytest.raises(ValueError):
        node.write_file("/usr/bin/evil", b"")  # shared with the machine: refused


def test_openrc_node(workdir: Path, client_key: ClientKey) -> None:
    node = start_node(
        "alpine1",
        "127.0.0.13",
        workdir / "openrc",
        hosts_content=HOSTS,
        authorized_pubkey=client_key.public_key_line,
        init="openrc",
        extra_files={"/etc/rancher/k3s/config.yaml": b"write-kubeconfig-mode: 600\n"},
    )
    try:
        assert run(node, client_key, "test -d /run/systemd/system")[0] == 1
        assert run(node, client_key, "rc-service k3s status && rc-service k3s restart")[0] == 0
        assert node.restart_log() == ["k3s status", "k3s restart"]
        assert node.read_file("/etc/rancher/k3s/config.yaml") == b"write-kubeconfig-mode: 600\n"
        footprint = Footprint.of(node.proc.pid, node.pid)
    finally:
        node.stop()
    assert footprint.leftovers(node.workdir) == []


# --- registry + OCI push ------------------------------------------------------


def test_registry_pod_like_push_and_catalog(nodes: list[TestNode], workdir: Path) -> None:
    pair = self_signed_cert(REGISTRY_NAME, dns_names=[REGISTRY_NAME], ip_addresses=[REGISTRY_IP])
    cert_dir = workdir / "dest-certs"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(pair.cert_pem)
    reg = start_registry(
        workdir / "registry",
        listen_ip=REGISTRY_IP,
        port=5000,
        env={"REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/tls.crt", "REGISTRY_HTTP_TLS_KEY": "/certs/tls.key"},
        volumes={"/certs": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem}, "/var/lib/registry": "pvc"},
        run_as_uid=1000,
        run_as_gid=1000,
        read_only_root=True,
        writable_tmp=False,
    )
    try:
        assert reg.url == f"https://{REGISTRY_IP}:5000"
        _assert_container_shape(reg)
        layout = build_oci_layout(workdir / "oci", "1", b"demo payload\n")
        node = nodes[0]
        push = skopeo_copy(
            f"oci:{layout}:1",
            f"docker://{REGISTRY_NAME}:5000/demo:1",
            extra_args=["--dest-cert-dir", str(cert_dir)],
            run=node.run_local,
        )
        assert push.returncode == 0, push.stderr.decode() + reg.log()
        catalog = node.run_local(
            ["curl", "-sS", "--cacert", str(cert_dir / "ca.crt"), f"https://{REGISTRY_NAME}:5000/v2/_catalog"]
        )
        assert json.loads(catalog.stdout) == {"repositories": ["demo"]}, catalog.stderr
        head = node.run_local(
            [
                "curl",
                "-sSI",
                "--cacert",
                str(cert_dir / "ca.crt"),
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                f"https://{REGISTRY_NAME}:5000/v2/demo/manifests/1",
            ]
        )
        assert f"docker-content-digest: {manifest_digest(layout, '1')}" in head.stdout.decode().lower()
        assert (reg.volume_path("/var/lib/registry") / "docker/registry/v2/repositories/demo").is_dir()
        footprint = Footprint.of(reg.pid)
        assert reg.pid in footprint.processes and footprint.namespaces, "the registry is in its own mount namespace"
    finally:
        reg.stop()
    # The registry runs chrooted into a root below reg.workdir: that is how its leftovers are found.
    assert footprint.leftovers(reg.workdir) == []


def _assert_container_shape(reg: RunningRegistry) -> None:
    """uid 1000, read-only root, writable PVC, 0440 secret, the registry:3 image's config and the
    binary of its release on the image's PATH."""
    status = Path(f"/proc/{reg.pid}/status").read_text()
    assert "\nUid:\t1000\t1000\t1000\t1000\n" in status and "\nGid:\t1000\t1000\t1000\t1000\n" in status
    script = (
        "touch /probe; echo $?; touch /tmp/probe; echo $?; "
        "touch /var/lib/registry/probe && rm /var/lib/registry/probe && echo pvc-ok; "
        "stat -L -c '%a %g' /certs/tls.key; head -c 5 /certs/tls.key; echo; "
        "cat /etc/distribution/config.yml; registry --version"
    )
    probe = reg.run_inside(["sh", "-c", script])
    lines = probe.stdout.decode().split("\n", 5)
    assert lines[:5] == ["1", "1", "pvc-ok", "440 1000", "-----"], probe
    config, version = lines[5].rsplit("registry ", 1)[0], lines[5].rstrip().rsplit(" ", 1)[-1]
    assert config == REGISTRY_3_IMAGE_CONFIG
    assert version == "v" + pins()["registry"], lines[5]
    assert b"Read-only file system" in probe.stderr


# --- leftovers: only the test bed's own processes, never a machine-wide search by name ---------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """Start time in clock ticks since boot: with the PID, names one process even if PIDs are reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _namespaces(pid: int) -> set[str]:
    found = set()
    for kind in ("mnt", "pid"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
    return found


def _mentions(pid: int, directory: Path) -> bool:
    """Whether the process's command line, root or working directory is ``directory`` or below it."""
    inside = str(directory).rstrip("/") + "/"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        places = [os.readlink(f"/proc/{pid}/root"), os.readlink(f"/proc/{pid}/cwd")]
    except OSError:
        return False
    return any(inside in arg or arg == inside[:-1] for arg in argv) or any(
        (place + "/").startswith(inside) for place in places
    )


@dataclass
class Footprint:
    """What a started test host or registry consists of, taken while it runs.

    ``processes``: the started PIDs and all their descendants (PID -> start time, so a reused
    PID is not mistaken for ours); ``namespaces``: their mount and PID namespaces, less this
    test process's own (which the whole machine shares).
    """

    processes: dict[int, str]
    namespaces: set[str]

    @classmethod
    def of(cls, *roots: int) -> Footprint:
        parents = {pid: int(fields[1]) for pid in _all_pids() if (fields := _stat_fields(pid))}
        tree, frontier = set(roots), set(roots)
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
            tree |= frontier
        processes = {pid: start for pid in tree if (start := _start_time(pid)) is not None}
        namespaces = set().union(*(_namespaces(pid) for pid in processes)) - _namespaces(os.getpid())
        return cls(processes, namespaces)

    def leftovers(self, workdir: Path) -> list[str]:
        """What is still there: one of our processes (a zombie too), anything in our namespaces,
        or any process whose command line, root or working directory lies in ``workdir``."""
        found = []
        for pid in _all_pids():
            if pid == os.getpid():
                continue
            fields = _stat_fields(pid)
            if fields is None:
                continue
            ours = self.processes.get(pid) == fields[19]
            if ours or _namespaces(pid) & self.namespaces or _mentions(pid, workdir):
                found.append(f"{pid} state {fields[0]}: {_describe(pid)}")
        return found


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return argv or Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(gone)"


def test_zz_everything_stops(nodes: list[TestNode], workdir: Path) -> None:
    """Last: stopping leaves nothing of the test hosts behind, not even a zombie (stop is idempotent)."""
    footprints = [Footprint.of(node.proc.pid, node.pid) for node in nodes]
    assert all(node.pid in fp.processes and fp.namespaces for node, fp in zip(nodes, footprints, strict=True))
    for node in nodes:
        node.stop()
        node.stop()
    for footprint in footprints:
        assert footprint.leftovers(workdir) == []  # nothing left for the machine's PID 1 to reap
