"""Real OpenSSH test hosts, one ``sshd`` per node, each with private files.

Why real sshd: the program under test configures k3s nodes through
pulumi-command over SSH; only a real server shows the quirks that matter
(``AcceptEnv`` refusing env requests, ``/etc/hosts`` being a bind mount that
cannot be renamed over, sudo for a non-root user, ``update-ca-certificates``).

Each node is ``unshare --mount --uts --propagation private`` running a setup
script that builds the node's private view, then ``exec sshd -D``.  What a
session on node 1 writes under ``/etc``, ``/var/lib``, ``/root``,
``/usr/local/share/ca-certificates`` or ``/usr/local/sbin`` stays on node 1 and
never reaches the machine's real files (``/root`` is a fresh home per node).  ``/tmp`` and everything else is
shared with the machine (that is how the host side sees the init-tool log).

The host side inspects a node with ``nsenter --target PID --mount``, never
through SSH, so assertions do not depend on the code under test.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._proc import child_pids, require_free_port, stop_pid_namespace, wait_for_tcp

Init = Literal["systemd", "openrc", "none"]

SSH_PORT = 22
DEPLOY_USER = "deploy"
DEPLOY_UID = 1500  # fixed so tests can assert ownership; not used on the machine
DEPLOY_HOME = "/var/lib/deploy-home"
AUTHORIZED_KEYS = "/etc/ssh/testbed_authorized_keys"
# The system interpreter: a venv's python may link into the machine's /root,
# which nodes replace with a fresh home.
NODE_PYTHON = "/usr/bin/python3"

DEFAULT_MANAGED_PATHS: tuple[str, ...] = (
    "/etc/hosts",
    "/etc/rancher",
    "/usr/local/share/ca-certificates",
    "/etc/ssl/certs",
    "/var/lib/k3s-registry",
)

# Paths private to each node.  Writes from the host side are only allowed
# below these, so a typo in a test can never overwrite the machine's files.
NODE_PRIVATE_PREFIXES: tuple[str, ...] = (
    "/etc",
    "/var/lib",
    "/root",
    "/run",
    "/usr/local/share/ca-certificates",
    "/usr/local/sbin",
    "/usr/local/bin",
)

# --pid --fork makes sshd PID 1 of the node: orphans of SSH sessions are
# reaped by sshd (not left as zombies for the machine's PID 1), and killing
# sshd makes the kernel kill everything else in the node.  /proc is not
# remounted, so host-side tools keep working after ``nsenter --mount``.
_UNSHARE: tuple[str, ...] = (
    "unshare",
    "--mount",
    "--uts",
    "--pid",
    "--fork",
    "--kill-child",
    "--propagation",
    "private",
)

_OVERLAID_DIRS: tuple[str, ...] = ("/etc", "/var/lib", "/usr/local/bin")

# The node's k3s units, as k3s's install.sh makes them (k3s-io/k3s install.sh: setup_env,
# create_systemd_service_file, create_openrc_service_file): systemd units in
# /etc/systemd/system/<name>.service with Type=notify (every install.sh today; an agent made by
# an older install.sh has Type=exec), TimeoutStartSec=0 and ExecStart=<BIN_DIR>/k3s <command>;
# OpenRC scripts in /etc/init.d/<name> with command="<BIN_DIR>/k3s" under supervise-daemon.
# BIN_DIR is /usr/local/bin. A node has only the units it is given: a server's "k3s", an
# agent's "k3s-agent", or a custom name (INSTALL_K3S_NAME).
@dataclass(frozen=True)
class Unit:
    name: str
    command: Literal["server", "agent"] = "server"
    type: Literal["notify", "exec"] = "notify"
    args: tuple[str, ...] = ()
    """Flags after the command, as install.sh's INSTALL_K3S_EXEC puts them into the unit."""


K3S_SERVER = Unit("k3s", "server", "notify")
K3S_AGENT = Unit("k3s-agent", "agent", "exec")
K3S_BINARY = "/usr/local/bin/k3s"
RHEL_SECURE_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
"""sudo's secure_path on RHEL and its rebuilds (no /usr/local/bin, where install.sh puts k3s)."""

_UNITS_DIR = "/run/testbed-units"
_UNIT_TOOL_PATH = "/usr/local/sbin/testbed-unit"

