"""The real Pulumi CLI, language host and providers (built by scripts/toolchain) running the program.

A ``RealStack`` is one stack on a local file backend in a temporary folder, with a private
``PULUMI_HOME`` holding exactly the pinned provider plugins (installed from the built files),
automatic plugin downloads off, no update check, and nothing taken from PATH. The program is
a copy of the project's own files (``Pulumi.yaml``, ``__main__.py``, ``components/``,
``requirements.txt``) beside the project's ``venv``: the CLI writes the stack's settings file
(``Pulumi.<stack>.yaml``) into the program's folder, which must not be the clone.

The kubernetes provider talks to the test bed's cluster (tests/testbed/cluster.py). By default
it applies the program's objects there, with the cluster's kubeconfig in the stack's settings
(``kubernetes:kubeconfig``, a secret), as a stack per cluster has it; ``applied`` reads back
what the API server holds. With ``render_dir`` it renders the objects as YAML into that folder
instead (provider config ``kubernetes:renderYamlToDirectory``, set on the test stack only) and
the kubeconfig is KUBECONFIG, as the provider refuses its ``kubeconfig`` setting together with
render mode; it still needs a reachable API server then: it reads the server's version and API
groups when it starts, and without them every refresh fails ("unreachable cluster", provider.go
Read). ``rendered`` reads the rendered objects back in the shape tests/pod.py takes.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import Evaluation, Resource

PROJECT_DIR = Path(__file__).resolve().parent.parent
PINS_FILE = PROJECT_DIR / "toolchain" / "pins"
TOOLCHAIN_SCRIPT = PROJECT_DIR / "scripts" / "toolchain"
# scripts/test exports the folder scripts/toolchain printed; run alone, a test builds (or finds
# in the cache) the toolchain itself. Missing, it fails: never skipped.
TOOLCHAIN_ENV = "K3S_REGISTRY_TOOLCHAIN"
PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "requirements.txt")
PROGRAM_PACKAGES = ("components",)
PROVIDERS = ("command", "tls", "random", "kubernetes")
# The test bed's cluster (tests/testbed/cluster.py).
CLUSTER_FILES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml",
                 "metallb-controller", "metallb-crds.yaml", "prometheus-operator-crds.yaml")
PASSPHRASE = "k3s-registry test passphrase"


def pins() -> dict[str, str]:
    """toolchain/pins: what scripts/toolchain builds, by name."""
    entries = {}
    for line in PINS_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, version = line.split()
            entries[name] = version
    return entries


@functools.cache
def toolchain_dir() -> Path:
    """The folder with the built CLI, language host and provider binaries (built once per session)."""
    given = os.environ.get(TOOLCHAIN_ENV)
    if given:
        toolchain = Path(given)
    else:
        built = subprocess.run([str(TOOLCHAIN_SCRIPT)], capture_output=True, text=True, timeout=5400, check=False)
        assert built.returncode == 0, f"scripts/toolchain failed:\n{built.stderr[-4000:]}"
        toolchain = Path(built.stdout.strip().splitlines()[-1])
    missing = [name for name in ("pulumi", "pulumi-language-python", "pulumi-language-python-exec",
                                 "pulumi-resource-pulumi-python", *(f"pulumi-resource-{p}" for p in PROVIDERS),
                                 *CLUSTER_FILES)
               if not (toolchain / name).is_file()]
    assert not missing, f"the toolchain in {toolchain} lacks {missing}: run ./scripts/toolchain"
    assert (toolchain / "pins").read_text() == PINS_FILE.read_text(), \
        f"the toolchain in {toolchain} was built for other pins than toolchain/pins: run ./scripts/toolchain"
    return toolchain


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Run:
        assert self.returncode == 0, f"pulumi {' '.join(self.args)} exited {self.returncode}:\n{self.output[-8000:]}"
        return self


def copy_program(source: Path, destination: Path) -> None:
    """The program's files, as they are in ``source`` (the clone, or an older release's tree),
    and a link to the project's venv; the stack's settings file stays."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROGRAM_FILES:
        shutil.copy2(source / name, destination / name)
    for package in PROGRAM_PACKAGES:
        shutil.rmtree(destination / package, ignore_errors=True)
        shutil.copytree(source / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    if not (destination / "venv").exists():
        (destination / "venv").symlink_to(PROJECT_DIR / "venv")


class RealStack:
    """One stack of the program, driven by the real ``pulumi``."""

    def __init__(self, root: Path, stack: str = "test", *, kubeconfig: Path, render_dir: Path | None = None,
                 source: Path = PROJECT_DIR):
        self.root = root
        self.stack = stack
        self.program = root / "program"
        self.use_program(source)
        self.home = root / "pulumi-home"
        self.backend = root / "state"
        self.home.mkdir()
        self.backend.mkdir()
        self.cli = toolchain_dir() / "pulumi"
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("PULUMI_")}
        self.env = {
            **inherited,
            "PULUMI_HOME": str(self.home),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            # Nothing from the network: no update check, no plugin download, no plugin from PATH.
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
            "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
            "NO_COLOR": "1",
        }
        if render_dir is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)
        versions = pins()
        for provider in PROVIDERS:
            self.pulumi("plugin", "install", "resource", provider, versions[provider],
                        "--file", str(toolchain_dir() / f"pulumi-resource-{provider}"), stack=False).check()
        self.pulumi("stack", "init", "--stack", stack, stack=False).check()
        self.render_dir = render_dir
        if render_dir is not None:
            self.config_set("kubernetes:renderYamlToDirectory", str(render_dir))
        else:
            self.config_set("kubernetes:kubeconfig", kubeconfig.read_text(), secret=True)

    def use_program(self, source: Path) -> None:
        """The program the next command runs: the files of ``source`` (an upgrade swaps them)."""
        copy_program(source, self.program)

    # ------------------------------------------------------------------ the CLI

    def pulumi(self, *args: str, stack: bool = True, stdin: str | None = None, timeout: float = 900) -> Run:
        argv = [str(self.cli), *args, "--cwd", str(self.program), "--non-interactive", "--color", "never"]
        if stack:
            argv += ["--stack", self.stack]
        done = subprocess.run(argv, env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        return Run(tuple(args), done.returncode, done.stdout, done.stderr)

    def config_set(self, key: str, value: Any, *, secret: bool = False, path: bool = False) -> None:
        """``pulumi config set`` as a user types it: a list or object one ``--path`` entry at a
        time (``nodes[0].host``), numbers and booleans with their ``--type``, the value on stdin
        (a secret never stands on a command line)."""
        if isinstance(value, (list, dict)):
            entries = value.items() if isinstance(value, dict) else enumerate(value)
            for child, item in entries:
                child_key = f"{key}[{child}]" if isinstance(value, list) else f"{key}.{child}"
                self.config_set(child_key, item, secret=secret, path=True)
            return
        flags = [*(["--secret"] if secret else []), *(["--path"] if path else [])]
        if isinstance(value, bool):
            flags += ["--type", "bool"]
            value = "true" if value else "false"
        elif isinstance(value, int):
            flags += ["--type", "int"]
        self.pulumi("config", "set", *flags, key, stdin=str(value)).check()

    def config_rm(self, key: str, *, path: bool = False) -> None:
        self.pulumi("config", "rm", *(["--path"] if path else []), key).check()

    def stack_file(self) -> str:
        return (self.program / f"Pulumi.{self.stack}.yaml").read_text()

    def preview(self, *args: str) -> Run:
        return self.pulumi("preview", *args)

    def up(self, *args: str) -> Run:
        return self.pulumi("up", "--yes", "--skip-preview", *args)

    def refresh(self, *args: str) -> Run:
        return self.pulumi("refresh", "--yes", "--skip-preview", *args)

    def destroy(self, *args: str) -> Run:
        return self.pulumi("destroy", "--yes", "--skip-preview", *args)

    def export(self, *, show_secrets: bool = False) -> dict[str, Any]:
        flags = ["--show-secrets"] if show_secrets else []
        return json.loads(self.pulumi("stack", "export", *flags).check().stdout)

    def outputs(self, *, show_secrets: bool = False) -> dict[str, Any]:
        flags = ["--show-secrets"] if show_secrets else []
        return json.loads(self.pulumi("stack", "output", "--json", *flags).check().stdout)

    def resources(self, *, show_secrets: bool = False) -> list[dict[str, Any]]:
        return self.export(show_secrets=show_secrets)["deployment"].get("resources") or []

    def urn_of(self, type_token: str, name: str) -> str:
        found = [r["urn"] for r in self.resources() if r["type"] == type_token and r["urn"].endswith(f"::{name}")]
        assert len(found) == 1, f"expected one {type_token} named {name}, found {found}"
        return found[0]

    # ------------------------------------------------------------------ rendered manifests

    def rendered(self) -> Evaluation:
        """The objects the kubernetes provider rendered, as an Evaluation for tests/pod.py.

        A Secret's ``data`` is decoded into ``stringData`` (what the kubelet gives the pod)."""
        assert self.render_dir is not None, "this stack applies its objects; nothing is rendered"
        resources = []
        for path in sorted(self.render_dir.glob("*/*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    resources.append(_rendered_resource(doc))
        return Evaluation(resources=resources)


def applied(cluster: Any, namespace: str) -> Evaluation:
    """What the API server holds in ``namespace`` (Deployments, Secrets, claims, Services), as
    an Evaluation for tests/pod.py: the registry is started from the objects the cluster has."""
    from kubernetes import client

    api = cluster.client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    # A list's items carry no apiVersion and kind of their own (the list does).
    listed: list[tuple[str, str, Any]] = [("apps/v1", "Deployment", apps.list_namespaced_deployment(namespace).items),
              ("v1", "Secret", core.list_namespaced_secret(namespace).items),
              ("v1", "PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim(namespace).items),
              ("v1", "Service", core.list_namespaced_service(namespace).items)]
    resources = []
    for api_version, kind, items in listed:
        for item in items:
            doc = {**api.sanitize_for_serialization(item), "apiVersion": api_version, "kind": kind}
            resources.append(_rendered_resource(doc))
    return Evaluation(resources=resources)


def _rendered_resource(doc: dict[str, Any]) -> Resource:
    group_version = doc["apiVersion"]
    group, _, version = group_version.rpartition("/")
    type_token = f"kubernetes:{group or 'core'}/{version}:{doc['kind']}"
    inputs = dict(doc)
    if doc["kind"] == "Secret":
        decoded = {key: base64.b64decode(value).decode() for key, value in (doc.get("data") or {}).items()}
        inputs["stringData"] = {**decoded, **(doc.get("stringData") or {})}
    name = doc["metadata"]["name"]
    return Resource(type=type_token, name=name, urn="", parent="", inputs=inputs, outputs=inputs,
                    wire_inputs=inputs, dependencies=[], delete_before_replace=False)
