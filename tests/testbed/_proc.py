"""Small process helpers shared by the test-bed modules.

They exist so that every started program is found, stopped and reaped the
same way: a test bed that leaks an ``sshd`` or a registry poisons every later
test that wants the same loopback address and port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_for_tcp(
    host: str,
    port: int,
    *,
    alive: Callable[[], bool],
    describe: Callable[[], str],
    timeout: float = 10.0,
) -> None:
    """Poll until ``host:port`` accepts a TCP connection.

    Why poll: both sshd and the registry bind their port some milliseconds
    after exec, and a test must not race them.  ``alive`` lets us fail fast
    (with ``describe()``, normally the program's log) when the program died
    instead of waiting for the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"process died before {host}:{port} opened:\n{describe()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host}:{port} did not open within {timeout}s:\n{describe()}")
        time.sleep(0.05)


def require_free_port(host: str, port: int) -> None:
    """Fail early when something already listens on ``host:port``.

    Why: readiness is detected by connecting, so a leftover server from an
    earlier test would otherwise make a failed start look successful.
    """
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise RuntimeError(f"{host}:{port} is already in use (a leaked test server?)")


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """Terminate each still running process, the last started first; killed if it lingers."""
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def mount_ns_id(pid: int) -> str:
    """Return the mount-namespace identity (``mnt:[inode]``) of ``pid``."""
    return os.readlink(f"/proc/{pid}/ns/mnt")


def pids_in_mount_ns(ns_id: str) -> list[int]:
    """List every live process whose mount namespace is ``ns_id``.

    Used to find processes an SSH session left behind inside a node, so they
    are killed with the node (nothing else identifies them reliably).
    """
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") == ns_id:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_namespace(proc: subprocess.Popen[bytes], ns_id: str | None, timeout: float = 5.0) -> None:
    """Stop ``proc`` and every other process living in its mount namespace.

    Order matters: the helpers (session sshd children, sudo, shells) are
    killed leaves first while ``proc`` is still alive, each only once its own
    children are gone, so every parent reaps its child and no zombie is left
    for PID 1 (which reaps slowly here, and ``pgrep sshd`` would see them).
    Then ``proc`` itself is terminated and reaped by us.  The namespace and
    all its mounts vanish with the last process; nothing needs unmounting.
    """
    if proc.poll() is not None:
        # Already dead (or stopped before): its namespace id may since have
        # been reused, so sweeping by it could hit unrelated processes.
        proc.wait()
        return
    if ns_id is not None:
        _kill_leaves_first(ns_id, keep=proc.pid, timeout=timeout)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    if ns_id is not None:
        for pid in pids_in_mount_ns(ns_id):  # anything re-parented away from proc
            _kill(pid, signal.SIGKILL)


def stop_pid_namespace(proc: subprocess.Popen[bytes], init_pid: int | None, timeout: float = 5.0) -> None:
    """Stop an ``unshare --pid --fork`` tree whose namespace init is ``init_pid``.

    Killing the init makes the kernel kill and reap every other process of
    the PID namespace; ``unshare`` then reaps the init and we reap ``unshare``.
    Nothing is left, not even a zombie.  Safe to call twice.
    """
    if proc.poll() is None and init_pid is not None:
        _kill(init_pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(init_pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()  # --kill-child takes the namespace init down with it
    proc.wait(timeout)


def child_pids(pid: int, timeout: float = 5.0) -> list[int]:
    """Children of ``pid``, waiting briefly for the first one to appear."""
    deadline = time.monotonic() + timeout
    while True:
        kids = sorted(p for p, parent in _parent_map().items() if parent == pid)
        if kids or time.monotonic() > deadline:
            if not kids:
                raise RuntimeError(f"process {pid} has no child")
            return kids
        time.sleep(0.01)


def _kill_leaves_first(ns_id: str, *, keep: int, timeout: float) -> None:
    """SIGKILL the namespace's processes (except ``keep``) children first."""
    deadline = time.monotonic() + timeout
    while True:
        victims = [p for p in pids_in_mount_ns(ns_id) if p != keep]
        if not victims:
            return
        parents = set(_parent_map().values())
        if time.monotonic() > deadline:
            leaves = victims  # something refuses to reap: give up on order
        else:
            leaves = [p for p in victims if p not in parents]
        for pid in leaves:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _parent_map() -> dict[int, int]:
    """pid -> ppid for every process (zombies included) on the machine."""
    result: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            result[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return result
