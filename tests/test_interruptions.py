"""A node step killed at any point leaves every file it writes entirely old or entirely new.

For each step (trust, hosts, k3s, restart) and each phase (create, and delete after a full
apply), the step's command -- exactly the text the program declared, ``sh <scripts dir>/run
<step> install <digest>`` or ``... remove``, run over real SSH on a real test host -- is killed
(SIGKILL to the whole session) at its k-th external command, BEFORE the command runs and AFTER
it finished, for every k until a run completes (see interrupt.py). The ``run`` helper's own
reads of the scripts (``cat``, to check their digest) are cut points too.
Right after each kill, every file the step manages must be byte-identical to how it was
before the run or to how an uninterrupted run leaves it; then the step is run again, without
interruption, and the node must end exactly where an uninterrupted run leaves it (every byte,
every mode, no debris, k3s restarted after the last change of registries.yaml), with all the
foreign content of /etc/hosts and registries.yaml still there.

The nodes start with rich content: an /etc/hosts of several lines without a final newline
(bind-mounted, as in containers and LXC, so it is rewritten in place), and a registries.yaml
with a comment and a docker.io mirror (or, in the "bare" cases, none at all); and, as the engine
creates the node's NodeScripts resource before its Commands, with the node's scripts directory,
written by the real provider. The scripts are not files of a step, but they lie under the
managed roots and stay judged there: a step must leave them as they were, kill or no kill.

The installer of the scripts (the NodeScripts provider's one ``sh -s`` session, the installer on
stdin) is swept the same way, on an applied node whose scripts directory is gone (a refresh
reports it; the update puts it back) or holds an older version (the update writes the new one):
right after each kill every script is entirely old or entirely new (or absent where it was
absent; ``*.tmp`` beside it), and the next install by the provider leaves the scripts directory
byte for byte as an uninterrupted install does, with the provider's reader finding the node in sync.

Speed: the cases run in parallel on a few test hosts that are reset between cases from a tar
archive. ``update-ca-certificates`` is replaced, inside the wrapper that counts and cuts it,
by a stand-in that rebuilds the bundle from the machine's bundle plus the local anchors (the
real one takes seconds; what it writes is not a file of the scripts), and Java's keystore
hook is removed from the test hosts (test_pulumi_real.py covers both for real). Each node an
interrupted run leaves is re-run once: cases that leave the same node share the verdict (all
"before" points run first, so a kill after call k finds the node of the kill before call k+1).
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import re
import shlex
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from components.node import ssh
from components.node.plan import NodePlan
from components.node.runner import SCRIPTS, installer_script
from components.node.scripts_resource import NodeScriptsProvider, outputs_of
from components.node.scripts_resource import install as install_scripts
from components.node.ssh import ProbeError
from components.node.steps import ACTIONS

from harness import evaluate
from interrupt import Interrupter, Run, restore_state, save_state
from nodebed import declared_plan, node_steps, outs, provider_props, scripts_resource, write_scripts
from testbed.sshnodes import DEFAULT_MANAGED_PATHS, TestNode, start_node

HOSTNAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.203"
INSTANCE = "k3s-registry-dev"
NODE_IPS = [f"127.0.0.{n}" for n in range(61, 64)]
RICH_HOSTS = (
    b"127.0.0.1\tlocalhost\n"
    b"::1\tlocalhost ip6-localhost ip6-loopback\n"
    b"# a comment the admin wrote\n"
    b"127.0.1.1\tnode.cube.test node\n"
    b"10.9.9.9\tregistry.cube.test old-name\n"
    b"10.0.0.5\tnas.cube.test"  # no final newline
)
RICH_REGISTRIES = b"""# mirrors we had before -- keep this comment
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.cube.test:5000"
configs:
  "mirror.cube.test:5000":
    tls: {insecure_skip_verify: false}
