"""Run commands on test nodes over SSH exactly like pulumi-command does.

pulumi-command's ``remote.Command`` opens one SSH session per command, asks
for no PTY, sends the whole command string in a single ``exec`` request,
writes ``stdin`` and closes it, and reads stdout/stderr until the exit
status arrives.  Reproducing that (and nothing friendlier) means a script
that works here works through the provider: no login shell, no TTY, no
environment variables unless sshd's ``AcceptEnv`` allows them.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko


class SshTarget(Protocol):
    """What ``ssh_run`` needs from a node (``TestNode`` satisfies it)."""

    ip: str
    port: int
    host_public_key: str


@dataclass(frozen=True)
class ClientKey:
    """A throwaway client key pair: OpenSSH private key text + public line."""

    private_key_path: Path
    private_key_text: str
    public_key_line: str

    def pkey(self) -> paramiko.PKey:
        """The private key as a paramiko object."""
        return paramiko.Ed25519Key.from_private_key_file(str(self.private_key_path))


def generate_client_key(directory: Path, name: str = "id_ed25519") -> ClientKey:
    """Create an unencrypted ed25519 key pair with ssh-keygen under ``directory``.

    OpenSSH's own format is used because that is what users paste into the
    Pulumi config (``privateKey``) and what pulumi-command parses.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testbed-client", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    public = " ".join(path.with_suffix(".pub").read_text().split()[:2])
    return ClientKey(path, path.read_text(), public)


def pinned_host_keys(node: SshTarget) -> paramiko.HostKeys:
    """A known_hosts holding only the node's host key.

    Why: with RejectPolicy this proves we talk to the node we started, and a
    mismatch fails loudly instead of being silently accepted.
    """
    key_type, key_b64 = node.host_public_key.split()[:2]
    keys = paramiko.HostKeys()
    host = node.ip if node.port == 22 else f"[{node.ip}]:{node.port}"
    keys.add(host, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64)))
    return keys


def connect(
    node: SshTarget,
    *,
    user: str = "root",
    private_key_path: Path | str | None = None,
    pkey: paramiko.PKey | None = None,
    timeout: float = 30,
) -> paramiko.SSHClient:
    """Open an authenticated client to ``node`` with its host key pinned."""
    key = pkey or _load_key(private_key_path)
    client = paramiko.SSHClient()
    for host, entry in pinned_host_keys(node).items():
        for key_type, host_key in entry.items():
            client.get_host_keys().add(host, key_type, host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        node.ip,
        port=node.port,
        username=user,
        pkey=key,
        allow_agent=False,
        look_for_keys=False,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    return client


def ssh_run(
    node: SshTarget,
    command: str,
    *,
    user: str = "root",
    private_key_path: Path | str | None = None,
    pkey: paramiko.PKey | None = None,
    stdin: bytes | str = b"",
    timeout: float = 120,
) -> tuple[int, bytes, bytes]:
    """Run ``command`` in one fresh session; return (exit status, stdout, stderr).

    Exit status is -1 when the server sent none (e.g. killed by a signal).
    """
    client = connect(node, user=user, private_key_path=private_key_path, pkey=pkey, timeout=timeout)
    try:
        return run_on_client(client, command, stdin=stdin, timeout=timeout)
    finally:
        client.close()


def run_on_client(
    client: paramiko.SSHClient, command: str, *, stdin: bytes | str = b"", timeout: float = 120
) -> tuple[int, bytes, bytes]:
    """One session on an open client, pulumi-command style (see module doc)."""
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        # Writer and stderr reader run beside the stdout read so a command
        # that fills one stream while we block on another cannot deadlock.
        writer = threading.Thread(target=_feed_stdin, args=(chan, data), daemon=True)
        err_box: list[bytes] = []
        reader = threading.Thread(target=lambda: err_box.append(chan.makefile_stderr("rb").read()), daemon=True)
        writer.start()
        reader.start()
        out = chan.makefile("rb").read()
        reader.join(timeout)
        writer.join(timeout)
        status = chan.recv_exit_status()
        return status, out, err_box[0] if err_box else b""
    finally:
        chan.close()


def _feed_stdin(chan: paramiko.Channel, data: bytes) -> None:
    """Send all of ``data`` then EOF, like the provider's stdin reader."""
    try:
        if data:
            chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command exited without reading its input


def _load_key(path: Path | str | None) -> paramiko.PKey:
    """Load an OpenSSH private key file of any type paramiko knows."""
    if path is None:
        raise ValueError("give private_key_path or pkey")
    return paramiko.PKey.from_path(str(path))