# The units' states live in /run/testbed-units (private to the node): per unit, <name>.type
# (notify or exec) and <name>.command (server or agent), written when the node starts: a unit
# without them does not exist. <name> holds its state: active (the default), inactive (stopped
# by its administrator), broken (active, but a restart never comes back: never-back) or
# restarting:<epoch> (ready from then on); <name>.invocation counts its starts (systemd's
# InvocationID). A notify unit is "activating" until it is ready, as systemd reports it; an exec
# unit is "active" as soon as it runs, ready or not; k3s (below) answers only once it is ready.
# A restart is recorded on the node's timeline when the unit goes down and when it is first
# seen ready, so a test can show that no two servers were down at once. restart-seconds sets
# how long a restart takes.
_UNIT_TOOL = """#!/bin/sh
# testbed unit states: testbed-unit exists|state|ready|wait|restart|invocation|command UNIT
units={units}
mkdir -p "$units"
now() {{ date +%s.%N; }}
mark() {{ printf '%s %s %s\\n' "$(now)" "$1" "$2" >> {timeline} 2>/dev/null || true; }}
unit=$2
[ -e "$units/$unit.type" ] || {{ [ "$1" = exists ] && exit 1; echo inactive; exit 3; }}
type=$(cat "$units/$unit.type")
state=$(cat "$units/$unit" 2>/dev/null || echo active)
case $state in
  restarting:*)
    if awk -v t="${{state#restarting:}}" -v n="$(now)" 'BEGIN {{ exit !(n >= t) }}'; then
      echo active > "$units/$unit"
      mark "$unit" up
      state=active
    fi
    ;;
esac
ready=no
case $state in active|broken) ready=yes ;; esac
case $1 in
  exists) ;;
  command) cat "$units/$unit.command" ;;
  invocation) cat "$units/$unit.invocation" 2>/dev/null || echo 1 ;;
  state)
    case $state in
      inactive) echo inactive ;;
      *) if [ "$ready" = yes ] || [ "$type" = exec ]; then echo active; else echo activating; fi ;;
    esac
    ;;
  ready) [ "$ready" = yes ] ;;
  wait)
    # A blocking start of a notify unit returns once the unit is ready; with TimeoutStartSec=0
    # it never gives up.
    if [ "$type" = notify ]; then
      until "$0" ready "$unit"; do sleep 0.1; done
    fi
    ;;
  restart)
    mark "$unit" down
    invocation=$(cat "$units/$unit.invocation" 2>/dev/null || echo 1)
    echo "$((invocation + 1))" > "$units/$unit.invocation"
    if [ "$state" = broken ] || [ "$state" = never-back ]; then
      echo never-back > "$units/$unit"
    else
      delay=$(cat "$units/restart-seconds" 2>/dev/null || echo 0)
      echo "restarting:$(awk -v n="$(now)" -v d="$delay" 'BEGIN {{ printf "%.3f", n + d }}')" > "$units/$unit"
    fi
    ;;
esac
"""

