"""Stack configuration: read once, validated, returned as frozen dataclasses.

Every key lives in the ``k3s-registry:`` namespace. Values arrive from Pulumi as strings
(objects and lists as JSON), so each key is parsed here, by one function, into the type the
components use. Every problem is collected and reported together, each naming the key and
the fix, so a bad stack file fails at ``pulumi preview`` before any resource is declared.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, TypeVar

import pulumi

from . import rotation

PROJECT = "k3s-registry"

DEFAULT_PORT = 5000
DEFAULT_NAMESPACE = "docker-registry"
DEFAULT_STORAGE_SIZE = "15Gi"
# The serving certificate is renewed in an ordinary `pulumi up` (components/rotation.py);
# the CA the nodes trust lives long, so a renewal never touches a node.
DEFAULT_CERT_VALIDITY_DAYS = 365
DEFAULT_CERT_RENEWAL_DAYS = 30
DEFAULT_CA_VALIDITY_DAYS = 3650
DEFAULT_AUTH_USERNAME = "registry"
DEFAULT_KEY_ALGORITHM = "RSA"
# Pinned: a new registry release should be a reviewed change, not a surprise at pod restart.
DEFAULT_IMAGE = "registry:2.8.3"
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "root"
# How long a restarted k3s may take to be active again (and, on a server, to answer on the API)
# before the update stops with that node's name: a Raspberry Pi server needs a minute or two.
DEFAULT_K3S_RESTART_TIMEOUT = 300

KEY_ALGORITHMS = ("RSA", "ECDSA")
NODE_ROLES = ("server", "agent")

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"((:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$"
)
_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HTPASSWD_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Host key types pulumi-command can verify with a signature OpenSSH still accepts. With an
# ssh-rsa key it offers only SHA-1 ssh-rsa signatures, which OpenSSH 8.8+ refuses by default.
_SSH_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*$")
_REFUSED_HOST_KEY_TYPES = ("ssh-rsa", "ssh-dss")


class ConfigError(ValueError):
    """One or more stack configuration values are wrong; the message lists each of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid stack configuration:\n{listing}")


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
    """Which rotation period this evaluation is in (see components/rotation.py)."""


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool
    username: str


# Where each well-known registry serves its API (what a pull-through cache fetches from).
WELL_KNOWN_UPSTREAMS = {
    "docker.io": "https://registry-1.docker.io",
    "ghcr.io": "https://ghcr.io",
    "quay.io": "https://quay.io",
    "registry.k8s.io": "https://registry.k8s.io",
    "gcr.io": "https://gcr.io",
    "public.ecr.aws": "https://public.ecr.aws",
    "mcr.microsoft.com": "https://mcr.microsoft.com",
}
DEFAULT_MIRROR_STORAGE_SIZE = "10Gi"
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


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
    username: Optional[str] = None
    password: Optional[SecretText] = None
    ttl: Optional[str] = None

    @property
    def slug(self) -> str:
        """The upstream as a name part (docker.io -> docker-io)."""
        return re.sub(r"[^a-z0-9]+", "-", self.upstream.lower()).strip("-")


@dataclass(frozen=True)
class RegistrySettings:
    hostname: str
    load_balancer_ip: str
    port: int
    namespace: str
    storage_class: Optional[str]
    storage_size: str
    node_selector: tuple[tuple[str, str], ...]
    image: str
    certificate: CertificateSettings
    auth: AuthSettings = AuthSettings(enabled=True, username=DEFAULT_AUTH_USERNAME)
    existing_claim: Optional[str] = None
    """A volume claim that already holds images (the manual guide's): mounted, never managed."""
    mirrors: tuple[MirrorSettings, ...] = ()

    def mirror_address(self, mirror: MirrorSettings) -> str:
        """``host:port`` of a cache, as k3s's registries.yaml keys it."""
        return f"{self.hostname}:{mirror.port}"

    @property
    def address(self) -> str:
        """``host:port`` as clients and k3s name the registry."""
        return f"{self.hostname}:{self.port}"


