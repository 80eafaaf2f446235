"""The toolchain scripts/toolchain builds is the one the program pins, from the sources recorded.

An SDK asks the engine for the plugin of its own version and the state records that version:
requirements.txt must name exactly the releases toolchain/pins builds. The vendored upstream
sources must be byte for byte what toolchain/SOURCES records (git blob hashes of the release
tags), and scripts/toolchain refuses to build from anything else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata

from pulumi_real import PROJECT_DIR, PROVIDERS, pins, toolchain_dir

SDK_OF = {"pulumi": "pulumi", **{provider: f"pulumi-{provider}" for provider in PROVIDERS}}


def requirement_pins() -> dict[str, str]:
    found = {}
    for line in (PROJECT_DIR / "requirements.txt").read_text().splitlines():
        match = re.match(r"^(pulumi(?:-[a-z]+)?)==([0-9.]+)\s*$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_requirements_pin_every_sdk_exactly_to_the_release_the_toolchain_builds():
    assert requirement_pins() == {sdk: pins()[name] for name, sdk in SDK_OF.items()}


def test_the_venv_has_exactly_those_sdks():
    for name, sdk in SDK_OF.items():
        assert metadata.version(sdk) == pins()[name], sdk


def test_scripts_deploy_installs_the_cli_release_the_tests_run():
    tested = re.search(r"^tested=(\S+)$", (PROJECT_DIR / ".pulumi-version").read_text(), flags=re.MULTILINE)
    assert tested and tested.group(1) == pins()["pulumi"]


def test_the_built_cli_reports_its_release():
    done = subprocess.run([str(toolchain_dir() / "pulumi"), "version"], capture_output=True, text=True,
                          env={"PULUMI_SKIP_UPDATE_CHECK": "true", "PATH": "/usr/bin:/bin"}, check=False)
    assert done.stdout.strip() == f"v{pins()['pulumi']}", done.stderr


def test_every_vendored_file_is_recorded_and_matches_its_upstream_blob():
    recorded = {}
    for line in (PROJECT_DIR / "toolchain" / "SOURCES").read_text().splitlines():
        blob, path, origin, at = line.split()
        recorded[path] = blob
        assert re.fullmatch(r"pulumi/pulumi(-[a-z]+)?@v[0-9.]+", origin), line
        assert re.fullmatch(r"[0-9a-f]{40}:\S+", at), line
    vendored = {str(path.relative_to(PROJECT_DIR / "toolchain"))
                for tree in ("upstream", "pulumi/cmd") for path in (PROJECT_DIR / "toolchain" / tree).rglob("*")
                if path.is_file()}
    assert vendored == set(recorded), "a file in toolchain/ is vendored without a record, or recorded but absent"
    for path, blob in recorded.items():
        hashed = subprocess.run(["git", "hash-object", str(PROJECT_DIR / "toolchain" / path)],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert hashed == blob, path


def test_the_vendored_releases_are_the_pinned_ones():
    origins = {line.split()[2] for line in (PROJECT_DIR / "toolchain" / "SOURCES").read_text().splitlines()}
    assert origins == {f"pulumi/pulumi@v{pins()['pulumi']}", *(f"pulumi/pulumi-{name}@v{pins()[name]}"
                                                             for name in ("command", "tls", "random"))}


def test_scripts_toolchain_refuses_an_edited_vendored_file(tmp_path):
    copy = tmp_path / "project"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy2(PROJECT_DIR / "scripts" / "toolchain", copy / "scripts" / "toolchain")
    shutil.copytree(PROJECT_DIR / "toolchain", copy / "toolchain")
    edited = copy / "toolchain" / "upstream" / "pulumi-command" / "provider" / "cmd" / "pulumi-resource-command" / "main.go"
    edited.write_text(edited.read_text() + "\n// a local change\n")
    done = subprocess.run([str(copy / "scripts" / "toolchain")], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/local/go/bin:/usr/bin:/bin", "HOME": str(tmp_path),
                               "K3S_REGISTRY_TOOLCHAIN_CACHE": str(tmp_path / "cache")}, check=False)
    assert done.returncode != 0
    assert "pulumi-resource-command/main.go differs from upstream (pulumi/pulumi-command@v1.2.1" in done.stderr
    assert not (tmp_path / "cache" / "parts").exists() or not any((tmp_path / "cache" / "parts").iterdir())


def test_each_wrapper_module_requires_the_pinned_release():
    """A pin names the release its Go wrapper module builds: the go.mod must require exactly it.
    (The kubernetes provider's module is required at the pseudo-version of its release tag.)"""
    modules = {"kube-control-plane": "k8s.io/kubernetes", "etcd": "go.etcd.io/etcd/server/v3",
               "kwok": "sigs.k8s.io/kwok", "metallb": "go.universe.tf/metallb",
               "prometheus-operator": "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring",
               "wharfie": "github.com/rancher/wharfie", "crictl": "sigs.k8s.io/cri-tools",
               "regbot": "github.com/regclient/regclient"}
    for name, module in modules.items():
        go_mod = (PROJECT_DIR / "toolchain" / name / "go.mod").read_text()
        assert re.search(rf"^\s*(require\s+)?{re.escape(module)} v{re.escape(pins()[name])}$", go_mod, re.MULTILINE), name
