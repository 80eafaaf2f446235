"""The two lists of the stack: ``mirrors`` (pull-through caches) and ``nodes`` (SSH access to each node).

Each entry is checked key by key, and the list as a whole (no upstream, port, name or host twice).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..settings import (
    DEFAULT_MIRROR_STORAGE_SIZE,
    DEFAULT_SSH_PORT,
    DEFAULT_SSH_USER,
    NODE_ROLES,
    MirrorSettings,
    NodeSettings,
    SecretText,
)
from .reader import Invalid, fail
from .values import DNS_LABEL, check_dns_name, is_ip_address, parse_int, parse_quantity

_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Host key types pulumi-command can verify with a signature OpenSSH still accepts. With an
# ssh-rsa key it offers only SHA-1 ssh-rsa signatures, which OpenSSH 8.8+ refuses by default.
_SSH_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*$")
_REFUSED_HOST_KEY_TYPES = ("ssh-rsa", "ssh-dss")


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
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def parse_nodes(key: str, value: Any) -> tuple[NodeSettings, ...]:
    if not isinstance(value, list):
        fail("must be a list of nodes, each {name, host, port, user, role}")
    nodes = tuple(_parse_node(index, entry) for index, entry in enumerate(value))
    _check_unique(nodes, lambda node: node.name, "name")
    # DNS names are case-insensitive: CUBE01.lan and cube01.lan are one machine.
    _check_unique(nodes, lambda node: f"{node.host.lower().rstrip('.')}:{node.port}", "host and port")
    return nodes


_MIRROR_KEYS = ("upstream", "url", "port", "username", "password", "storageSize", "ttl", "anonymous")


def mirrors_parser(registry_port: int) -> Callable[[str, Any], tuple[MirrorSettings, ...]]:
    """Parses `mirrors`; a cache without a port gets the next free one after the registry's."""

    def parse(_key: str, value: Any) -> tuple[MirrorSettings, ...]:
        if not isinstance(value, list):
            fail("must be a list of caches, each {upstream, url, port, username, password, storageSize, ttl}")
        entries = [_mirror_entry(index, entry) for index, entry in enumerate(value)]
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
        fail(f"{kind} #{index + 1} must be an object with {needs}, got {entry!r}")
    name = entry.get(name_key)
    where = f"{kind} {name!r}" if isinstance(name, str) and name else f"{kind} #{index + 1}"
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        fail(f"{where}: unknown key(s) {', '.join(unknown)}; a {kind} takes {', '.join(keys)}")
    return where


def _mirror_entry(index: int, entry: Any) -> dict[str, Any]:
    where = _list_entry("cache", index, entry, "upstream", _MIRROR_KEYS, "upstream (like docker.io)")
    upstream = entry.get("upstream")
    if not isinstance(upstream, str) or not _is_registry_name(upstream):
        fail(f"{where}: upstream must be the registry name images are pulled by, like docker.io or ghcr.io")
    upstream = upstream.lower()
    url = entry.get("url", WELL_KNOWN_UPSTREAMS.get(upstream))
    if url is None:
        fail(f"{where}: {upstream} is not a registry this program knows; give its API endpoint in url, like https://{upstream}")
    if not isinstance(url, str) or not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", url):
        fail(f"{where}: url {url!r} must be the upstream's https:// address, like https://registry-1.docker.io")
    port = entry.get("port")
    if port is not None:
        try:
            port = parse_int(1, 65535, "a TCP port")("", port)
        except Invalid as invalid:
            fail(f"{where}: port {invalid}")
    username, password = entry.get("username"), entry.get("password")
    if (username is None) != (password is None):
        fail(f"{where}: give both username and password for an authenticated upstream, or neither")
    if username is not None and (not isinstance(username, str) or not username or not isinstance(password, str)):
        fail(f"{where}: username and password must be strings")
    try:
        storage_size = parse_quantity("", entry.get("storageSize", DEFAULT_MIRROR_STORAGE_SIZE))
    except Invalid as invalid:
        fail(f"{where}: storageSize {invalid}")
    anonymous = entry.get("anonymous", False)
    if not isinstance(anonymous, bool):
        fail(f"{where}: anonymous must be true or false, got {anonymous!r}")
    if anonymous and username is not None:
        fail(
            f"{where}: an anonymous cache cannot hold upstream credentials: anything on the cluster that reaches "
            "it would pull what they can read. Remove username and password, or anonymous"
        )
    ttl = entry.get("ttl")
    if ttl is not None and (not isinstance(ttl, str) or not _DURATION.match(ttl)):
        fail(f"{where}: ttl {ttl!r} is not a duration; use a Go duration such as 168h or 720h, or 0s to keep "
             "cached content until it is deleted by hand (offline use)")
    return {
        "upstream": upstream, "url": url.rstrip("/"), "port": port, "storage_size": storage_size,
        "username": username, "password": SecretText(password) if password is not None else None, "ttl": ttl,
        "anonymous": anonymous,
    }


