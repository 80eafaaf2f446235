"""No private key, password or bcrypt hash leaves the program unmarked.

The scan walks every input the program sends for every resource (the wire form, where a
secret is wrapped in Pulumi's secret marker) and every stack output. A value inside a
secret marker is protected and not looked into; anywhere else, no secret value, no
distinctive piece of one (a base64 line of a PEM, the password, the bcrypt hash) and nothing
that looks like a private key or a bcrypt hash may appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from harness import GUIDE_CONFIG, SECRET_SIG, evaluate, is_secret_marker

SSH_PRIVATE_KEY = (
    ed25519.Ed25519PrivateKey.generate()
    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    .decode()
)
NODES = [
    {"name": "control01", "host": "192.168.0.101", "role": "server"},
    {"name": "cube01", "host": "192.168.0.111", "port": 2222, "user": "ubuntu", "role": "agent"},
    {"name": "cube02", "host": "192.168.0.112", "user": "pi", "role": "agent"},
]
UPSTREAM_PASSWORD = "quay-robot-token-Xk29vQ81mZt"
# A pull-through cache with upstream credentials: its password must stay as protected as ours.
MIRRORS = [{"upstream": "quay.io", "username": "robot", "password": UPSTREAM_PASSWORD}, {"upstream": "docker.io"}]
CONFIG = {**GUIDE_CONFIG, "auth": "true", "authUsername": "pusher", "nodes": NODES, "sshPrivateKey": SSH_PRIVATE_KEY,
          "mirrors": MIRRORS}

PATTERNS = {
    "a private key": re.compile(r"PRIVATE KEY"),
    "a bcrypt hash": re.compile(r"\$2[aby]\$\d\d\$"),
}
MIN_PIECE = 16
"""Shorter pieces (a PEM's last base64 line can be 4 characters) would match by chance."""


@dataclass(frozen=True)
class Leak:
    path: str
    what: str


def pieces_of(name: str, secret: str) -> dict[str, str]:
    """The secret and every distinctive piece of it, each labelled for the report."""
    pieces = {secret: name}
    for number, raw_line in enumerate(secret.splitlines(), 1):
        line = raw_line.strip()
        if len(line) >= MIN_PIECE and not line.startswith("-----"):
            pieces.setdefault(line, f"{name} (line {number})")
    for part in secret.split("$"):
        if len(part) >= MIN_PIECE:  # a bcrypt hash's salt+digest without its prefix
            pieces.setdefault(part, f"{name} (digest)")
    return pieces


def scan(value: Any, secrets: dict[str, str], path: str = "") -> list[Leak]:
    """Every place in ``value`` where a secret piece or pattern appears outside a secret marker."""
    return list(_scan(value, secrets, path))


def _scan(value: Any, secrets: dict[str, str], path: str) -> Iterator[Leak]:
    if is_secret_marker(value):
        return  # protected: Pulumi encrypts it in state and masks it in output
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _scan(key, secrets, f"{path}.<key>")
            yield from _scan(item, secrets, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _scan(item, secrets, f"{path}[{index}]")
    elif isinstance(value, str):
        for piece, name in secrets.items():
            if piece in value:
                yield Leak(path, name)
        for name, pattern in PATTERNS.items():
            if pattern.search(value):
                yield Leak(path, name)


def strings_anywhere(value: Any) -> Iterator[str]:
    """Every string in ``value``, secret markers included (to prove the secrets are there)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strings_anywhere(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_anywhere(item)
    elif isinstance(value, str):
        yield value


@pytest.fixture(scope="module")
def program():
    return evaluate(CONFIG, secret_keys=("sshPrivateKey", "mirrors"))


@pytest.fixture(scope="module")
def secret_values(program) -> dict[str, str]:
    """name -> value of everything that must never appear unprotected."""
    values = {}
    for key in program.of_type("tls:index/privateKey:PrivateKey"):
        values[f"{key.name}.privateKeyPem"] = key.outputs["privateKeyPem"]
    password = program.one("random:index/randomPassword:RandomPassword")
    values["password"] = password.outputs["result"]
    values["bcryptHash"] = password.outputs["bcryptHash"]
    htpasswd = program.named("registry-htpasswd").inputs["stringData"]["htpasswd"]
    values["htpasswd"] = htpasswd
    values["sshPrivateKey"] = SSH_PRIVATE_KEY
    values["upstreamPassword"] = UPSTREAM_PASSWORD
    return values


@pytest.fixture(scope="module")
def secrets(secret_values) -> dict[str, str]:
    pieces: dict[str, str] = {}
    for name, value in secret_values.items():
        for piece, label in pieces_of(name, value).items():
            pieces.setdefault(piece, label)
    return pieces


def test_the_secrets_looked_for_are_the_real_ones(program, secret_values):
    assert len(program.of_type("tls:index/privateKey:PrivateKey")) == 2
    for name, value in secret_values.items():
        if name.endswith("privateKeyPem") or name == "sshPrivateKey":
            assert "PRIVATE KEY-----" in value, name
    assert len(secret_values["password"]) == 32
    assert re.fullmatch(r"\$2a\$10\$[./A-Za-z0-9]{53}", secret_values["bcryptHash"])
    assert secret_values["htpasswd"] == f"pusher:{secret_values['bcryptHash']}\n"


def test_every_secret_does_reach_the_declared_inputs_so_the_scan_has_something_to_find(program, secret_values):
    """Each secret is passed somewhere (marked); without that, a clean scan would prove nothing."""
    everything = "\n".join(s for r in program.resources for s in strings_anywhere(r.wire_inputs))
    for name, value in secret_values.items():
        # The password reaches the nodes inside the credentials JSON on stdin.
        assert value in everything, name


def test_no_resource_input_carries_a_secret_unprotected(program, secrets):
    leaks = []
    for resource in program.resources:
        leaks += [f"{resource.type} {resource.name}: {leak.path} has {leak.what}"
                  for leak in scan(resource.wire_inputs, secrets, "inputs")]
    assert leaks == []


def test_no_plain_stack_output_carries_a_secret(program, secrets):
    leaks = []
    for name, value in program.outputs.items():
        if name in program.secret_outputs:
            continue
        leaks += [f"output {name}{leak.path} has {leak.what}" for leak in scan(value, secrets)]
    assert leaks == []


def test_the_registry_password_is_a_secret_output(program, secret_values):
    assert "registryPassword" in program.secret_outputs
    assert program.outputs["registryPassword"] == secret_values["password"]
    assert program.outputs["registryUsername"] == "pusher"


# The scanner itself: it must report what it is meant to find, and only that.

FAKE = {"password": "Zq8rW3nT5vY1pL0kX7cB2mD9fH4jS6aE"}
FAKE_PIECES = pieces_of("password", FAKE["password"])


def marked(value: Any) -> dict:
    return {SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "value": value}


def test_the_scanner_reports_a_password_in_plain_text_with_its_path():
    wire = {"spec": {"containers": [{"env": [{"name": "PASS", "value": f"x{FAKE['password']}y"}]}]}}
    assert scan(wire, FAKE_PIECES, "inputs") == [Leak("inputs.spec.containers[0].env[0].value", "password")]


def test_the_scanner_does_not_look_inside_a_secret_marker():
    wire = {"stdin": marked(f'{{"password": "{FAKE["password"]}"}}'), "other": {"deep": marked(["$2a$10$abc"])}}
    assert scan(wire, FAKE_PIECES) == []


def test_the_scanner_finds_one_line_of_a_pem_inside_a_script():
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    body = key.splitlines()[1]
    found = scan({"create": f"cat > /tmp/k <<EOF\n{body}\nEOF"}, pieces_of("key", key))
    assert Leak(".create", "key (line 2)") in found


def test_the_scanner_finds_private_key_headers_and_bcrypt_hashes_it_was_not_told_about():
    found = scan(["-----BEGIN EC PRIVATE KEY-----", "admin:$2y$05$abcdefghijklmnopqrstuv"], {})
    assert [leak.what for leak in found] == ["a private key", "a bcrypt hash"]


def test_the_scanner_finds_a_secret_used_as_a_key():
    assert scan({FAKE["password"]: 1}, FAKE_PIECES) == [Leak(".<key>", "password")]
