"""What k3s's agent gives its containerd for a registries.yaml: hosts.toml files and the CRI
plugin's registry settings, transcribed from k3s.

k3s's own code cannot be built here: the module proxy refuses github.com/k3s-io/k3s (403), so
this is a transcription of k3s-io/k3s ``pkg/agent/containerd/config.go`` (getHostConfigs,
normalizeEndpointAddress, defaultHostConfig, configForHost, endpointHasConfig: which host
gets a hosts.toml, with which endpoints, CA files and default server) and of the fields its
hosts.toml and config.toml templates write (``pkg/agent/templates``: ``[host."URL"]`` with
``capabilities = ["pull", "resolve"]``, ``override_path``, ``ca``, ``client``, ``skip_verify``,
``rewrite``; ``server`` for the default endpoint, and a stub ``[host]`` table (k3s-io/k3s#9853);
credentials only in config.toml, under
``plugins."io.containerd.grpc.v1.cri".registry.configs."HOST".auth``, since hosts.toml has no
credentials). What it reads is what k3s reads: the JSON that wharfie-registries (rancher/
wharfie's own parser, built by scripts/toolchain) prints for the file. The embedded mirror
(Spegel) is not modelled: it is off unless k3s runs with --embedded-registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DOCKER_IO, DOCKER_IO_HOST = "docker.io", "registry-1.docker.io"


def default_host(host: str) -> str:
    """containerd's docker.DefaultHost: docker.io is served by registry-1.docker.io."""
    return DOCKER_IO_HOST if host == DOCKER_IO else host


def _is_localhost(host: str) -> bool:
    """containerd's docker.IsLocalhost: localhost or a loopback address, with or without a port."""
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    return name == "localhost" or name.startswith("127.") or name == "::1"


@dataclass
class Endpoint:
    url: str | None
    config: dict[str, Any]
    override_path: bool = False
    rewrites: dict[str, str] = field(default_factory=dict)


@dataclass
class HostConfig:
    default: Endpoint | None
    endpoints: list[Endpoint] = field(default_factory=list)


def normalize_endpoint(endpoint: str) -> tuple[str, str, bool]:
    """normalizeEndpointAddress: (registry name, endpoint URL, override_path)."""
    if "://" not in endpoint:
        endpoint = "//" + endpoint
    parts = urlsplit(endpoint)
    scheme = parts.scheme
    if not scheme:
        scheme = "http" if _is_localhost(parts.netloc) and parts.port not in (None, 443) else "https"
    registry = parts.netloc
    host = default_host(registry)
    if host == DOCKER_IO_HOST:
        registry = DOCKER_IO
    if parts.path in ("", "/", "/v2"):
        return registry, urlunsplit((scheme, host, "/v2", "", "")), False
    return registry, urlunsplit((scheme, host, parts.path, "", "")), True


def config_for_host(configs: dict[str, Any], host: str) -> dict[str, Any]:
    modified = default_host(host)
    if modified != host and modified in configs:
        return configs[modified] or {}
    return configs.get(host) or {}


def _has_config(endpoint: Endpoint | None) -> bool:
    if endpoint is None:
        return False
    return bool(endpoint.override_path or endpoint.config.get("auth") or endpoint.config.get("tls") or endpoint.rewrites)