# systemctl as systemd answers these calls (and only these: anything else is refused, so a
# script that needs more shows here first). A unit that does not exist: is-active prints
# inactive (exit 3), show reports LoadState=not-found, restart fails with exit 5.
_FAKE_SYSTEMCTL = """#!/bin/sh
# testbed fake systemctl: records its argv; units as testbed-unit keeps them.
printf '%s\\n' "$*" >> {log} 2>/dev/null || true
unit_tool={unit_tool}
name() {{ echo "${{1%.service}}"; }}
unsupported() {{ echo "testbed systemctl: unsupported arguments: $*" >&2; exit 64; }}
case $1 in
  is-active)
    if [ "$2" = --quiet ]; then state=$("$unit_tool" state "$(name "$3")")
    else state=$("$unit_tool" state "$(name "$2")"); echo "$state"; fi
    [ "$state" = active ] || exit 3
    ;;
  is-enabled)
    if [ "$2" = --quiet ]; then unit=$3; else unit=$2; fi
    if "$unit_tool" exists "$(name "$unit")"; then [ "$2" = --quiet ] || echo enabled; else
      [ "$2" = --quiet ] || echo "Failed to get unit file state for $(name "$unit").service: No such file or directory" >&2
      exit 1
    fi
    ;;
  show)
    case $2 in --property=*) property=${{2#--property=}} ;; *) unsupported "$@" ;; esac
    [ "$3" = --value ] || unsupported "$@"
    unit=$(name "$4")
    if ! "$unit_tool" exists "$unit"; then
      case $property in
        LoadState) echo not-found ;;
        ActiveState) echo inactive ;;
        InvocationID|ExecStart) echo ;;
        *) unsupported "$@" ;;
      esac
      exit 0
    fi
    case $property in
      LoadState) echo loaded ;;
      ActiveState) "$unit_tool" state "$unit" || true ;;
      InvocationID) printf '%032x\\n' "$("$unit_tool" invocation "$unit")" ;;
      ExecStart)
        printf '{{ path=%s ; argv[]=%s %s ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; '\\
'code=(null) ; status=0/0 }}\\n' \\
          {k3s} {k3s} "$("$unit_tool" command "$unit")$(cat {units}/"$unit".args)"
        ;;
      *) unsupported "$@" ;;
    esac
    ;;
  list-unit-files)
    [ "$2" = --no-legend ] || unsupported "$@"
    for file in /etc/systemd/system/*.service; do
      [ -e "$file" ] || continue
      unit=${{file##*/}}
      # shellcheck disable=SC2254  # the pattern is the caller's glob
      case $unit in $3) echo "$unit enabled enabled" ;; esac
    done
    ;;
  restart)
    block=yes
    if [ "$2" = --no-block ]; then block=no; shift; fi
    unit=$(name "$2")
    if ! "$unit_tool" exists "$unit"; then echo "Failed to restart $unit.service: Unit $unit.service not found." >&2; exit 5; fi
    "$unit_tool" restart "$unit"
    if [ "$block" = yes ]; then "$unit_tool" wait "$unit"; fi
    ;;
  *) unsupported "$@" ;;
esac
"""

# rc-service as OpenRC's answers these calls. supervise-daemon reports a service started once it
# has started k3s, ready or not.
_FAKE_RC_SERVICE = """#!/bin/sh
# testbed fake rc-service (OpenRC): records its argv; units as testbed-unit keeps them.
printf '%s\\n' "$*" >> {log} 2>/dev/null || true
unit_tool={unit_tool}
if [ "$1" = --exists ] || [ "$1" = -e ]; then "$unit_tool" exists "$2"; exit; fi
if ! "$unit_tool" exists "$1"; then echo " * rc-service: service \\`$1' does not exist" >&2; exit 1; fi
case $2 in
  status)
    state=$("$unit_tool" state "$1" || true)
    if [ "$state" = inactive ]; then echo ' * status: stopped'; exit 3; else echo ' * status: started'; fi
    ;;
  restart) "$unit_tool" restart "$1" ;;
  *) echo "testbed rc-service: unsupported arguments: $*" >&2; exit 64 ;;
esac
"""

# k3s: `k3s kubectl get --raw=/readyz` answers once a server unit is ready, `k3s crictl info`
# once the running k3s units all are (containerd is k3s's child, restarted with it; a node whose
# tests need both a server's and an agent's unit has one containerd for both).
_FAKE_K3S = """#!/bin/sh
# testbed fake k3s: kubectl get --raw=/readyz and crictl info on k3s's socket, answered by ready units.
unit_tool={unit_tool}
want=
case "$*" in
  "kubectl get --raw=/readyz") want=server ;;
  "crictl --runtime-endpoint unix:///run/k3s/containerd/containerd.sock info") want=any ;;
  *) echo "testbed k3s: unsupported arguments: $*" >&2; exit 64 ;;
esac
ready=no
for file in {units}/*.type; do
  [ -e "$file" ] || continue
  unit=${{file##*/}}
  unit=${{unit%.type}}
  if [ "$want" = any ]; then
    if "$unit_tool" ready "$unit"; then ready=yes
    elif [ "$("$unit_tool" state "$unit" || true)" != inactive ]; then ready=no; break; fi
  elif [ "$("$unit_tool" command "$unit")" = server ] && "$unit_tool" ready "$unit"; then
    ready=yes
  fi
done
if [ "$ready" = yes ]; then echo ok; exit 0; fi
if [ "$want" = server ]; then
  echo 'The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?' >&2
else
  echo 'validate service connection: validate CRI v1 runtime API for endpoint "unix:///run/k3s/containerd/containerd.sock"' >&2
fi
exit 1
"""

