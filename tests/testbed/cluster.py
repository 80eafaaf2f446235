"""A Kubernetes cluster the program's objects really land on, without a kubelet.

Every part is a real program built by scripts/toolchain, on one loopback address:

- kube-apiserver and etcd (apiserver.py): storage, admission (Pod Security among the
  defaults), validation, server-side apply and field ownership.
- kube-controller-manager: Deployments make ReplicaSets and Pods, garbage collection, the
  namespace controller (a deleted namespace empties and goes), PersistentVolume binding,
  ServiceAccounts and their tokens (``--use-service-account-credentials``, as on k3s).
- kube-scheduler: binds pods to nodes (nodeSelector, the claim's volume binding).
- kwok: fake nodes (``add_node``) with a lease heartbeat, and its default pod stages, which
  make a pod bound to such a node Running and Ready. No container ever runs: no image is
  pulled, no probe is made, nothing listens on a pod's address.
- MetalLB's controller: gives a LoadBalancer Service the address its annotation asks for,
  from an IPAddressPool of loopback addresses. No speaker: nothing announces or answers on
  that address, and nothing in the tests connects to it.

The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs are installed (no operator
runs: the API server validates the objects against their schemas and stores them).

And two stand-ins for what k3s ships: its ``local-path`` StorageClass (the default class,
WaitForFirstConsumer, exactly as k3s's manifests/local-storage.yaml declares it), and
``LocalPathProvisioner`` in place of rancher/local-path-provisioner: for a claim the
scheduler has chosen a node for, a PersistentVolume of exactly the requested size, as the
provisioner makes it (name ``pvc-<uid>``, the node's hostname affinity); a Released volume of
its own it deletes. No directory is made: no pod writes to it.

No kubelet, no container runtime, no network: what a pod does is proven elsewhere (the
registry binary started from the applied Deployment, tests/pod.py).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._proc import stop_processes
from .apiserver import RunningAPIServer, start_apiserver

KWOK_NODE_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
METALLB_NAMESPACE = "metallb-system"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
STORAGE_PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
# k3s's manifests/local-storage.yaml
LOCAL_PATH_STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "local-path",
                 "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": LOCAL_PATH_PROVISIONER,
    "volumeBindingMode": "WaitForFirstConsumer",
    "reclaimPolicy": "Delete",
}
# The components' users (apiserver.start_apiserver's token file): the controller manager and
# the scheduler as themselves, bound by RBAC's bootstrap roles; kwok, MetalLB and the
# provisioner's stand-in, which a cluster gives roles of their own, as admins of this one.
USERS = {
    "system:kube-controller-manager": "",
    "system:kube-scheduler": "",
    "kwok": "system:masters",
    "metallb": "system:masters",
    "local-path-provisioner": "system:masters",
}
DEFAULT_NODE = "server01"
DEFAULT_NODE_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "node-role.kubernetes.io/control-plane": "true"}


@dataclass
class RunningCluster:
    api: RunningAPIServer
    bin_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    provisioner: LocalPathProvisioner | None = field(default=None, repr=False)

    @property
    def kubeconfig_path(self) -> Path:
        return self.api.kubeconfig_path

    @property
    def workdir(self) -> Path:
        return self.api.workdir

    def client(self) -> Any:
        """An ApiClient of the official Python client, as the admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig_path))

    def log(self) -> str:
        names = ("kube-controller-manager.log", "kube-scheduler.log", "kwok.log", "metallb.log")
        return self.api.log() + "\n" + "\n".join(
            f"--- {name}\n{(self.workdir / name).read_text(errors='replace')[-4000:]}"
            for name in names if (self.workdir / name).exists())

    def add_node(self, name: str, labels: dict[str, str]) -> None:
        """A node kwok keeps Ready (its lease renewed), with ``labels`` and the hostname label."""
        from kubernetes import client

        core: Any = client.CoreV1Api(self.client())
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "annotations": KWOK_NODE_ANNOTATION,
            "labels": {**labels, "kubernetes.io/hostname": name}}})
        _wait(lambda: _node_ready(core, name), 60, f"node {name} Ready", self.log)

    def stop(self) -> None:
        if self.provisioner is not None:
            self.provisioner.stop()
        stop_processes(self.processes)
        self.api.stop()


