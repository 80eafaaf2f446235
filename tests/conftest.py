"""Shared test setup: import paths, and the real test bed's common pieces."""

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS_DIR.parent), str(TESTS_DIR)]

REQUIRED_PROGRAMS = ("sshd", "ssh-keygen", "docker-registry", "skopeo", "curl", "unshare", "nsenter",
                     "update-ca-certificates", "shellcheck", "sudo", "promtool")


def pytest_sessionstart(session):
    """In CI a missing tool is a failure, never a silent skip: scripts/test installs them all."""
    missing = [p for p in REQUIRED_PROGRAMS if not shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
    if missing or os.geteuid() != 0:
        reason = f"missing programs: {missing}" if missing else "the test bed needs root"
        raise pytest.UsageError(f"{reason}; run ./scripts/test, which installs and runs everything as root")


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    from testbed.sshexec import generate_client_key

    return generate_client_key(tmp_path_factory.mktemp("client-key"))


# The test bed's Kubernetes cluster (tests/testbed/cluster.py), one for the whole session: a
# real control plane, kwok's fake node, MetalLB's controller handing out 127.0.0.x addresses.
# A stack that applies its objects there keeps to a namespace of its own.
KUBE_API_IP = "127.0.0.70"
LOAD_BALANCER_POOL = "127.0.0.0/24"


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    from pulumi_real import toolchain_dir
    from testbed.cluster import start_cluster

    running = start_cluster(toolchain_dir(), tmp_path_factory.mktemp("kube-cluster"), KUBE_API_IP, LOAD_BALANCER_POOL)
    yield running
    running.stop()