@dataclass(frozen=True)
class NodeSettings:
    name: str
    host: str
    port: int
    user: str
    role: str
    host_key: Optional[str] = None


@dataclass(frozen=True)
class NodeAccessSettings:
    nodes: tuple[NodeSettings, ...]
    restart_k3s: bool
    restart_timeout_seconds: int = DEFAULT_K3S_RESTART_TIMEOUT
    migrate_from_guide: bool = False
    """Remove the manual guide's leftovers from every node (its key, certificate, hosts line
    and bare-hostname registries.yaml entry)."""
    # Secret: kept as an Output so it never appears in plain text in state or logs.
    ssh_private_key: Optional[pulumi.Output[str]] = field(default=None, compare=False)


@dataclass(frozen=True)
class StackSettings:
    registry: RegistrySettings
    node_access: NodeAccessSettings


T = TypeVar("T")


class _Reader:
    """Parses raw config strings key by key, collecting problems instead of stopping at one."""

    def __init__(self, raw: Mapping[str, Optional[str]]):
        self._raw = raw
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{PROJECT}:{key}: {message}")

    def value(self, key: str, parse: Callable[[str, Any], T], default: T, *, json_value: bool) -> T:
        text = self._raw.get(key)
        if text is None:
            return default
        try:
            raw_value = json.loads(text) if json_value else text
        except json.JSONDecodeError:
            self.problem(
                key, f"is not valid JSON ({text!r}); set it with `pulumi config set --path` or as YAML in the stack file"
            )
            return default
        try:
            return parse(key, raw_value)
        except _Invalid as invalid:
            self.problem(key, str(invalid))
            return default

    def required(self, key: str, parse: Callable[[str, Any], T], *, hint: str) -> Optional[T]:
        if self._raw.get(key) in (None, ""):
            self.problem(key, f"is required; {hint}")
            return None
        return self.value(key, parse, None, json_value=False)


class _Invalid(Exception):
    pass


def _fail(message: str) -> None:
    raise _Invalid(message)


def parse_int(low: int, high: int, what: str) -> Callable[[str, Any], int]:
    def parse(_key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            _fail(f"must be a whole number ({what}), got {value!r}")
        if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value.strip()):
            _fail(f"must be a whole number ({what}), got {value!r}")
        number = int(value)
        if not low <= number <= high:
            _fail(f"{number} is out of range; use {what} between {low} and {high}")
        return number

    return parse


