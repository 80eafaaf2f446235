"""checkov, a Kubernetes manifest scanner, passes every manifest the program declares.

checkov lives in its own virtualenv (``venv-scan/``, from requirements-scan.txt, made by
./scripts/test): its pins conflict with pulumi's. It runs offline (``--skip-download`` and
``BC_SKIP_MAPPING=TRUE``; without them it calls a web API and prints no report). A check that
does not fit this program is skipped only by an annotation on the resource that carries the
reason (``checkov.io/skipN: CKV_K8S_xx=<reason>``, see components/cluster/naming.py).

The namespace enforces the "restricted" Pod Security Standard, so the pod template is also
checked against that profile's rules here: checkov knows nothing of Pod Security Admission.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import GUIDE_CONFIG, PROJECT_DIR, evaluate
from manifests import kubernetes_manifests

CHECKOV = PROJECT_DIR / "venv-scan" / "bin" / "checkov"
CONFIGS = {
    "guide": GUIDE_CONFIG,
    "without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false"},
    "ecdsa-custom-port": {**GUIDE_CONFIG, "keyAlgorithm": "ECDSA", "port": "443", "certIpAddresses": ["fd00::5"]},
    "image-digest": {**GUIDE_CONFIG, "image": "registry:3.1.1@sha256:" + "a" * 64},
    # Pull-through caches: a Deployment, Service, claim and NetworkPolicy each, an upstream Secret.
    "caches": {**GUIDE_CONFIG, "mirrors": [
        {"upstream": "docker.io", "username": "robot", "password": "not-a-real-password"},
        {"upstream": "harbor.lab.test", "url": "https://harbor.lab.test:8443"},
    ]},
    "anonymous-cache": {**GUIDE_CONFIG, "nodes": [{"name": "cube01", "host": "192.168.0.111", "role": "agent"}],
                        "mirrors": [{"upstream": "docker.io", "anonymous": True}]},
    # The retention CronJob, its ServiceAccount, ConfigMap, credentials Secret and NetworkPolicy.
    "retention": {**GUIDE_CONFIG, "retention": {"keepLast": 10, "keepDays": 30, "protect": ["latest", "v*"]}},
    "retention-without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false",
                               "retention": {"keepDays": 7, "dryRun": True, "timeZone": "Europe/Berlin"}},
    "caches-without-auth": {"hostname": "registry.example.lan", "loadBalancerIp": "10.1.2.3", "auth": "false",
                            "mirrors": [{"upstream": "ghcr.io"}]},
}


def declared(config: dict[str, Any]):
    """A cache's password makes ``mirrors`` a secret key, as `pulumi config set --secret` would."""
    return evaluate(config, secret_keys=("mirrors",) if "mirrors" in config else ())
MIN_CHECKS_PER_CONFIG = 50
"""checkov 3 runs about 90 checks on these objects; far fewer means it did not really scan."""

KINDS_WITHOUT_CHECKS = {"namespace", "persistentvolumeclaim", "networkpolicy", "validatingadmissionpolicy",
                        "validatingadmissionpolicybinding"}
"""checkov 3 has no check of their own for these kinds (the NetworkPolicy is read by
CKV2_K8S_6, a check on the pod); every other manifest must get checks. The admission policy's
effect is proven on the real API server (tests/test_cluster_real.py)."""

ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_38"}
"""Every exception is a reviewed change: its reason is on the object (components/cluster/naming.py,
retention.py, maintenance.py), its id here. CKV_K8S_38 (a mounted API token) only on the
maintenance CronJob, the one API client (test_only_the_maintenance_job_mounts_an_api_token)."""


def _checkov() -> Path:
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(f"{CHECKOV} is missing; run ./scripts/test, which installs requirements-scan.txt into venv-scan/")
    return CHECKOV


def write_manifests(directory: Path, manifests: list[dict[str, Any]]) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for index, manifest in enumerate(manifests):
        path = directory / f"{index:02d}-{manifest['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        paths.append(path)
    return paths