"""
REGISTRIES = "/etc/rancher/k3s/registries.yaml"
JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Files the steps write themselves (their contents are judged right after every kill).
MANAGED_ROOTS = ("/etc/hosts", "/etc/rancher", "/var/lib/k3s-registry", "/usr/local/share/ca-certificates")
# Scratch a killed run may leave behind: allowed right after the kill, gone after the re-run.
TRANSIENT = re.compile(r"(^|/)(\.k3s-registry[.-][^/]*|restart-pending|[^/]*\.tmp|[^/]*\.removing)$")
STEP_ORDER = ("trust", "hosts", "k3s", "restart")
# Every host runs the steps declared for this node, so the hosts stay alike: a step's owner (its
# node's URN) is in the files it writes.
SCRIPTS_OF = "int0"
IN_PLACE = ("/etc/hosts",)  # bind-mounted on the test hosts, as in containers and LXC


@dataclass(frozen=True)
class Scenario:
    step: str
    phase: str  # create or delete
    registries: bytes | None  # registries.yaml the node starts with (None: no file, no /etc/rancher)

    @property
    def id(self) -> str:
        return f"{self.step}-{self.phase}" + ("" if self.registries is not None else "-without-registries-yaml")


STEP_SCENARIOS = [
    Scenario("trust", "create", RICH_REGISTRIES),
    Scenario("trust", "delete", RICH_REGISTRIES),
    Scenario("hosts", "create", RICH_REGISTRIES),
    Scenario("hosts", "delete", RICH_REGISTRIES),
    Scenario("k3s", "create", RICH_REGISTRIES),
    Scenario("k3s", "delete", RICH_REGISTRIES),
    Scenario("k3s", "create", None),
    Scenario("k3s", "delete", None),
    Scenario("restart", "create", RICH_REGISTRIES),
    Scenario("restart", "delete", RICH_REGISTRIES),
]
# The NodeScripts installer on an applied node: "install" into a scripts directory that is gone,
# "update" over the scripts of an older plan.
INSTALLER = "scripts"
INSTALLER_SCENARIOS = [Scenario(INSTALLER, "install", RICH_REGISTRIES), Scenario(INSTALLER, "update", RICH_REGISTRIES)]
SCENARIOS = STEP_SCENARIOS + INSTALLER_SCENARIOS


# ----------------------------------------------------------------------------- node state


@dataclass
class State:
    files: dict[str, bytes]  # every file under DEFAULT_MANAGED_PATHS (symlinks: target text)
    modes: dict[str, str]
    etc: dict[str, str]  # sha256 of every other regular file directly in /etc, beside /etc/hosts

    def managed(self) -> dict[str, bytes]:
        return {p: v for p, v in self.files.items() if p.startswith(MANAGED_ROOTS) and not TRANSIENT.search(p)}


_READ_STATE = r"""
import base64, json, os, sys
files, modes = {}, {}
for root in sys.argv[1:]:
    paths = [root]
    if os.path.isdir(root) and not os.path.islink(root):
        paths = []
        for d, dirs, names in os.walk(root):
            dirs.sort()
            paths += [os.path.join(d, n) for n in dirs + names]
    for p in paths:
        if os.path.islink(p):
            files[p] = base64.b64encode(os.readlink(p).encode()).decode()
        elif os.path.isfile(p):
            with open(p, "rb") as f:
                files[p] = base64.b64encode(f.read()).decode()
        if os.path.lexists(p):
            modes[p] = "%o" % (os.lstat(p).st_mode & 0o7777)
import hashlib
etc = {}
for n in os.listdir("/etc"):
    p = "/etc/" + n
    if n != "hosts" and os.path.isfile(p) and not os.path.islink(p):
        with open(p, "rb") as f:
            etc[p] = hashlib.sha256(f.read()).hexdigest()