_SSHD_CONFIG = """# testbed sshd for node {name}
ListenAddress {ip}:{port}
HostKey {host_key}
PidFile {pid_file}
PermitRootLogin prohibit-password
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
# Distribution default kept on purpose: other env requests are refused.
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""

# Python run inside a node (via nsenter) to dump files as JSON.
_SNAPSHOT_SCRIPT = r"""
import base64, json, os, sys
out = {}
def add(p):
    if os.path.islink(p):
        out[p] = base64.b64encode(os.readlink(p).encode()).decode()
    elif os.path.isfile(p):
        with open(p, "rb") as f:
            out[p] = base64.b64encode(f.read()).decode()
for root in sys.argv[1:]:
    if os.path.isdir(root) and not os.path.islink(root):
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for name in dirs + files:
                add(os.path.join(d, name))
    else:
        add(root)
json.dump(out, sys.stdout)
"""


@dataclass
class TestNode:
    """One running test host; every method sees the node's own filesystem."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    ip: str
    workdir: Path
    init: Init
    host_public_key: str
    proc: subprocess.Popen[bytes] = field(repr=False)
    port: int = SSH_PORT
    _sshd_pid: int | None = field(default=None, repr=False)
    engine_state: dict = field(default_factory=dict, repr=False)
    """What a Pulumi state would hold for resources that keep state on this node (tests/nodebed.py)."""

    @property
    def pid(self) -> int:
        """Machine PID of the node's sshd (PID 1 of the node's PID namespace)."""
        if self._sshd_pid is None:
            raise RuntimeError(f"node {self.name} is not running")
        return self._sshd_pid

    @property
    def restart_log_path(self) -> Path:
        """Host path of the file the fake systemctl / rc-service append to."""
        return self.workdir / "init-calls.log"

    def log(self) -> str:
        """sshd's stderr so far (``-e``), for failure messages."""
        return _read_text(self.workdir / "sshd.log")

    def restart_log(self) -> list[str]:
        """Lines recorded by the fake init tool, one per call (its argv)."""
        return _read_text(self.restart_log_path).splitlines()

    def clear_restart_log(self) -> None:
        """Forget recorded init-tool calls (e.g. after the first deploy)."""
        self.restart_log_path.write_text("")

    def timeline(self) -> list[tuple[float, str, str]]:
        """(time, unit, "down" | "up") for every restart the fake init tools saw, in order."""
        lines = _read_text(self.workdir / "init-timeline.log").splitlines()
        return [(float(t), unit, event) for t, unit, event in (line.split() for line in lines)]

    def set_unit(self, unit: str, state: str) -> None:
        """active, inactive (stopped by its administrator) or broken (a restart never comes back)."""
        self.write_file(f"/run/testbed-units/{unit}", state + "\n")

    def set_restart_seconds(self, seconds: float) -> None:
        """How long a restarted unit stays down."""
        self.write_file("/run/testbed-units/restart-seconds", f"{seconds}\n")

    def run_local(
        self, argv: list[str], *, input: bytes | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as root inside the node's mount and UTS namespaces."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--mount", "--uts", "--", *argv],
            input=input,
            capture_output=True,
            check=check,
            timeout=timeout,
        )

    def read_file(self, path: str) -> bytes | None:
        """Contents of ``path`` as the node sees it, or None when absent."""
        res = self.run_local(["sh", "-c", 'test -f "$1" || exit 3; exec cat -- "$1"', "sh", path])
        if res.returncode == 3:
            return None
        _raise_on_error(res, f"read {path}")
        return res.stdout

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (any type) in the node's view."""
        return self.run_local(["test", "-e", path]).returncode == 0

    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        """Write ``path`` in place (like ``cat >``), creating parent dirs.

        In place, not by rename, because ``/etc/hosts`` is a bind mount.
        Only node-private paths are allowed (see NODE_PRIVATE_PREFIXES).
        """
        _require_private(path)
        payload = data.encode() if isinstance(data, str) else data
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        if mode is not None:
            script += f' && chmod {mode:o} -- "$1"'
        _raise_on_error(self.run_local(["sh", "-c", script, "sh", path], input=payload), f"write {path}")

    def remove(self, path: str) -> None:
        """Delete ``path`` (recursively) in the node's view; absent is fine."""
        _require_private(path)
        _raise_on_error(self.run_local(["rm", "-rf", "--", path]), f"remove {path}")

    def snapshot(self, paths: tuple[str, ...] | list[str] = DEFAULT_MANAGED_PATHS) -> dict[str, bytes]:
        """Map every regular file (and symlink, to its target text) under ``paths``.

        Why: idempotency and cleanup tests compare the node before and after
        ``pulumi up``/``destroy``; missing paths are simply absent.
        """
        res = self.run_local([NODE_PYTHON, "-I", "-c", _SNAPSHOT_SCRIPT, *paths])
        _raise_on_error(res, "snapshot")
        return {p: base64.b64decode(v) for p, v in json.loads(res.stdout).items()}

    def stop(self) -> None:
        """Kill sshd and every process left in the node; mounts die with it.

        Idempotent; afterwards ``pid`` raises instead of naming a dead (and
        possibly reused) process.
        """
        stop_pid_namespace(self.proc, self._sshd_pid)
        self._sshd_pid = None