def start_cluster(bin_dir: Path, workdir: Path, ip: str, load_balancer_pool: str,
                  timeout: float = 120.0) -> RunningCluster:
    """The API server, then the other components, the storage class, the address pool and
    one Ready node (``DEFAULT_NODE``); stopped by ``stop()``."""
    api = start_apiserver(bin_dir, workdir, ip, timeout, users=USERS)
    cluster = RunningCluster(api, bin_dir)
    try:
        cluster.processes.append(_start(cluster, "kube-controller-manager", [
            "--kubeconfig", str(api.kubeconfig_for("system:kube-controller-manager")),
            "--secure-port", "0", "--leader-elect=false",
            "--use-service-account-credentials",
            "--service-account-private-key-file", str(workdir / "sa.key"),
            "--root-ca-file", str(api.ca_path),
            "--cluster-name", "test",
        ]))
        cluster.processes.append(_start(cluster, "kube-scheduler", [
            "--kubeconfig", str(api.kubeconfig_for("system:kube-scheduler")),
            "--authentication-kubeconfig", str(api.kubeconfig_for("system:kube-scheduler")),
            "--authorization-kubeconfig", str(api.kubeconfig_for("system:kube-scheduler")),
            "--secure-port", "0", "--leader-elect=false",
        ]))
        cluster.processes.append(_start(cluster, "kwok", [
            "--kubeconfig", str(api.kubeconfig_for("kwok")),
            "--config", str(bin_dir / "kwok-stages.yaml"),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--node-ip", ip, "--cidr", "10.42.0.0/16", "--server-address", "",
            # A lease renewed as a kubelet renews it (the stages heartbeat the status rarely then).
            "--node-lease-duration-seconds", "40",
        ], env={"HOME": str(workdir)}))
        _apply_all(cluster, yaml.safe_load_all((bin_dir / "metallb-crds.yaml").read_text()))
        _apply_all(cluster, yaml.safe_load_all((bin_dir / "prometheus-operator-crds.yaml").read_text()))
        _apply_all(cluster, [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": METALLB_NAMESPACE}},
            LOCAL_PATH_STORAGE_CLASS,
        ])
        # Its metrics server takes no address, only a port (internal/k8s/k8s.go, MetricsHost is
        # never set): 0 is one the kernel picks, on every address; nothing connects to it.
        cluster.processes.append(_start(cluster, "metallb", [
            "--namespace", METALLB_NAMESPACE, "--webhook-mode", "disabled",
            "--port", "0", "--log-level", "warn",
        ], binary="metallb-controller", env={"KUBECONFIG": str(api.kubeconfig_for("metallb"))}))
        _wait(lambda: _crd_served(cluster, "ipaddresspools.metallb.io"), timeout, "MetalLB's CRDs", cluster.log)
        _apply_all(cluster, [{
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "test-bed", "namespace": METALLB_NAMESPACE},
            "spec": {"addresses": [load_balancer_pool]},
        }])
        cluster.provisioner = LocalPathProvisioner(cluster)
        cluster.add_node(DEFAULT_NODE, DEFAULT_NODE_LABELS)
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _start(cluster: RunningCluster, name: str, args: list[str], binary: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    import os

    with open(cluster.workdir / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([str(cluster.bin_dir / (binary or name)), *args],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    time.sleep(0.2)
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited {process.returncode} at start:\n{cluster.log()}")
    return process


def _apply_all(cluster: RunningCluster, documents: Any) -> None:
    from kubernetes import dynamic

    client = dynamic.DynamicClient(cluster.client())
    for document in documents:
        if not document:
            continue
        api = client.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        client.server_side_apply(api, body=document, namespace=document["metadata"].get("namespace"),
                                 field_manager="test-bed", force_conflicts=True)


def _crd_served(cluster: RunningCluster, name: str) -> bool:
    from kubernetes import client

    crd: Any = client.ApiextensionsV1Api(cluster.client()).read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def _node_ready(core: Any, name: str) -> bool:
    node = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def _wait(done: Any, timeout: float, what: str, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if done():
                return
        except Exception as error:  # not there yet: asked again
            last = error
        time.sleep(0.3)
    raise RuntimeError(f"{what} not reached within {timeout}s ({last}):\n{describe()}")


class LocalPathProvisioner:
    """rancher/local-path-provisioner's part the API sees (provisioner.go, provisionFor and
    deleteFor): a claim of its class that the scheduler chose a node for gets a volume of the
    requested size on that node; a Released volume it made is deleted (reclaim policy Delete)."""

    def __init__(self, cluster: RunningCluster, interval: float = 0.3):
        from kubernetes import client, config

        kubeconfig = cluster.api.kubeconfig_for("local-path-provisioner")
        self._core: Any = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        self._interval = interval
        self._stopped = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="local-path-provisioner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._provision()
                self._reclaim()
            except Exception as error:  # the API server may be stopping: asked again
                self.errors.append(str(error))

    def _provision(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for claim in self._core.list_persistent_volume_claim_for_all_namespaces().items:
            annotations = claim.metadata.annotations or {}
            if (claim.status.phase != "Pending" or claim.spec.volume_name
                    or annotations.get(STORAGE_PROVISIONER_ANNOTATION) != LOCAL_PATH_PROVISIONER
                    or SELECTED_NODE_ANNOTATION not in annotations):
                continue
            name = f"pvc-{claim.metadata.uid}"
            volume = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {
                    "pv.kubernetes.io/provisioned-by": LOCAL_PATH_PROVISIONER,
                    "local.path.provisioner/selected-node": annotations[SELECTED_NODE_ANNOTATION]}},
                "spec": {
                    "capacity": {"storage": claim.spec.resources.requests["storage"]},
                    "accessModes": claim.spec.access_modes,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": claim.spec.storage_class_name,
                    "volumeMode": claim.spec.volume_mode or "Filesystem",
                    "hostPath": {"path": f"/var/lib/rancher/k3s/storage/{name}_{claim.metadata.namespace}_"
                                         f"{claim.metadata.name}", "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": claim.metadata.namespace, "name": claim.metadata.name,
                                 "uid": claim.metadata.uid},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                        "key": "kubernetes.io/hostname", "operator": "In",
                        "values": [annotations[SELECTED_NODE_ANNOTATION]]}]}]}},
                },
            }
            try:
                self._core.create_persistent_volume(volume)
            except ApiException as error:
                if error.status != 409:  # made already, on an earlier pass
                    raise

    def _reclaim(self) -> None:
        for volume in self._core.list_persistent_volume().items:
            annotations = volume.metadata.annotations or {}
            if (volume.status.phase == "Released" and volume.spec.persistent_volume_reclaim_policy == "Delete"
                    and annotations.get("pv.kubernetes.io/provisioned-by") == LOCAL_PATH_PROVISIONER):
                self._core.delete_persistent_volume(volume.metadata.name)


@contextmanager
def running_cluster(bin_dir: Path, workdir: Path, ip: str, load_balancer_pool: str) -> Iterator[RunningCluster]:
    cluster = start_cluster(bin_dir, workdir, ip, load_balancer_pool)
    try:
        yield cluster
    finally:
        cluster.stop()
