"""Each node's scripts, shipped once, and what ``pulumi refresh`` sees of the node: one resource, one session.

pulumi-command has no Read, so a refresh never notices that someone deleted our CA file or
edited the managed /etc/hosts line. A ``NodeScripts`` resource per node does two things:

- it writes the node's step scripts (components/node_plan.py) in one SSH session, so the
  Commands carry a short line and a digest instead of the scripts (state stays small);
- it observes: on refresh (``read``) ONE SSH session runs every step's read-only probe
  (components/drift_probes.py) and checks the scripts themselves. A step that is not
  ``in-sync`` makes ``diff`` report a change; ``update`` bumps that step's count in
  ``repairs`` (and puts the scripts back if they changed), and because each Command carries
  its own count in its text (see ``with_repairs``), pulumi-command re-runs exactly the
  drifted steps. Without drift nothing changes, so preview shows nothing.

Ordering: the Commands consume ``repairs`` and run the scripts, so this resource is applied
before them (it never ``depends_on`` them: that would be a cycle), and deleted after them. On
create the node is not configured yet: create writes the scripts (which proves the node is
reachable with this key and host key) and records nothing off, the state the Commands apply
right after it. If they fail, the next refresh reads the truth. A new host or port replaces it
(created first, the old one deleted at the end, after the old Commands' deletes used it).

Pulumi serializes the provider instance with dill into the state and loads it in its own
provider process: the class holds no state, imports paramiko only inside its methods and
captures no Output; it is pickled by reference, so that process imports this module.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic
from pulumi.runtime.rpc import contains_unknowns

from . import node_plan
from .drift_probes import IN_SYNC
from .node_plan import OBSERVED_STEPS, SCRIPTS, NodePlan, with_repairs

__all__ = ["NodeScripts", "NodeScriptsProvider", "NodeStepProbeProvider", "ProbeError", "connection_props",
           "with_repairs"]

# The probes' vocabulary (components/drift_probes.py): in sync is what every step expects.
EXPECTED = IN_SYNC
CONNECT_TIMEOUT = 30.0
PROBE_TIMEOUT = 120.0


class ProbeError(Exception):
    """The node could not be asked or written (unreachable, refused, failed or answered nonsense)."""


class NodeScriptsProvider(dynamic.ResourceProvider):
    """Writes one node's scripts and observes its steps; never changes the steps (the Commands do).

    ``observed`` holds only what is off (step: ``drift: <reasons>``) and ``repairs`` only the
    steps repaired so far (step: count): both empty on a node as applied, as every byte of the
    state is rewritten with every checkpoint.
    """

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        """Writes the scripts; records the state the Commands apply next (nothing off)."""
        resource_id = f"{where(props['connection'])}#{uuid.uuid4().hex[:16]}"
        install(props, resource_id)
        return dynamic.CreateResult(resource_id, outputs_of(props, repairs={}))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        """Refresh: what every step looks like now, in one session. Raises when the node cannot be asked."""
        return dynamic.ReadResult(id_, {**props, "observed": observe(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """A change when a step drifted (as last read) or the scripts or connection changed.

        A new host or port is another machine: replaced (created first), so the old Commands'
        deletes still find their scripts on the old one, which the old resource's delete then removes.
        """
        drifted = bool(olds.get("observed"))
        # In a preview the plan is unknown while what it is made of is (a new CA certificate):
        # the scripts will change, which is all a preview needs to say.
        rescripted = contains_unknowns(news.get("plan")) or \
            olds.get("digests") != NodePlan.from_props(news["plan"]).step_digests()
        changed = [key for key in ("connection", "credentials") if olds.get(key) != news.get(key)]
        old_connection, new_connection = olds.get("connection") or {}, news.get("connection") or {}
        moved = any(old_connection.get(key) != new_connection.get(key) for key in ("host", "port"))
        return dynamic.DiffResult(changes=drifted or rescripted or bool(changed),
                                  replaces=["connection"] if moved else [], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """Puts the scripts back when they changed; counts a repair for each drifted step."""
        observed = dict(olds.get("observed") or {})
        repairs = {step: int(count) for step, count in dict(olds.get("repairs") or {}).items()}
        for step in OBSERVED_STEPS:
            if step in observed:
                repairs[step] = repairs.get(step, 0) + 1
        rescripted = olds.get("digests") != NodePlan.from_props(news["plan"]).step_digests()
        if rescripted or SCRIPTS in observed or olds.get("connection") != news.get("connection"):
            install(news, id_)
        return dynamic.UpdateResult(outputs_of(news, repairs))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Removes the scripts; runs after the Commands' deletes, which use them."""
        run_on_node(props["connection"], node_plan.remover_script(props["scripts_dir"], id_), "", "remove the scripts")