def parse_bool(_key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    _fail(f"must be true or false, got {value!r}")
    return False


def dns_name_parser(*, allow_wildcard: bool, expectation: str) -> Callable[[str, Any], str]:
    """Parses one DNS name, normalised (trimmed, no final dot, lower case)."""

    def parse(_key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            _fail(f"{expectation}, got {value!r}")
        name = value.strip().rstrip(".").lower()
        _check_dns_name(name, allow_wildcard=allow_wildcard)
        return name

    return parse


parse_hostname = dns_name_parser(allow_wildcard=False, expectation="must be a DNS name such as registry.example.lan")
parse_dns_name_or_wildcard = dns_name_parser(allow_wildcard=True, expectation="entries must be DNS names")


def parse_ip(_key: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        _fail(f"{value!r} is not an IP address; use an address such as 192.168.0.202")
        return ""


def _check_dns_name(name: str, *, allow_wildcard: bool) -> None:
    labels = name.split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        wildcard = " (a wildcard only as the first label, like *.cube.local)" if allow_wildcard else ""
        _fail(
            f"{name!r} is not a valid DNS name; use letters, digits and hyphens in dot-separated "
            f"labels of at most 63 characters{wildcard}"
        )
    if labels[-1].isdigit():
        _fail(f"{name!r} looks like an IP address; put addresses in the IP settings, not DNS names")


def parse_string_list(item: Callable[[str, Any], str]) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            _fail(f"must be a list, got {value!r}")
        return tuple(item(key, element) for element in value)

    return parse


def parse_namespace(_key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        _fail(
            f"{value!r} is not a valid namespace name; use at most 63 lower-case letters, digits "
            "and hyphens, starting and ending with a letter or digit"
        )
    return value


def object_name_parser(what: str, *, when_empty: str, shape: str) -> Callable[[str, Any], str]:
    """Parses the name of a Kubernetes object (a DNS subdomain in lower case)."""

    def parse(_key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            _fail(when_empty)
        try:
            _check_dns_name(value, allow_wildcard=False)
        except _Invalid:
            _fail(f"{value!r} is not a valid {what} name ({shape})")
        if value != value.lower():
            _fail(f"{value!r} is not a valid {what} name; use lower case")
        return value

    return parse


parse_storage_class = object_name_parser(
    "storage class", when_empty="must be a storage class name; omit the key to use the cluster's default class",
    shape="a DNS subdomain, like longhorn",
)
parse_claim_name = object_name_parser(
    "volume claim", when_empty="must be the name of a volume claim in the namespace, like longhorn-docker-registry-pvc",
    shape="lower-case letters, digits, '-' and '.'",
)


def parse_quantity(_key: str, value: Any) -> str:
    match = _QUANTITY.match(str(value).strip()) if isinstance(value, (str, int)) else None
    if not match or float(match.group("number")) <= 0:
        _fail(f"{value!r} is not a storage size; use a Kubernetes quantity such as 15Gi or 500Mi")
    return str(value).strip()


def parse_node_selector(_key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        _fail(f"must be an object of label: value pairs, like {{node-type: worker}}, got {value!r}")
    for label, label_value in value.items():
        _check_label_key(label)
        if not isinstance(label_value, str) or (label_value and not _LABEL_NAME.match(label_value)):
            _fail(
                f"label {label!r} has value {label_value!r}; label values are strings of at most "
                "63 letters, digits, '-', '_' or '.'"
            )
    return tuple(sorted(value.items()))


def _check_label_key(label: Any) -> None:
    prefix, _, name = str(label).rpartition("/")
    valid_prefix = not prefix or (len(prefix) <= 253 and all(_DNS_LABEL.match(p) for p in prefix.split(".")))
    if not isinstance(label, str) or not valid_prefix or not _LABEL_NAME.match(name):
        _fail(f"{label!r} is not a valid label key, like node-type or example.com/zone")


def parse_auth_username(_key: str, value: Any) -> str:
    if not isinstance(value, str) or not _HTPASSWD_USER.match(value):
        _fail(f"{value!r} is not a usable user name; use up to 64 letters, digits, '.', '_' or '-'")
    return value


def parse_key_algorithm(_key: str, value: Any) -> str:
    algorithm = str(value).strip().upper()
    if algorithm not in KEY_ALGORITHMS:
        _fail(f"{value!r} is not supported; use RSA (4096 bits) or ECDSA (P-256)")
    return algorithm


def parse_image(_key: str, value: Any) -> str:
    if not isinstance(value, str) or not _IMAGE_REFERENCE.match(value):
        _fail(f"{value!r} is not an image reference; use a name with a tag, like registry:2.8.3")
    return value


def parse_nodes(key: str, value: Any) -> tuple[NodeSettings, ...]:
    if not isinstance(value, list):
        _fail("must be a list of nodes, each {name, host, port, user, role}")
    nodes = tuple(_parse_node(index, entry) for index, entry in enumerate(value))
    _check_unique(nodes, lambda node: node.name, "name")
    # DNS names are case-insensitive: CUBE01.lan and cube01.lan are one machine.
    _check_unique(nodes, lambda node: f"{node.host.lower().rstrip('.')}:{node.port}", "host and port")
    return nodes


_MIRROR_KEYS = ("upstream", "url", "port", "username", "password", "storageSize", "ttl")


def mirrors_parser(registry_port: int, image: str) -> Callable[[str, Any], tuple[MirrorSettings, ...]]:
    """Parses `mirrors`; a cache without a port gets the next free one after the registry's."""

    def parse(_key: str, value: Any) -> tuple[MirrorSettings, ...]:
        if not isinstance(value, list):
            _fail("must be a list of caches, each {upstream, url, port, username, password, storageSize, ttl}")
        entries = [_mirror_entry(index, entry, image) for index, entry in enumerate(value)]
        taken = {registry_port} | {entry["port"] for entry in entries if entry["port"] is not None}
        mirrors = []
        for entry in entries:
            port = entry["port"]
            if port is None:
                port = registry_port + 1
                while port in taken:
                    port += 1
                taken.add(port)
            mirrors.append(MirrorSettings(**{**entry, "port": port}))
        _check_unique_mirrors(mirrors, registry_port)
        return tuple(mirrors)

    return parse


def _list_entry(kind: str, index: int, entry: Any, name_key: str, keys: tuple[str, ...], needs: str) -> str:
    """Checks one object of a list setting; returns how messages name it ("node 'cube01'", "cache #2")."""
    if not isinstance(entry, dict):
        _fail(f"{kind} #{index + 1} must be an object with {needs}, got {entry!r}")
    name = entry.get(name_key)
    where = f"{kind} {name!r}" if isinstance(name, str) and name else f"{kind} #{index + 1}"
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        _fail(f"{where}: unknown key(s) {', '.join(unknown)}; a {kind} takes {', '.join(keys)}")
    return where


def _mirror_entry(index: int, entry: Any, image: str) -> dict[str, Any]:
    where = _list_entry("cache", index, entry, "upstream", _MIRROR_KEYS, "upstream (like docker.io)")
    upstream = entry.get("upstream")
    if not isinstance(upstream, str) or not _is_registry_name(upstream):
        _fail(f"{where}: upstream must be the registry name images are pulled by, like docker.io or ghcr.io")
    upstream = upstream.lower()
    url = entry.get("url", WELL_KNOWN_UPSTREAMS.get(upstream))
    if url is None:
        _fail(f"{where}: {upstream} is not a registry this program knows; give its API endpoint in url, like https://{upstream}")
    if not isinstance(url, str) or not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", url):
        _fail(f"{where}: url {url!r} must be the upstream's https:// address, like https://registry-1.docker.io")
    port = entry.get("port")
    if port is not None:
        try:
            port = parse_int(1, 65535, "a TCP port")("", port)
        except _Invalid as invalid:
            _fail(f"{where}: port {invalid}")
    username, password = entry.get("username"), entry.get("password")
    if (username is None) != (password is None):
        _fail(f"{where}: give both username and password for an authenticated upstream, or neither")
    if username is not None and (not isinstance(username, str) or not username or not isinstance(password, str)):
        _fail(f"{where}: username and password must be strings")
    try:
        storage_size = parse_quantity("", entry.get("storageSize", DEFAULT_MIRROR_STORAGE_SIZE))
    except _Invalid as invalid:
        _fail(f"{where}: storageSize {invalid}")
    ttl = entry.get("ttl")
    if ttl is not None:
        if not isinstance(ttl, str) or not _DURATION.match(ttl):
            _fail(f"{where}: ttl {ttl!r} is not a duration; use a Go duration such as 168h or 720h")
        if not _image_major_at_least(image, 3):
            _fail(
                f"{where}: ttl needs registry 3 (image registry:3.x); the registry 2.8 in {image} keeps "
                "cached content 168h and cannot be told otherwise. Remove ttl or use a registry 3 image"
            )
    return {
        "upstream": upstream, "url": url.rstrip("/"), "port": port, "storage_size": storage_size,
        "username": username, "password": SecretText(password) if password is not None else None, "ttl": ttl,
    }


def _is_registry_name(name: str) -> bool:
    host, _, port = name.partition(":")
    if port and not port.isdigit():
        return False
    try:
        _check_dns_name(host.lower(), allow_wildcard=False)
    except _Invalid:
        return False
    return "." in host or host == "localhost"


def _image_major_at_least(image: str, major: int) -> bool:
    tag = image.split("@", 1)[0].rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    first = tag.split(".", 1)[0]
    return first.isdigit() and int(first) >= major


def _check_unique_mirrors(mirrors: list[MirrorSettings], registry_port: int) -> None:
    seen_upstreams: set[str] = set()
    seen_ports: dict[int, str] = {}
    for mirror in mirrors:
        if mirror.upstream in seen_upstreams:
            _fail(f"{mirror.upstream} is listed twice; one cache per upstream")
        seen_upstreams.add(mirror.upstream)
        if mirror.port == registry_port:
            _fail(f"cache {mirror.upstream!r}: port {mirror.port} is the registry's own port; choose another")
        if mirror.port in seen_ports:
            _fail(f"caches {seen_ports[mirror.port]!r} and {mirror.upstream!r} both use port {mirror.port}")
        seen_ports[mirror.port] = mirror.upstream


_NODE_KEYS = ("name", "host", "port", "user", "role", "hostKey")


def _parse_node(index: int, entry: Any) -> NodeSettings:
    where = _list_entry("node", index, entry, "name", _NODE_KEYS, "name, host and role")
    name = entry.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        _fail(
            f"{where}: name must be a short lower-case name (letters, digits, hyphens), "
            f"used in resource names, got {name!r}"
        )
    host = entry.get("host")
    if not isinstance(host, str) or not host.strip():
        _fail(f"{where}: host is empty; give the node's address or DNS name")
    if not _is_address_or_dns_name(host.strip()):
        _fail(f"{where}: host {host!r} is not an address or DNS name; put the user in user and the port in port")
    try:
        port = parse_int(1, 65535, "an SSH port")("", entry.get("port", DEFAULT_SSH_PORT))
    except _Invalid as invalid:
        _fail(f"{where}: port {invalid}")
    user = entry.get("user", DEFAULT_SSH_USER)
    if not isinstance(user, str) or not _POSIX_USER.match(user):
        _fail(f"{where}: user {user!r} is not a valid login name")
    role = entry.get("role")
    if role not in NODE_ROLES:
        _fail(f"{where}: role {role!r} is not known; use server (runs k3s) or agent (runs k3s-agent)")
    host_key = entry.get("hostKey")
    if isinstance(host_key, str) and host_key.split()[:1] and host_key.split()[0] in _REFUSED_HOST_KEY_TYPES:
        _fail(
            f"{where}: hostKey is an {host_key.split()[0]} key; pulumi-command would verify it with SHA-1 "
            "signatures, which OpenSSH 8.8+ refuses. Pin the node's ed25519 key instead: "
            f"ssh-keyscan -t ed25519 {host.strip()}"
        )
    if host_key is not None and (not isinstance(host_key, str) or not _SSH_PUBLIC_KEY.match(_key_type_and_body(host_key))):
        _fail(f"{where}: hostKey must be the node's ed25519 or ECDSA public host key, like 'ssh-ed25519 AAAA...'")
    return NodeSettings(
        name=name,
        host=host.strip(),
        port=port,
        user=user,
        role=role,
        host_key=_key_type_and_body(host_key) if host_key else None,
    )


def _is_address_or_dns_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        _check_dns_name(host.rstrip("."), allow_wildcard=False)
        return True
    except _Invalid:
        return False


def _key_type_and_body(host_key: str) -> str:
    return " ".join(host_key.split()[:2])


def _check_unique(nodes: tuple[NodeSettings, ...], identity: Callable[[NodeSettings], str], what: str) -> None:
    seen: dict[str, str] = {}
    for node in nodes:
        key = identity(node)
        if key in seen:
            _fail(f"nodes {seen[key]!r} and {node.name!r} have the same {what} ({key}); each node must be listed once")
        seen[key] = node.name


KNOWN_KEYS = (
    "hostname",
    "loadBalancerIp",
    "port",
    "namespace",
    "storageClass",
    "storageSize",
    "nodeSelector",
    "certDnsNames",
    "certIpAddresses",
    "certValidityDays",
    "keyAlgorithm",
    "caValidityDays",
    "certRenewalDays",
    "auth",
    "authUsername",
    "image",
    "nodes",
    "sshPrivateKey",
    "restartK3s",
    "k3sRestartTimeout",
    "existingClaim",
    "migrateFromGuide",
    "mirrors",
)


SECRET_KEYS = ("sshPrivateKey",)


def parse_settings(
    raw: Mapping[str, Optional[str]],
    ssh_private_key: Optional[pulumi.Output[str]] = None,
    now: Optional[dt.datetime] = None,
    secret_keys: Optional[frozenset[str]] = None,
) -> StackSettings:
    """Turns raw config strings (key without namespace -> value) into validated settings.

    ``now`` places the evaluation in a certificate rotation period (default: the clock).
    ``secret_keys``: the keys the stack sets as secrets; a key holding a secret (the SSH key, a
    cache's password) must be one of them. None: not known, not checked.
    """
    read = _Reader(raw)
    for key in sorted(set(raw) - set(KNOWN_KEYS)):
        read.problem(key, f"is not a setting of this program; known settings: {', '.join(KNOWN_KEYS)}")

    def require_secret(key: str, how: str) -> None:
        # Pulumi.yaml cannot declare these `secret: true` (the CLI would then require them).
        if secret_keys is not None and key not in secret_keys:
            read.problem(key, f"holds a secret in plain text in the stack file; remove it and set it encrypted: {how}")

    if ssh_private_key is not None:
        require_secret("sshPrivateKey", "pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519")

    hostname = read.required("hostname", parse_hostname, hint="set the registry's DNS name, e.g. registry.cube.local")
    load_balancer_ip = read.required(
        "loadBalancerIp", parse_ip, hint="set the IP MetalLB should give the registry, e.g. 192.168.0.202"
    )
    port = read.value("port", parse_int(1, 65535, "a TCP port"), DEFAULT_PORT, json_value=False)
    no_names: tuple[str, ...] = ()
    dns_names = read.value("certDnsNames", parse_string_list(parse_dns_name_or_wildcard), no_names, json_value=True)
    ip_addresses = read.value("certIpAddresses", parse_string_list(parse_ip), no_names, json_value=True)
    validity_days = read.value(
        "certValidityDays", parse_int(2, 3650, "a number of days"), DEFAULT_CERT_VALIDITY_DAYS, json_value=False
    )
    renewal_days = read.value(
        "certRenewalDays", parse_int(1, 3649, "a number of days"), DEFAULT_CERT_RENEWAL_DAYS, json_value=False
    )
    ca_validity_days = read.value(
        "caValidityDays", parse_int(1, 36500, "a number of days"), DEFAULT_CA_VALIDITY_DAYS, json_value=False
    )
    if renewal_days >= validity_days:
        read.problem(
            "certRenewalDays",
            f"{renewal_days} days is not shorter than certValidityDays ({validity_days}); "
            "renew some days before the certificate expires, e.g. 30 of 365",
        )
    elif validity_days > ca_validity_days:
        read.problem(
            "certValidityDays",
            f"{validity_days} days outlives the CA (caValidityDays {ca_validity_days}); "
            "make the serving certificate shorter-lived than the CA",
        )
    certificate = CertificateSettings(
        common_name=hostname or "",
        dns_names=_unique((hostname,) + dns_names if hostname else dns_names),
        ip_addresses=_unique((load_balancer_ip,) + ip_addresses if load_balancer_ip else ip_addresses),
        validity_days=validity_days,
        key_algorithm=read.value("keyAlgorithm", parse_key_algorithm, DEFAULT_KEY_ALGORITHM, json_value=False),
        ca_validity_days=ca_validity_days,
        renewal_days=renewal_days,
        rotation=rotation.rotation_number(now or rotation.utcnow(), validity_days, renewal_days)
        if renewal_days < validity_days
        else 0,
    )
    image = read.value("image", parse_image, DEFAULT_IMAGE, json_value=False)
    auth_enabled = read.value("auth", parse_bool, True, json_value=False)
    # The CLI injects Pulumi.yaml's default into every stack, so "set" cannot be told from
    # "defaulted": with auth off the user name is simply not used.
    auth_username = read.value("authUsername", parse_auth_username, DEFAULT_AUTH_USERNAME, json_value=False)
    registry = RegistrySettings(
        hostname=hostname or "",
        load_balancer_ip=load_balancer_ip or "",
        port=port,
        namespace=read.value("namespace", parse_namespace, DEFAULT_NAMESPACE, json_value=False),
        storage_class=read.value("storageClass", parse_storage_class, None, json_value=False),
        storage_size=read.value("storageSize", parse_quantity, DEFAULT_STORAGE_SIZE, json_value=False),
        node_selector=read.value("nodeSelector", parse_node_selector, (), json_value=True),
        image=image,
        certificate=certificate,
        auth=AuthSettings(enabled=auth_enabled, username=auth_username),
        existing_claim=read.value("existingClaim", parse_claim_name, None, json_value=False),
        mirrors=read.value("mirrors", mirrors_parser(port, image), (), json_value=True),
    )
    if any(mirror.password is not None for mirror in registry.mirrors):
        # A nested secret (set with --secret --path) makes the whole key a secret.
        require_secret("mirrors", "pulumi config set --secret --path 'mirrors[0].password'")
    if registry.existing_claim is not None and registry.storage_class is not None:
        read.problem(
            "storageClass",
            f"is not used with existingClaim ({registry.existing_claim}): the claim already has its class; "
            "remove storageClass",
        )
    node_access = NodeAccessSettings(
        nodes=read.value("nodes", parse_nodes, (), json_value=True),
        restart_k3s=read.value("restartK3s", parse_bool, True, json_value=False),
        restart_timeout_seconds=read.value(
            "k3sRestartTimeout", parse_int(5, 3600, "a number of seconds"), DEFAULT_K3S_RESTART_TIMEOUT,
            json_value=False,
        ),
        migrate_from_guide=read.value("migrateFromGuide", parse_bool, False, json_value=False),
        ssh_private_key=ssh_private_key,
    )
    if read.problems:
        raise ConfigError(read.problems)
    return StackSettings(registry=registry, node_access=node_access)


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def load_settings(config: Optional[pulumi.Config] = None) -> StackSettings:
    """Reads this project's stack configuration from Pulumi and validates it."""
    from pulumi.runtime import config as runtime_config

    config = config or pulumi.Config(PROJECT)
    present = _configured_keys()
    raw = {key: config.get(key) for key in present if key not in SECRET_KEYS}
    ssh_private_key = config.get_secret("sshPrivateKey") if "sshPrivateKey" in present else None
    secret_keys = frozenset(key for key in present if runtime_config.is_config_secret(f"{PROJECT}:{key}"))
    return parse_settings(raw, ssh_private_key, secret_keys=secret_keys)


def _configured_keys() -> set[str]:
    """Keys set for this project, including unknown ones, so typos are reported, not ignored."""
    from pulumi.runtime import config as runtime_config

    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{PROJECT}:"
    keys = {name[len(prefix):] for name in names if name.startswith(prefix)}
    return keys | {key for key in KNOWN_KEYS if runtime_config.get_config(prefix + key) is not None}
