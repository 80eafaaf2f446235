"""One parser per kind of value: numbers, switches, names, addresses, quantities, images.

Each takes the key and the raw value and returns the typed value, or raises ``Invalid`` (via
``fail``) with a message that says what the value must be.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from ..quantity import QUANTITY
from ..settings import DEFAULT_IMAGE, KEY_ALGORITHMS
from .reader import Invalid, fail

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HTPASSWD_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"((:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$"
)


def parse_int(low: int, high: int, what: str) -> Callable[[str, Any], int]:
    def parse(_key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            fail(f"must be a whole number ({what}), got {value!r}")
        if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value.strip()):
            fail(f"must be a whole number ({what}), got {value!r}")
        number = int(value)
        if not low <= number <= high:
            fail(f"{number} is out of range; use {what} between {low} and {high}")
        return number

    return parse


def parse_bool(_key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    fail(f"must be true or false, got {value!r}")
    return False


def dns_name_parser(*, allow_wildcard: bool, expectation: str) -> Callable[[str, Any], str]:
    """Parses one DNS name, normalised (trimmed, no final dot, lower case)."""

    def parse(_key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            fail(f"{expectation}, got {value!r}")
        name = value.strip().rstrip(".").lower()
        check_dns_name(name, allow_wildcard=allow_wildcard)
        return name

    return parse


parse_hostname = dns_name_parser(allow_wildcard=False, expectation="must be a DNS name such as registry.example.lan")
parse_dns_name_or_wildcard = dns_name_parser(allow_wildcard=True, expectation="entries must be DNS names")


def parse_ip(_key: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        fail(f"{value!r} is not an IP address; use an address such as 192.168.0.202")
        return ""


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_cidr(_key: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value).strip()))
    except ValueError:
        fail(f"{value!r} is not a network in CIDR notation (host bits zero); k3s's default is 10.42.0.0/16")
        return ""


def check_dns_name(name: str, *, allow_wildcard: bool) -> None:
    labels = name.split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        wildcard = " (a wildcard only as the first label, like *.cube.local)" if allow_wildcard else ""
        fail(
            f"{name!r} is not a valid DNS name; use letters, digits and hyphens in dot-separated "
            f"labels of at most 63 characters{wildcard}"
        )
    if labels[-1].isdigit():
        fail(f"{name!r} looks like an IP address; put addresses in the IP settings, not DNS names")


def parse_string_list(item: Callable[[str, Any], str]) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            fail(f"must be a list, got {value!r}")
        return tuple(item(key, element) for element in value)

    return parse


def parse_namespace(_key: str, value: Any) -> str:
    if not isinstance(value, str) or not DNS_LABEL.match(value):
        fail(
            f"{value!r} is not a valid namespace name; use at most 63 lower-case letters, digits "
            "and hyphens, starting and ending with a letter or digit"
        )
    return value


def object_name_parser(what: str, *, when_empty: str, shape: str) -> Callable[[str, Any], str]:
    """Parses the name of a Kubernetes object (a DNS subdomain in lower case)."""

    def parse(_key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            fail(when_empty)
        try:
            check_dns_name(value, allow_wildcard=False)
        except Invalid:
            fail(f"{value!r} is not a valid {what} name ({shape})")
        if value != value.lower():
            fail(f"{value!r} is not a valid {what} name; use lower case")
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
    match = QUANTITY.match(str(value).strip()) if isinstance(value, (str, int)) else None
    if not match or float(match.group("number")) <= 0:
        fail(f"{value!r} is not a storage size; use a Kubernetes quantity such as 15Gi or 500Mi")
    return str(value).strip()


def parse_node_selector(_key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        fail(f"must be an object of label: value pairs, like {{node-type: worker}}, got {value!r}")
    for label, label_value in value.items():
        _check_label_key(label)
        if not isinstance(label_value, str) or (label_value and not _LABEL_NAME.match(label_value)):
            fail(
                f"label {label!r} has value {label_value!r}; label values are strings of at most "
                "63 letters, digits, '-', '_' or '.'"
            )
    return tuple(sorted(value.items()))


def _check_label_key(label: Any) -> None:
    prefix, _, name = str(label).rpartition("/")
    valid_prefix = not prefix or (len(prefix) <= 253 and all(DNS_LABEL.match(p) for p in prefix.split(".")))
    if not isinstance(label, str) or not valid_prefix or not _LABEL_NAME.match(name):
        fail(f"{label!r} is not a valid label key, like node-type or example.com/zone")


def parse_auth_username(_key: str, value: Any) -> str:
    if not isinstance(value, str) or not _HTPASSWD_USER.match(value):
        fail(f"{value!r} is not a usable user name; use up to 64 letters, digits, '.', '_' or '-'")
    return value


def parse_key_algorithm(_key: str, value: Any) -> str:
    algorithm = str(value).strip().upper()
    if algorithm not in KEY_ALGORITHMS:
        fail(f"{value!r} is not supported; use RSA (4096 bits) or ECDSA (P-256)")
    return algorithm


def parse_image(_key: str, value: Any) -> str:
    """A registry image of distribution 3: the program configures the pod for it (the config
    file's path, deletes, the debug server, the collector that keeps an index's platforms).
    A tag that names another major release is refused; a tag that names none (``latest``, a
    digest alone) is taken as distribution 3."""
    if not isinstance(value, str) or not _IMAGE_REFERENCE.match(value):
        fail(f"{value!r} is not an image reference; use a name with a tag, like {DEFAULT_IMAGE}")
    major = image_major_release(value)
    if major is not None and major < 3:
        fail(
            f"{value} is distribution {major}, which docker-library no longer builds and whose garbage collector "
            "deletes the platform images of a multi-platform image; the program runs distribution 3. Remove image "
            f"to use the default {DEFAULT_IMAGE} (pulumi config rm image), or name a 3.x tag of your mirror of it. "
            "The volume's images are kept: distribution 3 serves what 2.8 stored"
        )
    return value


def image_major_release(image: str) -> int | None:
    """The major release an image's tag names (``registry:2.8.3`` -> 2), or None when the tag is
    no version (``latest``) or there is no tag (a digest alone)."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    first = tag.split(".", 1)[0]
    return int(first) if first.isdigit() else None


