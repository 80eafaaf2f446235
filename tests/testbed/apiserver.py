"""A real Kubernetes API server: kube-apiserver and etcd, built by scripts/toolchain.

Started on one loopback address with etcd beside it (client and peer ports on the same
address, data in the test's folder), its serving certificate made here for that address,
and one bearer token per user (``--token-auth-file``): ``admin`` of the ``system:masters``
group, which ``kubeconfig.yaml`` carries, and the users ``start_apiserver`` is given (the
cluster's other components, tests/testbed/cluster.py). On its own, objects are stored and
admitted (Pod Security included), nothing runs. ``--service-cluster-ip-range`` is only the
range the API server allocates ClusterIPs from; nothing ever connects to one.
"""

from __future__ import annotations

import secrets
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ._proc import require_free_port, stop_processes, wait_for_tcp
from .certs import self_signed_cert

API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
SERVICE_CLUSTER_IP_RANGE = "10.43.0.0/16"  # k3s's default; an allocation range, never dialled


@dataclass
class RunningAPIServer:
    ip: str
    workdir: Path
    token: str
    ca_pem: bytes
    processes: list[subprocess.Popen[bytes]] = field(repr=False)
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.ip}:{API_PORT}"

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig.yaml"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "apiserver.crt"

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig with ``user``'s token (one of the users the server was started with)."""
        path = self.workdir / f"kubeconfig-{user.replace(':', '-')}.yaml"
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.ca_pem, self.tokens[user])))
        path.chmod(0o600)
        return path

    def log(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.workdir / name).read_text(errors='replace')[-4000:]}"
            for name in ("etcd.log", "kube-apiserver.log") if (self.workdir / name).exists()
        )

    def stop(self) -> None:
        stop_processes(self.processes)


def kubeconfig(url: str, ca_pem: bytes, token: str) -> dict:
    import base64

    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": url, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
    }


def start_apiserver(bin_dir: Path, workdir: Path, ip: str, timeout: float = 90.0,
                    users: dict[str, str] | None = None) -> RunningAPIServer:
    """etcd, then kube-apiserver, until ``/readyz`` answers ok; stopped by ``stop()``.

    ``users``: user name -> its groups (comma-separated, may be empty), each given a token."""
    for port in (API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT):
        require_free_port(ip, port)
    workdir.mkdir(parents=True, exist_ok=True)
    serving = self_signed_cert("kube-apiserver", dns_names=["localhost", "kubernetes", "kubernetes.default.svc"],
                               ip_addresses=[ip])
    (workdir / "apiserver.crt").write_bytes(serving.cert_pem)
    (workdir / "apiserver.key").write_bytes(serving.key_pem)
    (workdir / "apiserver.key").chmod(0o600)
    service_account = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "sa.key").write_bytes(service_account.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (workdir / "sa.pub").write_bytes(service_account.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    groups = {"admin": "system:masters", **(users or {})}
    tokens = {user: secrets.token_hex(16) for user in groups}
    # token,user,uid,"group1,group2" (the token file's format: a quoted list of groups)
    (workdir / "tokens.csv").write_text("".join(
        f'{tokens[user]},{user},{user}-uid,"{group_list}"\n' for user, group_list in groups.items()))

    processes: list[subprocess.Popen[bytes]] = []
    running = RunningAPIServer(ip, workdir, tokens["admin"], serving.cert_pem, processes, tokens)
    try:
        with open(workdir / "etcd.log", "wb") as etcd_log:  # the child keeps its own descriptor
            processes.append(subprocess.Popen(
                [str(bin_dir / "etcd"), "--name", "test", "--data-dir", str(workdir / "etcd-data"),
                 "--listen-client-urls", f"http://{ip}:{ETCD_CLIENT_PORT}",
                 "--advertise-client-urls", f"http://{ip}:{ETCD_CLIENT_PORT}",
                 "--listen-peer-urls", f"http://{ip}:{ETCD_PEER_PORT}",
                 "--initial-advertise-peer-urls", f"http://{ip}:{ETCD_PEER_PORT}",
                 "--initial-cluster", f"test=http://{ip}:{ETCD_PEER_PORT}",
                 "--listen-metrics-urls", "", "--log-level", "warn"],
                stdout=etcd_log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_tcp(ip, ETCD_CLIENT_PORT, alive=lambda: processes[0].poll() is None,
                     describe=running.log, timeout=timeout)
        with open(workdir / "kube-apiserver.log", "wb") as apiserver_log:
            processes.append(subprocess.Popen(
                [str(bin_dir / "kube-apiserver"),
                 "--etcd-servers", f"http://{ip}:{ETCD_CLIENT_PORT}",
                 "--bind-address", ip, "--advertise-address", ip, "--secure-port", str(API_PORT),
                 "--tls-cert-file", str(workdir / "apiserver.crt"),
                 "--tls-private-key-file", str(workdir / "apiserver.key"),
                 "--token-auth-file", str(workdir / "tokens.csv"),
                 "--authorization-mode", "Node,RBAC",
                 "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                 "--service-account-key-file", str(workdir / "sa.pub"),
                 "--service-account-signing-key-file", str(workdir / "sa.key"),
                 "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
                 # The `kubernetes` Service's endpoints would name the advertised address, which
                 # may not be a loopback one; there is no in-cluster client to use it.
                 "--endpoint-reconciler-type", "none",
                 "--cert-dir", str(workdir / "certs")],
                stdout=apiserver_log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_tcp(ip, API_PORT, alive=lambda: all(p.poll() is None for p in processes),
                     describe=running.log, timeout=timeout)
        _await_ready(running, timeout)
        running.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(running.url, serving.cert_pem, running.token)))
        return running
    except BaseException:
        running.stop()
        raise


def _await_ready(running: RunningAPIServer, timeout: float) -> None:
    context = ssl.create_default_context(cadata=running.ca_pem.decode())
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in running.processes):
            raise RuntimeError(f"the API server stopped while starting:\n{running.log()}")
        request = urllib.request.Request(f"{running.url}/readyz",
                                         headers={"Authorization": f"Bearer {running.token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError as error:
            last = str(error)
        time.sleep(0.5)
    raise RuntimeError(f"the API server was not ready within {timeout}s ({last}):\n{running.log()}")
