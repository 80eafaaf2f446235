"""Makes drift on a node visible to ``pulumi refresh``: an observing dynamic resource per node step.

pulumi-command has no Read, so a refresh never notices that someone deleted our CA file or
edited the managed /etc/hosts line. A ``NodeStepObservation`` sits beside each step's Command
and only looks: on refresh (``read``) it runs the step's read-only probe
(``components.drift_probes``) over SSH and records what it printed. When that is not
``in-sync``, ``diff`` reports a change, ``update`` bumps ``repairs``, and because the step's
Command carries ``repairs`` in its text (see ``with_repairs``), pulumi-command re-runs that
step's idempotent script: the repair touches exactly the drifted step. Without drift nothing
changes, so preview shows nothing.

Ordering: the Command consumes ``repairs``, so the observation is applied before its Command
(never ``depends_on`` the Command: that would be a cycle). On create the node may not be
configured yet; create therefore runs the probe only to prove it works on this node
(reachable, host key, supported OS, python3) and records ``in-sync``, the state the Command
applied right after it establishes. If that apply fails, the next refresh reads the truth.

Pulumi serializes the provider instance with dill into the state and loads it in its own
provider process: the class holds no state, imports paramiko only inside its methods and
captures no Output; it is pickled by reference, so that process imports this module.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence

import pulumi
import pulumi.dynamic as dynamic

from .drift_probes import DRIFT_PREFIX, IN_SYNC

# The probes' vocabulary (components/drift_probes.py): in sync is what every step expects.
EXPECTED = IN_SYNC
INPUT_KEYS = ("connection", "probe", "probe_stdin", "expected")
CONNECT_TIMEOUT = 30.0
PROBE_TIMEOUT = 120.0


class ProbeError(Exception):
    """The probe could not judge the node (unreachable, refused, failed or answered nonsense)."""


class NodeStepProbeProvider(dynamic.ResourceProvider):
    """Observes one node step through its probe; never changes the node (pulumi-command does that)."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        """Proves the probe runs on the node, then records the state the step's Command applies next."""
        run_probe(props)
        outs = {**inputs_of(props), "observed": props.get("expected", EXPECTED), "repairs": 0}
        return dynamic.CreateResult(observation_id(props), outs)

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        """Refresh: what the node looks like now. Raises when the node cannot be asked."""
        return dynamic.ReadResult(id_, {**props, "observed": run_probe(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """A change when the node drifted (as last read) or what to observe changed; never a replacement."""
        drifted = olds.get("observed") != news.get("expected")
        inputs_changed = any(olds.get(key) != news.get(key) for key in INPUT_KEYS)
        return dynamic.DiffResult(changes=drifted or inputs_changed, replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """The Command repairs the step right after this; count the repair so its text changes."""
        repairs = int(olds.get("repairs") or 0)
        if olds.get("observed") != news.get("expected"):
            repairs += 1
        return dynamic.UpdateResult({**inputs_of(news), "observed": news.get("expected", EXPECTED), "repairs": repairs})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: observing left nothing on the node; the Command's delete cleans the step."""


def inputs_of(props: dict[str, Any]) -> dict[str, Any]:
    """The inputs, kept in the outputs because ``read`` gets only the outputs and must reconnect."""
    return {key: props[key] for key in INPUT_KEYS if props.get(key) is not None}


def observation_id(props: dict[str, Any]) -> str:
    """A stable id naming the node and the probe; deterministic so two runs agree."""
    connection = props["connection"]
    digest = hashlib.sha256(str(props.get("probe", "")).encode()).hexdigest()[:16]
    return f"{connection.get('user', 'root')}@{connection['host']}:{int(connection.get('port', 22))}#{digest}"


# ----------------------------------------------------------------------------- running the probe

def run_probe(props: dict[str, Any]) -> str:
    """The probe's one-line answer (``in-sync`` or ``drift: ...``); anything else raises ProbeError."""
    from .node_scripts import as_command

    connection = props["connection"]
    user = connection.get("user") or "root"
    where = f"{user}@{connection['host']}:{int(connection.get('port') or 22)}"
    status, stdout, stderr = ssh_exec(connection, as_command(props["probe"], user), props.get("probe_stdin") or "")
    if status != 0:
        raise ProbeError(f"drift probe on {where} failed (exit {status}): {stderr.decode(errors='replace')[-2000:]}")
    answer = stdout.decode(errors="replace").strip()
    if answer != EXPECTED and not (answer.startswith(DRIFT_PREFIX) and "\n" not in answer):
        raise ProbeError(f"drift probe on {where} gave no verdict (in-sync or drift: ...)")
    return answer


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
        raise ProbeError(f"cannot reach {host}:{port} to check for drift: {type(error).__name__}: {error}") from error
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

class NodeStepObservation(dynamic.Resource, module="k3s-registry", name="NodeStepObservation"):
    """What one node step looks like on the node, as of the last refresh."""

    observed: pulumi.Output[str]
    """``in-sync`` or ``drift: <reasons>`` (after an update: ``in-sync``, the repair follows)."""

    repairs: pulumi.Output[int]
    """How many drift repairs were ordered; the step's Command carries it in its text."""

    def __init__(
        self, name: str, *, connection: pulumi.Input[dict], probe: pulumi.Input[str],
        probe_stdin: Optional[pulumi.Input[str]] = None, opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {
            "connection": connection,
            "probe": probe,
            "probe_stdin": pulumi.Output.secret(probe_stdin) if probe_stdin is not None else None,
            "expected": EXPECTED,
            "observed": None,
            "repairs": None,
        }
        # The key (in connection) and the credentials stay secret in the outputs too.
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["connection", "probe_stdin"])
        super().__init__(NodeStepProbeProvider(), name, props, pulumi.ResourceOptions.merge(opts, secret_outputs))


def observe_step(
    name: str,
    *,
    host: pulumi.Input[str],
    port: pulumi.Input[int] = 22,
    user: pulumi.Input[str] = "root",
    private_key: Optional[pulumi.Input[str]] = None,
    host_key: Optional[pulumi.Input[str]] = None,
    probe: pulumi.Input[str],
    probe_stdin: Optional[pulumi.Input[str]] = None,
    depends_on: Optional[Sequence[pulumi.Resource]] = None,
    parent: Optional[pulumi.Resource] = None,
) -> NodeStepObservation:
    """Declares the observation of one node step; wire its ``repairs`` into the step's Command.

    ``name``: e.g. ``f"{node_resource_name}-{step}-observed"``. The connection values are the
    ones the step's Command uses (``private_key`` None: SSH agent; ``host_key`` None: any
    server key is accepted, as pulumi-command does). ``probe`` is the raw script from
    ``drift_probes`` (sudo is added for a non-root user); ``probe_stdin`` carries secrets.
    ``depends_on`` must NOT contain the step's Command: the Command depends on ``repairs``.

    Wiring (in nodes.py): the Command's create and update text gets the repair count, so a
    detected drift changes the text and pulumi-command re-runs the idempotent step::

        observed = observe_step(f"{name}-{role}-observed", host=node.host, port=node.port, user=node.user,
                                private_key=key, host_key=node.host_key, probe=probe, parent=self)
        text = pulumi.Output.all(create, observed.repairs).apply(lambda a: with_repairs(a[0], a[1]))
        command.remote.Command(f"{name}-{role}", create=text, update=text, delete=delete, ...)
    """
    connection = {"host": host, "port": port, "user": user}
    if private_key is not None:
        connection["private_key"] = pulumi.Output.secret(private_key)
    if host_key is not None:
        connection["host_key"] = host_key
    return NodeStepObservation(
        name, connection=connection, probe=probe, probe_stdin=probe_stdin,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on or [])),
    )


def with_repairs(command_text: str, repairs: Any) -> str:
    """The step's command text carrying the repair count as a trailing comment line.

    Unchanged while no repair was ordered, so adopting drift detection re-runs nothing; the
    count is an int whatever the wire made of it (numbers arrive as floats).
    """
    count = int(repairs or 0)
    return command_text if count == 0 else f"{command_text}\n# repair {count}"