json.dump([files, modes, etc], sys.stdout)
"""


def read_state(node: TestNode) -> State:
    """Every file under the managed paths (bytes; a symlink as its target), their modes, and
    what lies beside /etc/hosts: one look into the node."""
    result = node.run_local(["/usr/bin/python3", "-I", "-c", _READ_STATE, *DEFAULT_MANAGED_PATHS])
    assert result.returncode == 0, result.stderr.decode()
    files, modes, etc = json.loads(result.stdout)
    files = {p: base64.b64decode(v) for p, v in files.items() if p != JAVA_KEYSTORE}
    return State(files, {p: m for p, m in modes.items() if p.startswith(MANAGED_ROOTS)}, etc)


def show(content: bytes | None) -> str:
    if content is None:
        return "<absent>"
    return repr(content if len(content) <= 160 else content[:80] + b"..." + content[-60:])


# ----------------------------------------------------------------------------- the test hosts


@dataclass
class Host:
    """One reusable test host with its wrappers and its pristine archive."""

    node: TestNode
    interrupter: Interrupter
    work: Path


@dataclass(frozen=True)
class Installer:
    """One NodeScripts install, as the engine runs it after the refresh that found a reason to."""

    resource_id: str
    news: dict[str, Any]  # the provider's inputs: the declared plan; connection to the case's host
    state: dict[str, Any]  # the outputs in the state, as the refresh before the update read them
    line: str  # the session the provider opens for it: command line...
    stdin: str  # ...and stdin (the installer)


@dataclass
class Reference:
    base: Path  # archive of the state every case of the scenario starts from
    before: State
    after: State  # after one uninterrupted run
    clean: Run
    restarted: bool
    installer: Installer | None = None  # the installer scenarios'


def stand_in_update_ca_certificates(base_bundle: Path) -> str:
    return f"""#!/bin/sh
