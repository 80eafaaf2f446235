"""The Python SDK's real dynamic provider host, started and called the way the Pulumi engine does.

The engine runs ``pulumi-resource-pulumi-python``, which is ``$VIRTUALENV/bin/python -u -m
pulumi.dynamic <engine address>`` in the project root: ``python -m`` puts that directory on
``sys.path``, which is the only way the host can import ``components.drift`` (the provider is
pickled by reference). The host prints its gRPC port on its first stdout line; the engine then
calls Configure once and Check/Create/Read/Diff/Update/Delete with serialized property bags.

The host answers Configure with ``acceptSecrets: false``, so the engine sends it every secret as
its plain value; this client does the same (``plain``). What is sent is what the program
declared: ``declared_inputs`` takes a captured resource's inputs from the exact protobuf struct
the program registered (harness ``wire_inputs``), ``__provider`` included. The host answers with
plain values too: marking outputs secret is the engine's job, by the ``additionalSecretOutputs``
the program registered (``registrations`` captures them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import harness
import yaml
from google.protobuf import json_format, struct_pb2
from harness import PROJECT, PROJECT_DIR, Resource
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

PROVIDER_KEY = "__provider"
ENGINE_ADDRESS = "127.0.0.1:1"  # the host only passes it on; nothing in these calls uses it
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME
DIFF_UNKNOWN = provider_pb2.DiffResponse.DIFF_UNKNOWN
CALL_TIMEOUT = 300.0  # one SSH session per call, every probe in it (update-ca-certificates is not)


class ProviderError(Exception):
    """A call the host answered with an error; ``details`` is the provider's traceback."""

    def __init__(self, method: str, error: grpc.RpcError):
        self.method, self.code, self.details = method, error.code(), error.details()
        super().__init__(f"{method} failed ({self.code.name}):\n{self.details}")


def plain(value: Any) -> Any:
    """Every secret unwrapped, at any depth: what the engine sends a provider that refuses secrets."""
    if rpc.is_rpc_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def has_secret(value: Any) -> bool:
    """Whether a secret marker is anywhere in ``value`` (a deserialized property bag keeps them)."""
    if rpc.is_rpc_secret(value):
        return True
    if isinstance(value, dict):
        return any(has_secret(item) for item in value.values())
    if isinstance(value, list):
        return any(has_secret(item) for item in value)
    return False


@contextlib.contextmanager
def registrations() -> Iterator[dict[str, Any]]:
    """The RegisterResource requests of the evaluations run in the block, by resource name.

    They hold the options the engine acts on and ``harness.Resource`` does not keep, such as
    ``additionalSecretOutputs`` (the outputs the engine stores as secrets, whatever the provider
    returned). The harness's monitor is wrapped for the block only.
    """
    requests: dict[str, Any] = {}
    original = harness.CapturingMonitor

    class Recording(original):  # type: ignore[misc, valid-type]
        def RegisterResource(self, request):
            requests[request.name] = request
            return super().RegisterResource(request)

    harness.CapturingMonitor = Recording
    try:
        yield requests
    finally:
        harness.CapturingMonitor = original


def declared_inputs(resource: Resource) -> dict[str, Any]:
    """The inputs the program registered for ``resource``, as the engine holds them (secrets plain).

    Taken from the registered protobuf struct itself, not from a copy the test rebuilds: numbers
    are doubles as on the wire, and ``__provider`` is the serialized provider the program made.
    """
    struct = json_format.ParseDict(resource.wire_inputs, struct_pb2.Struct())
    inputs = plain(rpc.deserialize_properties(struct))
    if PROVIDER_KEY not in inputs:
        raise AssertionError(f"{resource.name} was registered without {PROVIDER_KEY}: {sorted(inputs)}")
    return inputs