def host_configs(registry: dict[str, Any], no_default_endpoint: bool = False) -> dict[str, HostConfig]:
    """getHostConfigs: one HostConfig per registry host that needs a hosts.toml."""
    configs: dict[str, Any] = registry.get("configs") or {}
    mirrors: dict[str, Any] = registry.get("mirrors") or {}
    hosts: dict[str, HostConfig] = {}
    for host, config in configs.items():
        url = None if host == "*" else normalize_endpoint(host)[1]
        hosts["_default" if host == "*" else host] = HostConfig(Endpoint(url, config or {}))
    for host, mirror in mirrors.items():
        key = "_default" if host == "*" else host
        if key in hosts:
            entry = hosts[key]
        else:
            # A mirror for "*" gets an empty default URL (k3s: &url.URL{}), unless there is none at all.
            url = "" if host == "*" else normalize_endpoint(host)[1]
            entry = HostConfig(None if no_default_endpoint else Endpoint(url, config_for_host(configs, host)))
        seen: set[str] = set()
        endpoints = (mirror or {}).get("endpoint") or []
        for index, address in enumerate(endpoints):
            name, url, override = normalize_endpoint(address)
            if url in seen:
                continue
            seen.add(url)
            endpoint = Endpoint(url, config_for_host(configs, name), override, dict((mirror or {}).get("rewrite") or {}))
            if index + 1 == len(endpoints) and entry.default is not None and entry.default.url == endpoint.url:
                entry.default = endpoint
            else:
                entry.endpoints.append(endpoint)
        hosts[key] = entry
    return {host: entry for host, entry in hosts.items() if entry.endpoints or _has_config(entry.default)}


def _tls_lines(config: dict[str, Any], indent: str) -> list[str]:
    tls = config.get("tls") or {}
    lines = []
    if tls.get("ca_file"):
        lines.append(f"{indent}ca = [{json.dumps(tls['ca_file'])}]")
    if tls.get("cert_file") or tls.get("key_file"):
        lines.append(f"{indent}client = [[{json.dumps(tls.get('cert_file', ''))}, {json.dumps(tls.get('key_file', ''))}]]")
    if tls.get("insecure_skip_verify"):
        lines.append(f"{indent}skip_verify = true")
    return lines


def hosts_toml(config: HostConfig) -> str:
    """The hosts.toml k3s writes for one host (its template's fields, strings quoted like %q)."""
    lines = ["# File generated by k3s. DO NOT EDIT."]
    if config.default is not None and config.default.url:
        lines.append(f"server = {json.dumps(config.default.url)}")
        lines.append('capabilities = ["pull", "resolve", "push"]')
        lines += _tls_lines(config.default.config, "")
    # A stub host tree: containerd 1.6 and 1.7 refuse a hosts.toml without one ("invalid `host`
    # tree", containerd/containerd#10027), and k3s writes it since k3s-io/k3s#9853.
    lines += ["", "[host]"]
    for endpoint in config.endpoints:
        lines += ["", f"[host.{json.dumps(endpoint.url)}]", '  capabilities = ["pull", "resolve"]']
        if endpoint.override_path:
            lines.append("  override_path = true")
        lines += _tls_lines(endpoint.config, "  ")
        if endpoint.rewrites:
            lines.append(f"  [host.{json.dumps(endpoint.url)}.rewrite]")
            lines += [f"    {json.dumps(pattern)} = {json.dumps(replace)}" for pattern, replace in endpoint.rewrites.items()]
    return "\n".join(lines) + "\n"


def write_hosts_dir(registry: dict[str, Any], certs_dir: Path) -> dict[str, str]:
    """Writes ``certs_dir/<host>/hosts.toml`` for every host; returns them by host."""
    written = {}
    for host, config in host_configs(registry).items():
        text = hosts_toml(config)
        (certs_dir / host).mkdir(parents=True, exist_ok=True)
        (certs_dir / host / "hosts.toml").write_text(text)
        written[host] = text
    return written


def registry_auth_toml(registry: dict[str, Any]) -> str:
    """The CRI plugin's credentials per registry host, as k3s's config.toml template writes them."""
    lines = []
    for host, config in (registry.get("configs") or {}).items():
        auth = (config or {}).get("auth")
        if not auth:
            continue
        lines.append(f'[plugins."io.containerd.grpc.v1.cri".registry.configs.{json.dumps(host)}.auth]')
        for key, toml_key in (("username", "username"), ("password", "password"), ("auth", "auth"),
                              ("identitytoken", "identitytoken")):
            if auth.get(key):
                lines.append(f"  {toml_key} = {json.dumps(auth[key])}")
    return "\n".join(lines) + "\n"
