"""Where this program keeps its files on a node, named per instance (one per stack)."""

from __future__ import annotations

from dataclasses import dataclass

STATE_ROOT = "/var/lib/k3s-registry"
K3S_CONFIG_DIR = "/etc/rancher/k3s"


@dataclass(frozen=True)
class NodeTarget:
    """What the scripts need to know about the node and this program's instance on it."""

    node_name: str
    role: str
    instance_id: str
    owner: str = ""
    """Which resource manages the steps (its parent's URN): a delete leaves a step another owns."""

    def owner_file(self, step: str) -> str:
        return f"{STATE_ROOT}/{self.instance_id}-{step}.owner"

    @property
    def state_dir(self) -> str:
        return f"{STATE_ROOT}/{self.instance_id}"

    @property
    def anchor_file_name(self) -> str:
        return f"k3s-registry-{self.instance_id}.crt"

    @property
    def k3s_ca_file(self) -> str:
        return f"{K3S_CONFIG_DIR}/k3s-registry-{self.instance_id}-ca.crt"

    @property
    def hosts_marker(self) -> str:
        return f"# managed by k3s-registry ({self.instance_id})"
