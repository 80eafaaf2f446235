"""The settings the components read: frozen dataclasses, and what each setting is when unset.

components/config/ parses the stack configuration into these and reports every mistake; the
components take them as arguments and never read ``pulumi.Config`` themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pulumi

DEFAULT_PORT = 5000
DEFAULT_NAMESPACE = "docker-registry"
DEFAULT_STORAGE_SIZE = "15Gi"
# The serving certificate is renewed in an ordinary `pulumi up` (components/cluster/rotation.py);
# the CA the nodes trust lives long, so a renewal never touches a node.
DEFAULT_CERT_VALIDITY_DAYS = 365
DEFAULT_CERT_RENEWAL_DAYS = 30
DEFAULT_CA_VALIDITY_DAYS = 3650
DEFAULT_AUTH_USERNAME = "registry"
DEFAULT_KEY_ALGORITHM = "RSA"
# Pinned: a new registry release should be a reviewed change, not a surprise at pod restart.
# The newest 3.x docker-library's official-images file lists for library/registry ("Tags: 3.1.1,
# 3.1, 3, latest"; built for amd64, arm64v8, arm32v6, arm32v7 and more); the tests run the same
# release, built from its module by scripts/toolchain (toolchain/pins: registry).
DEFAULT_IMAGE = "registry:3.1.1"
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "root"
# How long a restarted k3s may take to be active again (and, on a server, to answer on the API)
# before the update stops with that node's name: a Raspberry Pi server needs a minute or two.
DEFAULT_K3S_RESTART_TIMEOUT = 300
# How long `up` waits for a Deployment to be ready and a Service to get its address: a pod that
# never schedules (a nodeSelector no node matches) or a Service MetalLB never serves fails the
# update within this, naming the object (pulumi-kubernetes waits 10 minutes otherwise).
DEFAULT_ROLLOUT_TIMEOUT = 300

# k3s's default --cluster-cidr: the pod network, where node traffic to a Service arrives from
# once kube-proxy has masqueraded it (see components/cluster/network.py).
DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"

KEY_ALGORITHMS = ("RSA", "ECDSA")
NODE_ROLES = ("server", "agent")


@dataclass(frozen=True)
class CertificateSettings:
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    validity_days: int
    key_algorithm: str
    ca_validity_days: int = DEFAULT_CA_VALIDITY_DAYS
    renewal_days: int = DEFAULT_CERT_RENEWAL_DAYS
    rotation: int = 0
    """Which rotation period this evaluation is in (see components/cluster/rotation.py)."""


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool
    username: str


DEFAULT_MIRROR_STORAGE_SIZE = "10Gi"


@dataclass(frozen=True)
class SecretText:
    """A secret value read from the stack (set with --secret): never shown in a repr or message."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class MirrorSettings:
    """A pull-through cache of one upstream registry, served on its own port of the registry's IP."""

    upstream: str
    url: str
    port: int
    storage_size: str = DEFAULT_MIRROR_STORAGE_SIZE
    username: str | None = None
    password: SecretText | None = None
    ttl: str | None = None
    anonymous: bool = False
    """Nodes pull without credentials, and only the cluster's nodes can reach it (see
    components/cluster/network.py): with a password, a pod's imagePullSecret makes containerd
    send that secret instead, the cache refuses it, and the pull bypasses the cache."""

    @property
    def slug(self) -> str:
        """The upstream as a name part (docker.io -> docker-io)."""
        return re.sub(r"[^a-z0-9]+", "-", self.upstream.lower()).strip("-")


DEFAULT_MONITORING_NAMESPACE = "monitoring"


@dataclass(frozen=True)
class MonitoringSettings:
    """Prometheus Operator objects for the registry (``monitoring``)."""

    enabled: bool = False
    namespace: str = DEFAULT_MONITORING_NAMESPACE
    """Where Prometheus runs: the only namespace the metrics port admits."""
    labels: tuple[tuple[str, str], ...] = ()
    """On the ServiceMonitor and PrometheusRule, for the Prometheus that selects them."""


DEFAULT_RETENTION_PROTECT = ("latest",)
DEFAULT_RETENTION_SCHEDULE = "0 3 * * *"
DEFAULT_RETENTION_TIME_ZONE = "Etc/UTC"
RETENTION_USERNAME = "retention"
"""The registry user the retention job logs in as (its own password, in its own Secret)."""