def scan(directory: Path) -> dict[str, Any]:
    """checkov's JSON report for every manifest under ``directory``; fails when there is none."""
    result = subprocess.run(
        [str(_checkov()), "--directory", str(directory), "--framework", "kubernetes", "--output", "json",
         "--skip-download", "--skip-results-upload"],
        cwd=directory, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        capture_output=True, text=True, timeout=600, check=False,
    )
    where = f"checkov exited {result.returncode}; stderr:\n{result.stderr[-3000:]}\nstdout:\n{result.stdout[:3000]}"
    assert result.returncode in (0, 1), where  # 1: some check failed; anything else is an error
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report. {where}")
    reports = report if isinstance(report, list) else [report]
    kubernetes = [r for r in reports if r.get("check_type") == "kubernetes"]
    assert len(kubernetes) == 1, f"checkov printed no Kubernetes report (did it find the files?). {where}"
    summary = kubernetes[0]["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse some manifests: {summary}"
    return kubernetes[0]


def checks(report: dict[str, Any], kind: str, directory: Path) -> list[dict[str, Any]]:
    """The ``kind`` (passed, failed, skipped) checks run on the files under ``directory``."""
    return [c for c in report["results"].get(f"{kind}_checks", [])
            if Path(c["file_abs_path"]).resolve().is_relative_to(directory.resolve())]


def describe(check: dict[str, Any]) -> str:
    return (f"{check['check_id']} {check['check_name']!r} on {check['resource']} "
            f"({Path(check['file_path']).name}), guideline: {check.get('guideline') or 'none'}")


def weakened_deployment() -> dict[str, Any]:
    """The guide's Deployment with a privileged, escalating container running as root."""
    deployment = next(m for m in kubernetes_manifests(evaluate(GUIDE_CONFIG)) if m["kind"] == "Deployment")
    weak = copy.deepcopy(deployment)
    pod = weak["spec"]["template"]["spec"]
    del pod["securityContext"]
    pod["containers"][0]["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    return weak


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One checkov run over the manifests of every configuration (its start-up dominates)."""
    root = tmp_path_factory.mktemp("manifest-scan")
    files = {name: write_manifests(root / name, kubernetes_manifests(declared(config)))
             for name, config in CONFIGS.items()}
    write_manifests(root / "weakened", [weakened_deployment()])
    return root, files, scan(root)


@pytest.fixture(params=sorted(CONFIGS))
def config_scan(request, scanned):
    root, files, report = scanned
    directory = root / request.param
    results = {kind: checks(report, kind, directory) for kind in ("passed", "failed", "skipped")}
    return request.param, files[request.param], results


def test_checkov_ran_its_checks_on_every_manifest(config_scan):
    _, files, results = config_scan
    ran = results["passed"] + results["failed"]
    assert len(ran) >= MIN_CHECKS_PER_CONFIG, f"checkov ran only {len(ran)} checks"
    scanned_files = {Path(c["file_abs_path"]).name for kind in results.values() for c in kind}
    expected = {path.name for path in files if path.stem.split("-", 1)[1] not in KINDS_WITHOUT_CHECKS}
    assert scanned_files == expected, "checkov ignored some manifests"


def test_checkov_finds_nothing(config_scan):
    _, _, results = config_scan
    failed = results["failed"]
    assert not failed, f"{len(failed)} checkov finding(s):\n" + "\n".join(describe(c) for c in failed)


def test_every_skipped_check_carries_its_reason(config_scan):
    _, _, results = config_scan
    for check in results["skipped"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert reason, f"skipped without a reason: {describe(check)}"
        assert check["check_id"] in ALLOWED_SKIPS, f"an exception nobody reviewed: {describe(check)}: {reason}"


def test_only_the_maintenance_job_mounts_an_api_token(config_scan):
    _, _, results = config_scan
    token_checks = [c for kind in ("passed", "skipped", "failed") for c in results[kind] if c["check_id"] == "CKV_K8S_38"]
    assert {c["resource"] for c in token_checks if c in results["skipped"]} == {
        "CronJob.docker-registry.registry-maintenance"}
    assert {c["resource"] for c in results["passed"] if c["check_id"] == "CKV_K8S_38"} >= {
        "Deployment.docker-registry.registry"}


def test_a_digest_pinned_image_is_checked_not_skipped(config_scan):
    name, files, results = config_scan
    digest_check = [c for kind in ("passed", "skipped") for c in results[kind]
                    if c["check_id"] == "CKV_K8S_43" and c["resource"].startswith("Deployment.")]
    deployments = [path for path in files if path.stem.endswith("-deployment")]
    assert len(digest_check) == len(deployments) >= 1  # the registry's and each cache's
    expected = "PASSED" if name == "image-digest" else "SKIPPED"
    assert {check["check_result"]["result"] for check in digest_check} == {expected}


def test_secrets_in_the_environment_are_skipped_only_on_a_cache_with_upstream_credentials(config_scan):
    name, _, results = config_scan
    skipped = sorted(c["resource"] for c in results["skipped"] if c["check_id"] == "CKV_K8S_35")
    expected = ["Deployment.docker-registry.registry-cache-docker-io"] if name == "caches" else []
    assert skipped == expected


def test_the_scan_fails_a_weakened_deployment(scanned):
    """Guards the checks above: the same run reports a privileged, escalating, root container."""
    root, _, report = scanned
    failed = {c["check_id"] for c in checks(report, "failed", root / "weakened")}
    # privileged, privilege escalation, root, capabilities, seccomp
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_37", "CKV_K8S_31"} <= failed, failed


# The "restricted" Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
# which the namespace enforces: the baseline rules plus the restricted ones.
RESTRICTED_VOLUME_SOURCES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                             "persistentVolumeClaim", "projected", "secret"}
BASELINE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in this pod spec the restricted profile (latest) forbids; empty when it is admitted."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            problems.append(f"volume {volume['name']} uses {sorted(sources - RESTRICTED_VOLUME_SOURCES)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in BASELINE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    if pod_context.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                                 "container_kvm_t", "container_engine_t"):
        problems.append("pod SELinux type")
    for container in containers:
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp profile is {seccomp}")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name}: AppArmor unconfined")
        if context.get("seLinuxOptions", {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                                 "container_kvm_t", "container_engine_t"):
            problems.append(f"{name}: SELinux type")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_the_pod_meets_the_restricted_pod_security_standard(config_name):
    manifests = kubernetes_manifests(declared(CONFIGS[config_name]))
    namespace = next(m for m in manifests if m["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert len(deployments) == 1 + len(CONFIGS[config_name].get("mirrors", []))
    for deployment in deployments:
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == [], deployment["metadata"]["name"]


def test_the_restricted_rules_reject_a_weakened_pod():
    deployment = next(m for m in kubernetes_manifests(evaluate(GUIDE_CONFIG)) if m["kind"] == "Deployment")
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    del pod["securityContext"]
    pod["containers"][0]["securityContext"] = {"privileged": True}
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_violations(pod)
    assert len(problems) == 6, problems  # privileged, escalation, root, seccomp, capabilities, hostPath