def _is_registry_name(name: str) -> bool:
    host, _, port = name.partition(":")
    if port and not port.isdigit():
        return False
    try:
        check_dns_name(host.lower(), allow_wildcard=False)
    except Invalid:
        return False
    return "." in host or host == "localhost"


def _check_unique_mirrors(mirrors: list[MirrorSettings], registry_port: int) -> None:
    seen_upstreams: set[str] = set()
    seen_ports: dict[int, str] = {}
    for mirror in mirrors:
        if mirror.upstream in seen_upstreams:
            fail(f"{mirror.upstream} is listed twice; one cache per upstream")
        seen_upstreams.add(mirror.upstream)
        if mirror.port == registry_port:
            fail(f"cache {mirror.upstream!r}: port {mirror.port} is the registry's own port; choose another")
        if mirror.port in seen_ports:
            fail(f"caches {seen_ports[mirror.port]!r} and {mirror.upstream!r} both use port {mirror.port}")
        seen_ports[mirror.port] = mirror.upstream


_NODE_KEYS = ("name", "host", "port", "user", "role", "hostKey")


def _parse_node(index: int, entry: Any) -> NodeSettings:
    where = _list_entry("node", index, entry, "name", _NODE_KEYS, "name, host and role")
    name = entry.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        fail(
            f"{where}: name must be a short lower-case name (letters, digits, hyphens), "
            f"used in resource names, got {name!r}"
        )
    host = entry.get("host")
    if not isinstance(host, str) or not host.strip():
        fail(f"{where}: host is empty; give the node's address or DNS name")
    if not _is_address_or_dns_name(host.strip()):
        fail(f"{where}: host {host!r} is not an address or DNS name; put the user in user and the port in port")
    try:
        port = parse_int(1, 65535, "an SSH port")("", entry.get("port", DEFAULT_SSH_PORT))
    except Invalid as invalid:
        fail(f"{where}: port {invalid}")
    user = entry.get("user", DEFAULT_SSH_USER)
    if not isinstance(user, str) or not _POSIX_USER.match(user):
        fail(f"{where}: user {user!r} is not a valid login name")
    role = entry.get("role")
    if role not in NODE_ROLES:
        fail(f"{where}: role {role!r} is not known; use server (runs k3s) or agent (runs k3s-agent)")
    host_key = entry.get("hostKey")
    if isinstance(host_key, str) and host_key.split()[:1] and host_key.split()[0] in _REFUSED_HOST_KEY_TYPES:
        fail(
            f"{where}: hostKey is an {host_key.split()[0]} key; pulumi-command would verify it with SHA-1 "
            "signatures, which OpenSSH 8.8+ refuses. Pin the node's ed25519 key instead: "
            f"ssh-keyscan -t ed25519 {host.strip()}"
        )
    if host_key is not None and (not isinstance(host_key, str) or not _SSH_PUBLIC_KEY.match(_key_type_and_body(host_key))):
        fail(f"{where}: hostKey must be the node's ed25519 or ECDSA public host key, like 'ssh-ed25519 AAAA...'")
    return NodeSettings(
        name=name,
        host=host.strip(),
        port=port,
        user=user,
        role=role,
        host_key=_key_type_and_body(host_key) if host_key else None,
    )


def _is_address_or_dns_name(host: str) -> bool:
    if is_ip_address(host):
        return True
    try:
        check_dns_name(host.rstrip("."), allow_wildcard=False)
        return True
    except Invalid:
        return False


def _key_type_and_body(host_key: str) -> str:
    return " ".join(host_key.split()[:2])


def _check_unique(nodes: tuple[NodeSettings, ...], identity: Callable[[NodeSettings], str], what: str) -> None:
    seen: dict[str, str] = {}
    for node in nodes:
        key = identity(node)
        if key in seen:
            fail(f"nodes {seen[key]!r} and {node.name!r} have the same {what} ({key}); each node must be listed once")
        seen[key] = node.name