@dataclass(frozen=True)
class RetentionSettings:
    """Which tags the scheduled retention job deletes (``retention``): per repository, every tag
    that is not protected, not among the ``keep_last`` most recent and not younger than
    ``keep_days`` days. At least one of the two is set."""

    keep_last: int | None = None
    keep_days: int | None = None
    protect: tuple[str, ...] = DEFAULT_RETENTION_PROTECT
    """Tag globs (``*``, ``?``, ``[...]``) that are never deleted."""
    schedule: str = DEFAULT_RETENTION_SCHEDULE
    """When the CronJob runs (cron syntax, in ``time_zone``)."""
    time_zone: str = DEFAULT_RETENTION_TIME_ZONE
    dry_run: bool = False
    """List what would go (the job's log), delete nothing."""


# Sunday 03:30: after the default retention run (03:00), in the quietest hour of the week.
DEFAULT_GARBAGE_COLLECTION_SCHEDULE = "30 3 * * 0"
DEFAULT_GARBAGE_COLLECTION_TIME_ZONE = "Etc/UTC"


@dataclass(frozen=True)
class GarbageCollectionSettings:
    """distribution's garbage collector, run before the registry serves (``garbageCollection``):
    at every start of its pod, and at a restart on ``schedule``, so a running registry never
    has a collector beside it."""

    enabled: bool = True
    schedule: str = DEFAULT_GARBAGE_COLLECTION_SCHEDULE
    """When the registry is restarted (cron syntax, in ``time_zone``)."""
    time_zone: str = DEFAULT_GARBAGE_COLLECTION_TIME_ZONE


@dataclass(frozen=True)
class RegistrySettings:
    hostname: str
    load_balancer_ip: str
    port: int
    namespace: str
    storage_class: str | None
    storage_size: str
    node_selector: tuple[tuple[str, str], ...]
    image: str
    certificate: CertificateSettings
    auth: AuthSettings = AuthSettings(enabled=True, username=DEFAULT_AUTH_USERNAME)
    existing_claim: str | None = None
    """A volume claim that already holds images (the manual guide's): mounted, never managed."""
    mirrors: tuple[MirrorSettings, ...] = ()
    delete_enabled: bool = True
    """Clients with the credentials may delete manifests (distribution's storage.delete.enabled)."""
    node_addresses: tuple[str, ...] = ()
    """The configured nodes' IP addresses: with the pod network, all an anonymous cache admits."""
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    """The pod network (k3s --cluster-cidr)."""
    rollout_timeout_seconds: int = DEFAULT_ROLLOUT_TIMEOUT
    """How long `up` waits for each Deployment to be ready and each Service to get its address."""
    monitoring: MonitoringSettings = MonitoringSettings()
    retention: RetentionSettings | None = None
    """The scheduled tag retention job; none by default."""
    garbage_collection: GarbageCollectionSettings = GarbageCollectionSettings()

    @property
    def deletes_untagged(self) -> bool:
        """The collector also removes manifests no tag names: only when retention is on (and
        deletes, not a dry run), the setting that says old images may go."""
        return self.retention is not None and not self.retention.dry_run

    def mirror_address(self, mirror: MirrorSettings) -> str:
        """A cache's address, as k3s's registries.yaml keys it (see reference_host)."""
        return reference_host(self.hostname, mirror.port)

    @property
    def address(self) -> str:
        """The registry's address as clients and k3s name it (see reference_host)."""
        return reference_host(self.hostname, self.port)


HTTPS_PORT = 443


def reference_host(hostname: str, port: int) -> str:
    """``host:port``, or the bare host name on 443: what an image reference carries.

    An image on 443 is written ``host/name`` (no port), and containerd looks its hosts
    configuration up by the reference's host as written (containerd core/remotes/docker/config
    hosts.go, HostDirFromRoot and hostPaths): an entry keyed ``host:443`` would never apply,
    and neither would the CA and credentials k3s puts with it.
    """
    return hostname if port == HTTPS_PORT else f"{hostname}:{port}"


@dataclass(frozen=True)
class NodeSettings:
    name: str
    host: str
    port: int
    user: str
    role: str
    host_key: str | None = None


@dataclass(frozen=True)
class NodeAccessSettings:
    nodes: tuple[NodeSettings, ...]
    restart_k3s: bool
    restart_timeout_seconds: int = DEFAULT_K3S_RESTART_TIMEOUT
    migrate_from_guide: bool = False
    """Remove the manual guide's leftovers from every node (its key, certificate, hosts line
    and bare-hostname registries.yaml entry)."""
    os_trust_store: bool = False
    """Also put the CA in each node's OS trust store. Off by default: k3s's containerd gets the
    CA through registries.yaml's ca_file, and a CA in the OS store is trusted by every TLS client
    on the node for every name (pulumi-tls cannot give it X.509 name constraints) while its key
    is in the Pulumi state."""
    # Secret: kept as an Output so it never appears in plain text in state or logs.
    ssh_private_key: pulumi.Output[str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StackSettings:
    registry: RegistrySettings
    node_access: NodeAccessSettings