# stand-in for update-ca-certificates: the machine's bundle plus every local anchor, renamed into place
set -eu
{{
  cat {shlex.quote(str(base_bundle))}
  for anchor in /usr/local/share/ca-certificates/*.crt; do
    if [ -f "$anchor" ]; then cat "$anchor"; fi
  done
}} > {BUNDLE}.stand-in
mv -f {BUNDLE}.stand-in {BUNDLE}
"""


@pytest.fixture(scope="module")
def declared():
    return evaluate({
        "hostname": HOSTNAME,
        "loadBalancerIp": REGISTRY_IP,
        "osTrustStore": "true",  # the trust step's writes are the ones worth cutting
        "nodes": [{"name": f"int{i}", "host": ip, "role": "server", "user": "root"} for i, ip in enumerate(NODE_IPS)],
    })


@pytest.fixture(scope="module")
def hosts(client_key, declared):
    root = Path(tempfile.mkdtemp(prefix="k3s-registry-interruptions-", dir="/tmp"))
    scripts = scripts_resource(declared, SCRIPTS_OF)
    started: list[Host] = []

    def start(index_ip):
        index, ip = index_ip
        name = f"int{index}"
        work = root / name
        node = start_node(name, ip, work / "node", hosts_content=RICH_HOSTS, authorized_pubkey=client_key.public_key_line,
                          extra_files={REGISTRIES: RICH_REGISTRIES})
        try:
            node.remove("/etc/ca-certificates/update.d/jks-keystore")
            base_bundle = work / "base-bundle.crt"
            bundle = node.read_file(BUNDLE)
            assert bundle is not None, BUNDLE
            base_bundle.write_bytes(bundle)
            interrupter = Interrupter(node, work / "interrupt",
                                      {"update-ca-certificates": stand_in_update_ca_certificates(base_bundle)})
            if name == SCRIPTS_OF:
                # The scripts the steps run: written as the engine does before the Commands run,
                # by the real provider, on the host its connection names. Every case starts from
                # an archive made on this host (see reference), so it has them too.
                assert scripts.inputs["connection"]["host"] == ip, scripts.inputs["connection"]
                assert write_scripts(scripts, node, client_key) == "created"
            save_state(node, work / "pristine.tar")
        except BaseException:
            node.stop()
            raise
        return Host(node, interrupter, work)

    try:
        with ThreadPoolExecutor(len(NODE_IPS)) as pool:
            futures = [pool.submit(start, item) for item in enumerate(NODE_IPS)]
            for future in futures:
                try:
                    started.append(future.result())
                except Exception:
                    for other in futures:
                        if other.exception() is None:
                            other.result().node.stop()
                    raise
        yield started
    finally:
        for host in started:
            host.interrupter.close()
            host.node.stop()
        # Scratch of killed runs and the archives; the nodes' own directories die with them.
        shutil.rmtree(root, ignore_errors=True)


def run_step(host: Host, declared, step: str, phase: str, client_key, *, kill_at: int = 0, when: str = "before") -> Run:
    inputs = node_steps(declared, SCRIPTS_OF)[step].inputs
    return host.interrupter.run(inputs[phase], client_key, kill_at=kill_at, when=when, stdin=inputs.get("stdin") or "")


def restarted(host: Host) -> bool:
    return any(re.search(r"\brestart\b", line) for line in host.node.restart_log())


def reference(host: Host, scenario: Scenario, declared, client_key) -> Reference:
    """The scenario's starting state, and what one uninterrupted run makes of it.

    The hosts are alike (only their names and addresses differ, and no file holds either but
    the scripts directory's ``id``, which only the provider's delete reads), so the archive of
    the starting state made on one host starts the scenario's cases on all of them.
    """
    node = host.node
    restore_state(node, host.work / "pristine.tar")
    if scenario.registries is None:
        node.remove("/etc/rancher")
    # Delete, and the installer: a fully applied node. The restart applies what the k3s step wrote.
    applied_first = STEP_ORDER if scenario.phase == "delete" or scenario.step == INSTALLER \
        else ("k3s",) if scenario.step == "restart" else ()
    for step in applied_first:
        run = run_step(host, declared, step, "create", client_key)
        assert run.exit_status == 0 and not run.killed, (step, run.stderr)
    installer = prepare_installer(host, scenario, declared, client_key) if scenario.step == INSTALLER else None
    base = host.work / f"{scenario.id}.tar"
    save_state(node, base)
    before = read_state(node)
    node.clear_restart_log()
    if installer is None:
        clean = run_step(host, declared, scenario.step, scenario.phase, client_key)
    else:
        clean = run_installer(host, installer, client_key)
    assert clean.exit_status == 0 and not clean.killed, clean.stderr
    ref = Reference(base, before, read_state(node), clean, restarted(host), installer)
    if installer is not None:
        assert read_node(host, installer) == {}, "an uninterrupted install leaves the node in sync"
    return ref


# ----------------------------------------------------------------------------- the installer


def prepare_installer(host: Host, scenario: Scenario, declared, client_key) -> Installer:
    """Puts the node's scripts directory where the scenario starts (gone, or an older version),
    refreshes as ``pulumi up`` does first, and captures the session the provider's update opens."""
    resource = scripts_resource(declared, SCRIPTS_OF)
    news = on_host(provider_props(resource, client_key), host)
    directory = NodePlan.from_props(news["plan"]).scripts_dir
    resource_id = host.node.engine_state[directory][0]
    if scenario.phase == "install":
        host.node.remove(directory)
        present = news
    else:
        present = {**news, "plan": older_plan(news["plan"])}
        assert outputs_of(present, {})["digests"] != outputs_of(news, {})["digests"]
        install_scripts(present, resource_id)  # the provider's own writer
    refreshed = outs(NodeScriptsProvider().read(resource_id, {**outputs_of(present, {}), "connection": news["connection"]}))
    if scenario.phase == "install":
        assert SCRIPTS in refreshed["observed"], refreshed["observed"]
    else:
        assert refreshed["observed"] == {}, refreshed["observed"]
    line, stdin = provider_session(news, resource_id)
    assert stdin == installer_script(NodePlan.from_props(news["plan"]), resource_id), "the declared plan's installer"
    return Installer(resource_id, news, refreshed, line, stdin)


def older_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The declared plan as an earlier configuration had it (migrated from the guide, a longer
    k3s restart timeout): other install and remove scripts, the same probes."""
    old = NodePlan.from_props(plan)
    return {**plan, "migrate_from_guide": not old.migrate_from_guide,
            "restart_timeout_seconds": old.restart_timeout_seconds + 60}


def on_host(props: dict[str, Any], host: Host) -> dict[str, Any]:
    """The provider's inputs with the connection pointed at this test host (they are alike)."""
    return {**props, "connection": {**props["connection"], "host": host.node.ip}}


def provider_session(props: dict[str, Any], resource_id: str) -> tuple[str, str]:
    """The command line and stdin of the one session the provider's install opens: captured from
    the provider itself, not retyped (no other thread uses the provider while this runs)."""
    sessions = []

    def capture(connection, command, stdin):
        sessions.append((command, stdin))
        return 0, b"", b""

    with mock.patch.object(ssh, "ssh_exec", capture):
        install_scripts(props, resource_id)
    assert len(sessions) == 1, sessions
    return sessions[0]


def run_installer(host: Host, installer: Installer, client_key, *, kill_at: int = 0, when: str = "before") -> Run:
    return host.interrupter.run(installer.line, client_key, kill_at=kill_at, when=when, stdin=installer.stdin)


def install_again(host: Host, installer: Installer) -> Run:
    """The next ``pulumi up``'s update of the resource (its state as before the interrupted one)."""
    news = on_host(installer.news, host)
    try:
        NodeScriptsProvider().update(installer.resource_id, {**installer.state, "connection": news["connection"]}, news)
    except ProbeError as error:
        return Run(False, 1, "", str(error), [])
    return Run(False, 0, "", "", [])


def read_node(host: Host, installer: Installer) -> dict[str, str]:
    """What the provider's reader finds off on the node, by step (``scripts``: the directory)."""
    news = on_host(installer.news, host)
    return outs(NodeScriptsProvider().read(installer.resource_id, {**outputs_of(news, {}), "connection": news["connection"]})
                )["observed"]


# ----------------------------------------------------------------------------- one case


@dataclass
class Case:
    k: int
    when: str
    call: str = ""
    killed: bool = False
    torn: list[str] = field(default_factory=list)  # files neither old nor new right after the kill
    loose: list[str] = field(default_factory=list)  # new content under a looser mode than the clean run gives
    diverged: list[str] = field(default_factory=list)  # differences from the clean result after the re-run

    @property
    def point(self) -> str:
        return f"killed {self.when} call {self.k} [{self.call}]"


def check_torn(case: Case, ref: Reference, now: State) -> None:
    old, new, seen = ref.before.managed(), ref.after.managed(), now.managed()
    for path in sorted(set(old) | set(new) | set(seen)):
        if path in IN_PLACE and old.get(path) is not None and seen.get(path) != new.get(path) \
                and hashlib.sha256(old[path]).hexdigest() in now.etc.values():
            # Rewritten in place (a bind mount cannot be renamed over), so it can be torn for a
            # moment; a complete copy of the old content beside it makes it entirely old again
            # before anything of ours reads it (the re-run below proves that it does).
            continue
        if seen.get(path) not in (old.get(path), new.get(path)):
            case.torn.append(f"{path}: {show(seen.get(path))} is neither old {show(old.get(path))} "
                             f"nor new {show(new.get(path))}")
        elif path in seen and seen[path] == new.get(path) and seen[path] != old.get(path):
            extra = int(now.modes[path], 8) & ~int(ref.after.modes[path], 8)
            if extra:
                case.loose.append(f"{path}: new content with mode {now.modes[path]}, "
                                  f"an uninterrupted run leaves {ref.after.modes[path]}")


def check_converged(case: Case, scenario: Scenario, ref: Reference, now: State, rerun: Run, interrupted_restart: bool,
                    rerun_restart: bool) -> None:
    if rerun.exit_status != 0:
        case.diverged.append(f"the re-run failed ({rerun.exit_status}): {rerun.stderr.strip()}")
    for path in sorted(set(ref.after.files) | set(now.files)):
        if now.files.get(path) != ref.after.files.get(path):
            case.diverged.append(f"{path}: {show(now.files.get(path))}, an uninterrupted run leaves "
                                 f"{show(ref.after.files.get(path))}")
        elif path in ref.after.modes and now.modes.get(path) != ref.after.modes[path]:
            case.diverged.append(f"{path}: mode {now.modes.get(path)}, an uninterrupted run leaves {ref.after.modes[path]}")
    if sorted(now.etc) != sorted(ref.after.etc):
        case.diverged.append(f"files left beside /etc/hosts: {sorted(set(now.etc) ^ set(ref.after.etc))}")
    if ref.restarted and not interrupted_restart and not rerun_restart:
        case.diverged.append("k3s was never restarted after registries.yaml changed")
    hosts = now.files.get("/etc/hosts", b"")
    for line in RICH_HOSTS.split(b"\n"):
        if line not in hosts.split(b"\n"):
            case.diverged.append(f"/etc/hosts lost the foreign line {line!r}")
    if scenario.registries is not None:
        registries = now.files.get(REGISTRIES) or b""
        if scenario.step == "k3s" and scenario.phase == "delete":
            if registries != scenario.registries:
                case.diverged.append(f"registries.yaml is not its original bytes again: {show(registries)}")
        elif b"https://mirror.cube.test:5000" not in registries:
            case.diverged.append("registries.yaml lost the docker.io mirror")


def run_case(host: Host, scenario: Scenario, ref: Reference, k: int, when: str, declared, client_key) -> Case:
    node = host.node
    restore_state(node, ref.base)
    node.clear_restart_log()
    case = Case(k, when)
    installer = ref.installer
    if installer is None:
        run = run_step(host, declared, scenario.step, scenario.phase, client_key, kill_at=k, when=when)
    else:
        run = run_installer(host, installer, client_key, kill_at=k, when=when)
    case.killed, case.call = run.killed, run.describe(k)
    if not run.killed:
        return case
    interrupted = read_state(node)
    check_torn(case, ref, interrupted)
    interrupted_restart = restarted(host)
    # A kill after call k and one before call k+1 mostly leave the same node: re-run that once
    # (a case that finds the same node being re-run elsewhere waits for that verdict).
    key = (scenario.id, fingerprint(interrupted), interrupted_restart)
    with _RERUN_LOCK:
        verdict = _RERUNS.get(key)
        mine = verdict is None
        if verdict is None:
            verdict = _RERUNS[key] = Verdict()
    if not mine:
        assert verdict.done.wait(600) and verdict.diverged is not None, "the re-run of the same node failed"
        case.diverged = list(verdict.diverged)
        return case
    try:
        node.clear_restart_log()
        if installer is None:
            rerun = run_step(host, declared, scenario.step, scenario.phase, client_key)
        else:
            rerun = install_again(host, installer)
        now = read_state(node)
        check_converged(case, scenario, ref, now, rerun, interrupted_restart, restarted(host))
        if installer is not None and rerun.exit_status == 0:
            observed = read_node_once(host, installer, scenario, now)
            if observed:
                case.diverged.append(f"after the next install the provider's reader finds the node off: {observed}")
        verdict.diverged = list(case.diverged)
    finally:
        verdict.done.set()
    return case


@dataclass
class Verdict:
    """What the re-run of one interrupted node found (None until it is known, or if it raised)."""

    done: threading.Event = field(default_factory=threading.Event)
    diverged: list[str] | None = None


_RERUNS: dict[tuple, Verdict] = {}
_RERUN_LOCK = threading.Lock()
_READS: dict[tuple, dict[str, str]] = {}


def read_node_once(host: Host, installer: Installer, scenario: Scenario, now: State) -> dict[str, str]:
    """The provider's reader, asked once per node state the next installs leave: its verdict
    depends only on the files it reads, which all lie in ``now`` (the managed paths, /etc)."""
    key = (scenario.id, fingerprint(now))
    with _RERUN_LOCK:
        known = _READS.get(key)
    if known is None:
        known = read_node(host, installer)
        with _RERUN_LOCK:
            _READS[key] = known
    return known


def fingerprint(state: State) -> tuple:
    """The node's files, with the random part of temporary names left out."""
    def name(path: str) -> str:
        return re.sub(r"(\.k3s-registry\.)[^/]*$", r"\1*", path)

    files = tuple(sorted((name(p), v) for p, v in state.files.items()))
    modes = tuple(sorted((name(p), m) for p, m in state.modes.items()))
    return files, modes, tuple(sorted((name(p), h) for p, h in state.etc.items()))


# ----------------------------------------------------------------------------- sweeps

_SWEEPS: dict[str, tuple[Reference, list[Case]]] = {}
_SWEEP_LOCK = threading.Lock()


def sweep(scenario: Scenario, hosts: list[Host], declared, client_key) -> tuple[Reference, list[Case]]:
    """Every case of a scenario: killed before and after each of its calls, spread over the hosts."""
    with _SWEEP_LOCK:
        if scenario.id in _SWEEPS:
            return _SWEEPS[scenario.id]
        free: queue.Queue[Host] = queue.Queue()
        for host in hosts:
            free.put(host)
        ref = reference(hosts[0], scenario, declared, client_key)
        calls = len(ref.clean.calls)

        def one(point):
            host = free.get()
            try:
                k, when = point
                return run_case(host, scenario, ref, k, when, declared, client_key)
            finally:
                free.put(host)

        # Every "before" point first: killed after call k, a run mostly leaves the node as killed
        # before call k+1 did, and that node's re-run is known by then (not run twice at once).
        points = [(k, when) for when in ("before", "after") for k in range(1, calls + 1)]
        with ThreadPoolExecutor(len(hosts)) as pool:
            cases = sorted(pool.map(one, points), key=lambda case: (case.k, case.when == "after"))
        _SWEEPS[scenario.id] = (ref, cases)
        return ref, cases


def report(cases: list[Case], attribute: str) -> str:
    bad = [c for c in cases if getattr(c, attribute)]
    return "\n".join(f"{c.point}:\n    " + "\n    ".join(getattr(c, attribute)) for c in bad)


@pytest.fixture(scope="module")
def swept(hosts, declared, client_key):
    return lambda scenario: sweep(scenario, hosts, declared, client_key)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_interruption_point_is_reached(swept, declared, scenario):
    """Not vacuous: every call of an uninterrupted run is a point where the run really died,
    and the run has calls of its own beside the ``run`` helper's reads of the scripts."""
    ref, cases = swept(scenario)
    own = ref.clean.calls
    if scenario.step != INSTALLER:
        directory = declared_plan(declared, SCRIPTS_OF).scripts_dir
        checks = [c for c in own if re.match(rf"\d+ cat {re.escape(directory)}/", c)]
        # A create checks the digest of the runner and of each of the step's scripts (cut there too);
        # a delete runs whatever the scripts directory holds.
        expected = 1 + len(ACTIONS[scenario.step]) if scenario.phase == "create" else 0
        assert len(checks) == expected and own[:expected] == checks, own
        own = own[expected:]
    assert len(own) >= 3, own
    assert any(re.match(r"\d+ (mv|cat|rm|cp|python3|update-ca-certificates) ", c) for c in own), own
    not_killed = [c.point for c in cases if not c.killed]
    assert not not_killed, f"runs that were not cut where asked: {not_killed}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_a_killed_step_leaves_each_file_entirely_old_or_entirely_new(swept, scenario):
    _, cases = swept(scenario)
    torn = report(cases, "torn")
    assert not torn, f"{scenario.id}: files torn by an interruption:\n{torn}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_a_killed_step_never_leaves_new_content_under_a_looser_mode(swept, scenario):
    """registries.yaml can hold the registry's password: it must never be readable by others."""
    _, cases = swept(scenario)
    loose = report(cases, "loose")
    assert not loose, f"{scenario.id}: new content readable by more users than intended:\n{loose}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_rerunning_a_killed_step_converges_and_loses_nothing(swept, scenario):
    _, cases = swept(scenario)
    diverged = report(cases, "diverged")
    assert not diverged, f"{scenario.id}: a re-run after an interruption did not converge:\n{diverged}"


STEP_PATHS = {"trust": ("/usr/local/share/ca-certificates",), "hosts": ("/etc/hosts",),
              "k3s": ("/etc/rancher", "/var/lib/k3s-registry")}
# The restart's delete gives registries.yaml back and leaves the rest to the k3s step's delete.
UNDONE_BY_ITS_OWN_DELETE = [
    (c, d) for c, d in zip(STEP_SCENARIOS[0::2], STEP_SCENARIOS[1::2], strict=True) if c.step in STEP_PATHS
]


@pytest.mark.parametrize("create,delete", UNDONE_BY_ITS_OWN_DELETE, ids=lambda s: s.id)
def test_an_uninterrupted_delete_gives_back_the_starting_bytes(swept, create, delete):
    """The "new" side of every delete case is the node as it was before the program touched it."""
    created, _ = swept(create)
    deleted, _ = swept(delete)

    def of_step(state):
        """The step's own files: every step records its owner under /var/lib/k3s-registry."""
        other_owners = {f"{INSTANCE}-{step}.owner" for step in STEP_ORDER if step != delete.step}
        return {p: v for p, v in state.managed().items()
                if p.startswith(STEP_PATHS[delete.step]) and p.rsplit("/", 1)[-1] not in other_owners}

    assert of_step(deleted.after) == of_step(created.before)


# ----------------------------------------------------------------------------- the detector itself


def test_the_sweep_detects_an_in_place_write_that_a_kill_can_tear(hosts, client_key):
    """A deliberately non-atomic writer (truncate, then copy) is caught: the checks have teeth."""
    host = hosts[0]
    node = host.node
    restore_state(node, host.work / "pristine.tar")
    script = ('set -eu\nprintf "%s\\n" "mirrors: {}" > /etc/rancher/k3s/.k3s-registry.new\n'
              'cat /etc/rancher/k3s/.k3s-registry.new > /etc/rancher/k3s/registries.yaml\n'
              'rm -f /etc/rancher/k3s/.k3s-registry.new\n')
    command = f"sh -c {shlex.quote(script)}"
    before = read_state(node)
    clean = host.interrupter.run(command, client_key)
    after = read_state(node)
    ref = Reference(host.work / "pristine.tar", before, after, clean, False)
    torn = []
    for k in range(1, len(clean.calls) + 1):
        for when in ("before", "after"):
            restore_state(node, ref.base)
            case = Case(k, when)
            run = host.interrupter.run(command, client_key, kill_at=k, when=when)
            assert run.killed, (k, when, run.calls)
            case.call = run.describe(k)
            check_torn(case, ref, read_state(node))
            torn += [case.point] if case.torn else []
    restore_state(node, host.work / "pristine.tar")
    assert torn == ["killed before call 1 [1 cat /etc/rancher/k3s/.k3s-registry.new]"], torn
