"""A node step killed at any point leaves every file it writes entirely old or entirely new.

For each step (trust, hosts, k3s) and each phase (create, and delete after a full apply), the
step's command -- exactly the text the program declared, run over real SSH on a real test
host -- is killed (SIGKILL to the whole session) at its k-th external command, BEFORE the
command runs and AFTER it finished, for every k until a run completes (see interrupt.py).
Right after each kill, every file the step manages must be byte-identical to how it was
before the run or to how an uninterrupted run leaves it; then the step is run again, without
interruption, and the node must end exactly where an uninterrupted run leaves it (every byte,
every mode, no debris, k3s restarted after the last change of registries.yaml), with all the
foreign content of /etc/hosts and registries.yaml still there.

The nodes start with rich content: an /etc/hosts of several lines without a final newline
(bind-mounted, as in containers and LXC, so it is rewritten in place), and a registries.yaml
with a comment and a docker.io mirror (or, in the "bare" cases, none at all).

Speed: the cases run in parallel on a few test hosts that are reset between cases from a tar
archive. ``update-ca-certificates`` is replaced, inside the wrapper that counts and cuts it,
by a stand-in that rebuilds the bundle from the machine's bundle plus the local anchors (the
real one takes seconds; what it writes is not a file of the scripts), and Java's keystore
hook is removed from the test hosts (test_nodes_real.py covers both for real).
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

import pytest

from harness import evaluate
from interrupt import Interrupter, Run, restore_state, save_state
from nodebed import node_steps
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


SCENARIOS = [
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


@dataclass
class Reference:
    base: Path  # archive of the state every case of the scenario starts from
    before: State
    after: State  # after one uninterrupted run
    clean: Run
    restarted: bool


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
        "nodes": [{"name": f"int{i}", "host": ip, "role": "server", "user": "root"} for i, ip in enumerate(NODE_IPS)],
    })


@pytest.fixture(scope="module")
def hosts(client_key):
    root = Path(tempfile.mkdtemp(prefix="k3s-registry-interruptions-", dir="/tmp"))
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
            base_bundle.write_bytes(node.read_file(BUNDLE))
            interrupter = Interrupter(node, work / "interrupt",
                                      {"update-ca-certificates": stand_in_update_ca_certificates(base_bundle)})
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
                except Exception:  # noqa: BLE001 stop the others, then fail
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

    The hosts are alike (only their names differ, and no file holds a name), so the archive
    of the starting state made on one host starts the scenario's cases on all of them.
    """
    node = host.node
    restore_state(node, host.work / "pristine.tar")
    if scenario.registries is None:
        node.remove("/etc/rancher")
    # Delete: a fully applied node. The restart applies what the k3s step wrote.
    applied_first = STEP_ORDER if scenario.phase == "delete" else ("k3s",) if scenario.step == "restart" else ()
    for step in applied_first:
        run = run_step(host, declared, step, "create", client_key)
        assert run.exit_status == 0 and not run.killed, (step, run.stderr)
    base = host.work / f"{scenario.id}.tar"
    save_state(node, base)
    before = read_state(node)
    node.clear_restart_log()
    clean = run_step(host, declared, scenario.step, scenario.phase, client_key)
    assert clean.exit_status == 0 and not clean.killed, clean.stderr
    return Reference(base, before, read_state(node), clean, restarted(host))


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
    run = run_step(host, declared, scenario.step, scenario.phase, client_key, kill_at=k, when=when)
    case.killed, case.call = run.killed, run.describe(k)
    if not run.killed:
        return case
    interrupted = read_state(node)
    check_torn(case, ref, interrupted)
    interrupted_restart = restarted(host)
    # A kill after call k and one before call k+1 mostly leave the same node: re-run that once.
    key = (scenario.id, fingerprint(interrupted), interrupted_restart)
    with _RERUN_LOCK:
        known = _RERUNS.get(key)
    if known is not None:
        case.diverged = list(known)
        return case
    node.clear_restart_log()
    rerun = run_step(host, declared, scenario.step, scenario.phase, client_key)
    check_converged(case, scenario, ref, read_state(node), rerun, interrupted_restart, restarted(host))
    with _RERUN_LOCK:
        _RERUNS[key] = list(case.diverged)
    return case


_RERUNS: dict[tuple, list[str]] = {}
_RERUN_LOCK = threading.Lock()


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
                return run_case(host, scenario, ref, *point, declared, client_key)
            finally:
                free.put(host)

        points = [(k, when) for k in range(1, calls + 1) for when in ("before", "after")]
        with ThreadPoolExecutor(len(hosts)) as pool:
            cases = list(pool.map(one, points))
        _SWEEPS[scenario.id] = (ref, cases)
        return ref, cases


def report(cases: list[Case], attribute: str) -> str:
    bad = [c for c in cases if getattr(c, attribute)]
    return "\n".join(f"{c.point}:\n    " + "\n    ".join(getattr(c, attribute)) for c in bad)


@pytest.fixture(scope="module")
def swept(hosts, declared, client_key):
    return lambda scenario: sweep(scenario, hosts, declared, client_key)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_interruption_point_is_reached(swept, scenario):
    """Not vacuous: every call of an uninterrupted run is a point where the run really died."""
    ref, cases = swept(scenario)
    assert len(ref.clean.calls) >= 3, ref.clean.calls
    assert any(re.match(r"\d+ (mv|cat|rm|cp|python3|update-ca-certificates) ", c) for c in ref.clean.calls)
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
UNDONE_BY_ITS_OWN_DELETE = [(c, d) for c, d in zip(SCENARIOS[0::2], SCENARIOS[1::2]) if c.step in STEP_PATHS]


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