def start_node(
    name: str,
    ip: str,
    workdir: Path,
    *,
    hosts_content: bytes,
    authorized_pubkey: str,
    init: Init = "systemd",
    extra_files: dict[str, bytes] | None = None,
    units: tuple[Unit, ...] = (K3S_SERVER,),
    sudo_secure_path: str | None = None,
    timeout: float = 10.0,
) -> TestNode:
    """Start one node and wait until its sshd accepts connections.

    ``units``: the k3s units the node has (a server's by default); ``sudo_secure_path``: the
    PATH sudo gives a command, when it is not Debian's (e.g. RHEL_SECURE_PATH).
    """
    node = _launch(name, ip, workdir, hosts_content, authorized_pubkey, init, extra_files or {}, units, sudo_secure_path)
    _await_node(node, timeout)
    return node


def start_nodes(
    specs: list[tuple[str, str]],
    workdir: Path,
    *,
    hosts_content: bytes,
    authorized_pubkey: str,
    init: Init = "systemd",
    units: tuple[Unit, ...] = (K3S_SERVER,),
    timeout: float = 10.0,
) -> list[TestNode]:
    """Start several nodes ``[(name, ip), ...]`` in parallel (same settings).

    If any node fails, the ones already started are stopped before raising.
    """
    nodes = [_launch(name, ip, workdir, hosts_content, authorized_pubkey, init, {}, units, None) for name, ip in specs]
    try:
        for node in nodes:
            _await_node(node, timeout)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


# --- building a node -------------------------------------------------------