class NodeStepProbeProvider(dynamic.ResourceProvider):
    """The provider of the retired per-step observations (``NodeStepObservation``, up to e734ff7).

    A stack made by that release still holds them, with this class pickled by name: the first
    ``pulumi up`` after the upgrade refreshes them (``refresh: always``) and then deletes them,
    and the engine loads ``components.drift.NodeStepProbeProvider`` for both. Without the class
    that ``up`` fails before it changes anything (tests/test_upgrade_real.py, run by the real CLI).
    Observing never left anything on a node: read keeps the state, delete has nothing to undo.
    """

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        return dynamic.ReadResult(id_, props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        pass


def outputs_of(props: dict[str, Any], repairs: dict[str, int]) -> dict[str, Any]:
    """What the state keeps: what a refresh needs (read gets only the outputs), not the plan.
    Right after create or update the node is as the Commands apply it next: nothing observed off."""
    plan = NodePlan.from_props(props["plan"])
    outs = {key: props[key] for key in ("connection", "credentials") if props.get(key) is not None}
    return {**outs, "scripts_dir": plan.scripts_dir, "digests": plan.step_digests(), "observed": {},
            "repairs": repairs}


def where(connection: dict[str, Any]) -> str:
    return f"{connection.get('user') or 'root'}@{connection['host']}:{int(connection.get('port') or 22)}"


def install(props: dict[str, Any], resource_id: str) -> None:
    """Renders the scripts from the plan and writes them to the node in one session."""
    plan = NodePlan.from_props(props["plan"])
    run_on_node(props["connection"], node_plan.installer_script(plan, resource_id), "write the node's scripts",
                script_on_stdin=True)


def observe(props: dict[str, Any]) -> dict[str, str]:
    """What is off on the node, by step (``scripts`` for the directory itself), from one session."""
    reader = node_plan.reader_script(props["scripts_dir"], props["digests"])
    stdout = run_on_node(props["connection"], reader, "check for drift", stdin=props.get("credentials") or "")
    answers = node_plan.parse_observations(stdout)
    if answers is None:
        raise ProbeError(f"drift check on {where(props['connection'])} gave no verdict per step (in-sync or drift: ...)")
    return {step: verdict for step, verdict in answers.items() if verdict != EXPECTED}


# ----------------------------------------------------------------------------- running the probe

def run_on_node(connection: dict[str, Any], script: str, purpose: str, stdin: str = "",
                script_on_stdin: bool = False) -> str:
    """Runs ``script`` with ``sh`` (through sudo unless root) in one session; its stdout, or ProbeError.

    ``script_on_stdin``: ``sh -s`` reads the script from stdin (any size, never on a command line).
    """
    from .node_scripts import as_command

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

class NodeScripts(dynamic.Resource, module="k3s-registry", name="NodeScripts"):
    """One node's step scripts, and what each step looks like on the node as of the last refresh."""

    observed: pulumi.Output[dict]
    """What the last refresh found off, by step (trust, hosts, k3s; ``scripts`` for the directory):
    ``drift: <reasons>``. Empty when the node is as applied."""

    repairs: pulumi.Output[dict]
    """By step: how many drift repairs were ordered (absent: none); each Command carries its own
    count in its text."""

    digests: pulumi.Output[dict]
    """By step: the digest of its scripts on the node; each Command's text carries its own."""

    scripts_dir: pulumi.Output[str]

    def __init__(
        self, name: str, *, connection: pulumi.Input[dict], plan: pulumi.Input[dict],
        credentials: Optional[pulumi.Input[str]] = None, opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {
            "connection": connection,
            "plan": plan,
            "digests": None,
            "credentials": pulumi.Output.secret(credentials) if credentials is not None else None,
            "scripts_dir": None,
            "observed": None,
            "repairs": None,
        }
        # The key (in connection) and the registry credentials stay secret in the outputs too.
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["connection", "credentials"])
        super().__init__(PROVIDER, name, props, pulumi.ResourceOptions.merge(opts, secret_outputs))


PROVIDER = NodeScriptsProvider()


def connection_props(
    host: pulumi.Input[str], port: pulumi.Input[int], user: pulumi.Input[str],
    private_key: Optional[pulumi.Input[str]] = None, host_key: Optional[pulumi.Input[str]] = None,
) -> dict[str, Any]:
    """The connection as the provider takes it: the Commands' own values (``private_key`` None: SSH
    agent; ``host_key`` None: any server key is accepted, as pulumi-command does)."""
    connection: dict[str, Any] = {"host": host, "port": port, "user": user}
    if private_key is not None:
        connection["private_key"] = pulumi.Output.secret(private_key)
    if host_key is not None:
        connection["host_key"] = host_key
    return connection