def serialize(props: dict[str, Any]) -> struct_pb2.Struct:
    """``rpc.serialize_properties`` (async) run to completion in a loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rpc.serialize_properties(plain(props), {}))
    finally:
        loop.close()


def deserialize(struct: struct_pb2.Struct) -> dict[str, Any]:
    return dict(rpc.deserialize_properties(struct))


@dataclass
class Target:
    """Which resource a call is about: the engine always names it (URN, name, type)."""

    urn: str
    name: str
    type: str

    @classmethod
    def of(cls, resource: Resource) -> Target:
        return cls(resource.urn, resource.name, resource.type)


class ProviderClient:
    """The engine's side of the conversation with one running provider host."""

    def __init__(self, channel: grpc.Channel, process: subprocess.Popen[bytes], stderr_path: Path):
        self.stub = provider_pb2_grpc.ResourceProviderStub(channel)
        self.process, self.stderr_path = process, stderr_path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            raise ProviderError(method, error) from None

    def configure(self) -> provider_pb2.ConfigureResponse:
        """Configure with no provider config, offering secrets and resources like the engine."""
        request = provider_pb2.ConfigureRequest(args=struct_pb2.Struct(), acceptSecrets=True, acceptResources=True)
        response = self._call("Configure", request)
        assert response.acceptSecrets is False, "the dynamic provider host must refuse secrets"
        return response

    def check(self, target: Target, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        response = self._call("Check", provider_pb2.CheckRequest(
            urn=target.urn, name=target.name, type=target.type, olds=serialize(olds), news=serialize(news),
        ))
        failures = [(failure.property, failure.reason) for failure in response.failures]
        assert not failures, f"Check of {target.name} failed: {failures}"
        return deserialize(response.inputs)

    def create(self, target: Target, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        response = self._call("Create", provider_pb2.CreateRequest(
            urn=target.urn, name=target.name, type=target.type, properties=serialize(props), timeout=CALL_TIMEOUT,
        ))
        return response.id, deserialize(response.properties)

    def read(
        self, target: Target, id_: str, props: dict[str, Any], inputs: dict[str, Any]
    ) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """Refresh: ``props`` are the outputs in the state, ``inputs`` the inputs in the state."""
        response = self._call("Read", provider_pb2.ReadRequest(
            id=id_, urn=target.urn, name=target.name, type=target.type,
            properties=serialize(props), inputs=serialize(inputs),
        ))
        new_inputs = deserialize(response.inputs) if response.HasField("inputs") else None
        return response.id, deserialize(response.properties), new_inputs

    def diff(
        self, target: Target, id_: str, olds: dict[str, Any], news: dict[str, Any], old_inputs: dict[str, Any]
    ) -> provider_pb2.DiffResponse:
        """``olds`` are the (refreshed) outputs, ``news`` the Check'ed inputs, as in the engine."""
        return self._call("Diff", provider_pb2.DiffRequest(
            id=id_, urn=target.urn, name=target.name, type=target.type,
            olds=serialize(olds), news=serialize(news), old_inputs=serialize(old_inputs),
        ))

    def update(
        self, target: Target, id_: str, olds: dict[str, Any], news: dict[str, Any], old_inputs: dict[str, Any]
    ) -> dict[str, Any]:
        response = self._call("Update", provider_pb2.UpdateRequest(
            id=id_, urn=target.urn, name=target.name, type=target.type,
            olds=serialize(olds), news=serialize(news), old_inputs=serialize(old_inputs), timeout=CALL_TIMEOUT,
        ))
        return deserialize(response.properties)

    def delete(self, target: Target, id_: str, props: dict[str, Any], old_inputs: dict[str, Any]) -> None:
        self._call("Delete", provider_pb2.DeleteRequest(
            id=id_, urn=target.urn, name=target.name, type=target.type,
            properties=serialize(props), old_inputs=serialize(old_inputs), timeout=CALL_TIMEOUT,
        ))


def virtualenv_python(project_dir: Path = PROJECT_DIR) -> Path:
    """``<virtualenv>/bin/python`` for the virtualenv Pulumi.yaml names, absolute against the project."""
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    options = (project.get("runtime") or {}).get("options") or {}
    return (project_dir / options.get("virtualenv", "venv") / "bin" / "python").absolute()


def host_command(project_dir: Path = PROJECT_DIR) -> list[str]:
    """What ``pulumi-resource-pulumi-python`` executes."""
    return [str(virtualenv_python(project_dir)), "-u", "-m", "pulumi.dynamic", ENGINE_ADDRESS]


@contextlib.contextmanager
def provider_host(
    project_dir: Path = PROJECT_DIR, *, cwd: Path | None = None, start_timeout: float = 60.0
) -> Iterator[ProviderClient]:
    """A running, configured provider host for the length of a ``with`` block; always killed after.

    ``cwd`` defaults to the project root, as the engine runs it; another directory shows why.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # only cwd makes it importable
    env["PULUMI_PROJECT"] = PROJECT
    with tempfile.NamedTemporaryFile(prefix="provider-host-", suffix=".stderr", delete=False) as stderr_file:
        stderr_path = Path(stderr_file.name)
        process = subprocess.Popen(
            host_command(project_dir), cwd=cwd or project_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr_file, start_new_session=True,
        )
    channel: grpc.Channel | None = None
    try:
        port = _first_line(process, stderr_path, start_timeout)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=start_timeout)
        # Whatever the host prints later must not fill the pipe and block it.
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
        client = ProviderClient(channel, process, stderr_path)
        client.configure()
        yield client
    finally:
        if channel is not None:
            channel.close()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
        stderr_path.unlink(missing_ok=True)


def _first_line(process: subprocess.Popen[bytes], stderr_path: Path, timeout: float) -> int:
    """The port the host printed, read without ever blocking past ``timeout``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"the provider host printed no port within {timeout}s:\n{stderr_path.read_text()}")
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(
                    f"the provider host exited ({process.wait()}) before printing its port:\n{stderr_path.read_text()}"
                )
            line += chunk
    return int(line.decode().strip())


def _drain(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    with contextlib.suppress(OSError, ValueError):
        while process.stdout.read(4096):
            pass