def _launch(
    name: str,
    ip: str,
    workdir: Path,
    hosts_content: bytes,
    authorized_pubkey: str,
    init: Init,
    extra_files: dict[str, bytes],
    units: tuple[Unit, ...],
    sudo_secure_path: str | None,
) -> TestNode:
    """Prepare the node's directory and start its namespace (no waiting)."""
    if not ip.startswith("127."):
        raise ValueError(f"test nodes must listen on loopback, not {ip}")
    for path in extra_files:
        _require_private(path)
    require_free_port(ip, SSH_PORT)
    ndir = (workdir / name).resolve()
    ndir.mkdir(parents=True, exist_ok=False)
    host_key = _make_host_key(ndir)
    if init != "none":
        extra_files = {**_unit_files(init, units), **extra_files}
    if sudo_secure_path is not None:
        extra_files = {**extra_files, "/etc/sudoers.d/secure-path": f'Defaults secure_path="{sudo_secure_path}"\n'.encode()}
    _write_node_files(ndir, name, ip, host_key, hosts_content, authorized_pubkey, init, extra_files)
    setup = ndir / "setup.sh"
    states = _unit_states(units if init != "none" else ())
    setup.write_text(setup.read_text().replace("exec /usr/sbin/sshd", states + "exec /usr/sbin/sshd"))
    with open(ndir / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [*_UNSHARE, "/bin/sh", str(ndir / "setup.sh")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    public = (ndir / "ssh_host_ed25519_key.pub").read_text().split()
    return TestNode(name=name, ip=ip, workdir=ndir, init=init, host_public_key=" ".join(public[:2]), proc=proc)


def _await_node(node: TestNode, timeout: float) -> None:
    """Wait for the node's port; remember its namespace for a clean stop."""
    try:
        wait_for_tcp(node.ip, node.port, alive=lambda: node.proc.poll() is None, describe=node.log, timeout=timeout)
        node._sshd_pid = child_pids(node.proc.pid)[0]
    except BaseException:
        node.stop()
        raise


def _make_host_key(ndir: Path) -> Path:
    """Generate the node's own ed25519 host key (callers pin its public half)."""
    key = ndir / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testbed-{ndir.name}", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key


def _write_node_files(
    ndir: Path,
    name: str,
    ip: str,
    host_key: Path,
    hosts_content: bytes,
    authorized_pubkey: str,
    init: Init,
    extra_files: dict[str, bytes],
) -> None:
    """Lay out everything the setup script mounts or copies into the node."""
    for sub in ("ca-certificates", "sbin", "extra"):
        (ndir / sub).mkdir(mode=0o755)
    _make_root_home(ndir / "root-home")
    for d in _OVERLAID_DIRS:
        (ndir / "upper" / d.strip("/")).mkdir(parents=True)
        (ndir / "work" / d.strip("/")).mkdir(parents=True)
    (ndir / "hosts").write_bytes(hosts_content)
    (ndir / "hosts").chmod(0o644)
    (ndir / "authorized_keys").write_text(authorized_pubkey.strip() + "\n")
    log = ndir / "init-calls.log"
    log.write_text("")
    log.chmod(0o666)
    _write_init_tool(ndir / "sbin", init, log)
    for i, (_path, data) in enumerate(sorted(extra_files.items())):
        (ndir / "extra" / str(i)).write_bytes(data)
    (ndir / "sshd_config").write_text(
        _SSHD_CONFIG.format(
            name=name,
            ip=ip,
            port=SSH_PORT,
            host_key=host_key,
            pid_file=ndir / "sshd.pid",
            authorized_keys=AUTHORIZED_KEYS,
        )
    )
    (ndir / "setup.sh").write_text(_setup_script(ndir, name, init, sorted(extra_files)))


def _make_root_home(home: Path) -> None:
    """A fresh root home like a new Debian server's (base-files dot files).

    Why not the machine's /root: its .bashrc changes PATH (pyenv, cargo) and
    bash reads it for every SSH command, so nodes would not behave like
    servers; it also keeps node sessions away from the machine's dot files.
    """
    home.mkdir(mode=0o700)
    for name in ("profile", "bashrc"):
        src = Path("/usr/share/base-files") / f"dot.{name}"
        if src.exists():
            (home / f".{name}").write_bytes(src.read_bytes())


def _write_init_tool(sbin: Path, init: Init, log: Path) -> None:
    """Place the recording fake init tool for this node's init system, and a k3s to ask the API."""
    if init == "systemd":
        tool, text = "systemctl", _FAKE_SYSTEMCTL
    elif init == "openrc":
        tool, text = "rc-service", _FAKE_RC_SERVICE
    else:
        return
    timeline = log.with_name("init-timeline.log")
    timeline.write_text("")
    timeline.chmod(0o666)
    values = {"log": shlex.quote(str(log)), "timeline": shlex.quote(str(timeline)), "units": _UNITS_DIR,
              "unit_tool": _UNIT_TOOL_PATH, "k3s": K3S_BINARY}
    # k3s where install.sh puts it (the node's /usr/local/bin is an overlay: this is its upper dir).
    bin_dir = sbin.parent / "upper" / K3S_BINARY.strip("/").rsplit("/", 1)[0]
    bin_dir.mkdir(parents=True, exist_ok=True)
    for path, content in (
        (sbin / tool, text.format(**values)),
        (sbin / "testbed-unit", _UNIT_TOOL.format(**values)),
        (bin_dir / "k3s", _FAKE_K3S.format(**values)),
    ):
        path.write_text(content)
        path.chmod(0o755)


def _q(path: Path | str) -> str:
    """Shell-quote a path for the generated setup script."""
    return shlex.quote(str(path))


def _setup_script(ndir: Path, name: str, init: Init, extra_paths: list[str]) -> str:
    """The sh script run inside the fresh namespace before ``exec sshd``."""
    lines = [
        "set -eu",
        f"hostname {_q(name)}",
        "mount -t tmpfs -o mode=755 tmpfs /run",
        "mkdir -m755 /run/sshd",
    ]
    if init == "systemd":
        lines.append("mkdir -p /run/systemd/system")
    elif init == "openrc":
        lines += ["mkdir -p /run/openrc", "touch /run/openrc/softlevel"]
    for d in _OVERLAID_DIRS:
        sub = d.strip("/")
        opts = f"lowerdir={d},upperdir={ndir / 'upper' / sub},workdir={ndir / 'work' / sub}"
        lines.append(f"mount -t overlay overlay -o {_q(opts)} {d}")
    lines += [
        f"mount --bind {_q(ndir / 'hosts')} /etc/hosts",
        f"mount --bind {_q(ndir / 'ca-certificates')} /usr/local/share/ca-certificates",
        f"mount --bind {_q(ndir / 'sbin')} /usr/local/sbin",
        f"mount --bind {_q(ndir / 'root-home')} /root",
    ]
    if init == "systemd":  # absolute /usr/bin/systemctl must hit the fake too
        lines.append(f"mount --bind {_q(ndir / 'sbin' / 'systemctl')} /usr/bin/systemctl")
    lines += [
        f"useradd -u {DEPLOY_UID} -U -m -d {DEPLOY_HOME} -s /bin/sh {DEPLOY_USER}",
        f"usermod -p '*' {DEPLOY_USER}",  # '!' would make sshd treat it as locked
        f"echo '{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/{DEPLOY_USER}",
        f"chmod 0440 /etc/sudoers.d/{DEPLOY_USER}",
        f"visudo -cqf /etc/sudoers.d/{DEPLOY_USER}",
        f"install -m 0644 {_q(ndir / 'authorized_keys')} {AUTHORIZED_KEYS}",
    ]
    for i, path in enumerate(extra_paths):
        lines.append(f'mkdir -p -- "$(dirname -- {_q(path)})"')
        lines.append(f"cat {_q(ndir / 'extra' / str(i))} > {_q(path)}")
    lines.append(f"exec /usr/sbin/sshd -D -e -f {_q(ndir / 'sshd_config')}")
    return "\n".join(lines) + "\n"


def _unit_files(init: Init, units: tuple[Unit, ...]) -> dict[str, bytes]:
    """The units' files as install.sh writes them (the parts a script may read)."""
    files = {}
    for unit in units:
        if init == "systemd":
            files[f"/etc/systemd/system/{unit.name}.service"] = (
                "[Unit]\nDescription=Lightweight Kubernetes\n\n[Service]\n"
                f"Type={unit.type}\nKillMode=process\nTimeoutStartSec=0\nRestart=always\nRestartSec=5s\n"
                f"ExecStart={K3S_BINARY} \\\n    {unit.command}{_arguments(unit)} \\\n\n"
            ).encode()
        else:
            files[f"/etc/init.d/{unit.name}"] = (
                "#!/sbin/openrc-run\n\nsupervisor=supervise-daemon\n"
                f'name={unit.name}\ncommand="{K3S_BINARY}"\ncommand_args="{unit.command}{_arguments(unit)}\n'
                f'    >>/var/log/{unit.name}.log 2>&1"\n'
            ).encode()
    return files


def _arguments(unit: Unit) -> str:
    return "".join(" " + shlex.quote(arg) for arg in unit.args)


def _unit_states(units: tuple[Unit, ...]) -> str:
    """Setup-script lines that register the units with the test bed's init tools (in /run)."""
    lines = [f"mkdir -p {_UNITS_DIR}"]
    for unit in units:
        lines += [f"echo {unit.type} > {_UNITS_DIR}/{unit.name}.type",
                  f"echo {unit.command} > {_UNITS_DIR}/{unit.name}.command",
                  f"printf '%s' {_q(_arguments(unit))} > {_UNITS_DIR}/{unit.name}.args"]
    return "\n".join(lines) + "\n"


# --- small helpers -----------------------------------------------------------


def _require_private(path: str) -> None:
    """Refuse host-side writes outside the node's private mounts."""
    norm = os.path.normpath(path)
    if not any(norm == p or norm.startswith(p + "/") for p in NODE_PRIVATE_PREFIXES):
        raise ValueError(f"{path} is shared with the real machine; allowed: {NODE_PRIVATE_PREFIXES}")


def _raise_on_error(res: subprocess.CompletedProcess[bytes], what: str) -> None:
    """Turn a failed nsenter helper into an exception with its stderr."""
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")


def _read_text(path: Path) -> str:
    """Read a log file that may not exist yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
