"""One SSH session to a node, as pulumi-command opens it: the NodeScripts resource's transport.

paramiko is imported inside the functions: the provider is pickled into the state and loaded
in Pulumi's own provider process, where only what is used should be imported.
"""

from __future__ import annotations

from typing import Any

from .shell import as_command

CONNECT_TIMEOUT = 30.0
PROBE_TIMEOUT = 120.0


class ProbeError(Exception):
    """The node could not be asked or written (unreachable, refused, failed or answered nonsense)."""



def where(connection: dict[str, Any]) -> str:
    return f"{connection.get('user') or 'root'}@{connection['host']}:{int(connection.get('port') or 22)}"



def run_on_node(connection: dict[str, Any], script: str, purpose: str, stdin: str = "",
                script_on_stdin: bool = False) -> str:
    """Runs ``script`` with ``sh`` (through sudo unless root) in one session; its stdout, or ProbeError.

    ``script_on_stdin``: ``sh -s`` reads the script from stdin (any size, never on a command line).
    """
    user = connection.get("user") or "root"
    if script_on_stdin:
        line, stdin = ("sh -s" if user == "root" else "sudo -n sh -s"), script
    else:
        line = as_command(script, user)
    status, stdout, stderr = ssh_exec(connection, line, stdin)
    if status != 0:
        raise ProbeError(f"could not {purpose} on {where(connection)} (exit {status}): "
                         f"{stderr.decode(errors='replace')[-2000:]}")
    return stdout.decode(errors="replace")


def ssh_exec(connection: dict[str, Any], command: str, stdin: str) -> tuple[int, bytes, bytes]:
    """One exec like pulumi-command's: no PTY, no environment, stdin then EOF; exit status -1 if none."""
    import threading

    client = connect(connection)
    try:
        channel = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        channel.settimeout(PROBE_TIMEOUT)
        channel.exec_command(command)
        writer = threading.Thread(target=_feed_stdin, args=(channel, stdin.encode()), daemon=True)
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(channel.makefile_stderr("rb").read()), daemon=True)
        writer.start()
        reader.start()
        out = channel.makefile("rb").read()
        reader.join(PROBE_TIMEOUT)
        writer.join(PROBE_TIMEOUT)
        return channel.recv_exit_status(), out, errors[0] if errors else b""
    finally:
        client.close()


def _feed_stdin(channel: Any, data: bytes) -> None:
    """Writes stdin then EOF; a probe that exits without reading it is fine."""
    import paramiko

    try:
        if data:
            channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def connect(connection: dict[str, Any]) -> Any:
    """An authenticated paramiko client: the given key, else the SSH agent; host key pinned when given."""
    import paramiko

    host, port = connection["host"], int(connection.get("port") or 22)
    client = paramiko.SSHClient()
    if connection.get("host_key"):
        _pin_host_key(client, host, port, connection["host_key"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        # Like pulumi-command without hostKey: any server key is accepted.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    private_key = connection.get("private_key")
    try:
        client.connect(
            host, port=port, username=connection.get("user") or "root",
            pkey=load_private_key(private_key) if private_key else None,
            allow_agent=not private_key, look_for_keys=False,
            timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT,
        )
    except (OSError, paramiko.SSHException) as error:
        client.close()
        raise ProbeError(f"cannot reach {host}:{port} to write or check its scripts: {type(error).__name__}: {error}") from error
    return client


def _pin_host_key(client: Any, host: str, port: int, host_key: str) -> None:
    """Known hosts = only the configured key, under the name paramiko looks up for this port."""
    import base64

    import paramiko

    key_type, key_b64 = host_key.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    client.get_host_keys().add(name, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64)))


def load_private_key(text: str) -> Any:
    """The key as paramiko wants it, whatever its type (ed25519, ECDSA, RSA; OpenSSH or PEM)."""
    import io

    import paramiko

    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ProbeError("the SSH private key is not an unencrypted ed25519, ECDSA or RSA key")


# ----------------------------------------------------------------------------- the resource
