"""./scripts/bench: the program against the manual guide's ansible steps, on the test bed.

Measures, side by side in one run (median of 5 repetitions, 1 with --quick):
- first up, no-change up (refresh + nothing to do) and a registry-IP change on 3 real test
  hosts (tests/nodebed.py), run by the real `pulumi` with the providers scripts/toolchain built
  (tests/pulumi_real.py), against the guide's ansible ad-hoc commands (ansible-core from PyPI in
  bench/.venv-ansible) on the same hosts;
- SSH connections per node (sshd's own log: "Accepted" lines) and SSH sessions per node;
- program evaluation time and peak memory at 3, 30, 100, 300 nodes (a fresh process each);
- state bytes per node and a model of what a file backend writes for a first up of 100 nodes.

It is a measurement: it exits 0 when targets are missed, non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]

ANSIBLE_VENV = ROOT / "bench" / ".venv-ansible"
HOSTNAME = "registry.bench.test"
REGISTRY_IP = "127.0.0.150"  # only written into /etc/hosts; nothing connects to it
CHANGED_IP = "127.0.0.149"
API_IP = "127.0.0.148"  # the test bed's kube-apiserver, which the kubernetes provider asks for discovery
CANDIDATES = [f"127.0.0.{i}" for i in range(151, 160)]
ROLES = {"control01": "server", "cube01": "agent", "cube02": "agent"}
HOSTS = b"127.0.0.1\tlocalhost\n"
SNAPSHOT_PATHS = ("/etc/hosts", "/etc/rancher", "/usr/local/share/ca-certificates", "/var/lib/k3s-registry")
EVAL_SIZES_FULL = (3, 30, 100, 300)
EVAL_SIZES_QUICK = (3, 30, 100)


# ----------------------------------------------------------------------------- configs

def stack(nodes: dict[str, tuple[str, str]], ip: str = REGISTRY_IP) -> dict:
    entries = [{"name": name, "host": host, "role": role} for name, (host, role) in nodes.items()]
    return {"hostname": HOSTNAME, "loadBalancerIp": ip, "nodes": entries, "k3sRestartTimeout": "30"}


def synthetic_stack(count: int) -> dict:
    """``count`` nodes on loopback addresses that nothing connects to (the evaluation runs under mocks)."""
    nodes = {f"node{i:03d}": (f"127.1.{i // 250}.{i % 250 + 1}", "server" if i < 3 else "agent") for i in range(count)}
    return stack(nodes)


# ----------------------------------------------------------------------------- evaluation (child process)

def resource_bytes(r) -> tuple[int, int]:
    """(inputs + outputs as JSON, checkpoint overhead: URN, type, parent and dependency URNs)."""
    data = len(json.dumps(r.inputs)) + len(json.dumps(r.outputs))
    overhead = len(r.urn) + len(r.type) + len(r.parent or "") + sum(len(d) for d in r.dependencies)
    return data, overhead


def eval_one(count: int) -> dict:
    """Runs in its own process: wall time and peak RSS of one evaluation, and the state model."""
    from harness import evaluate

    config = synthetic_stack(count)
    # The mocks play pulumi-tls too and make real RSA-4096 keys: seconds of the provider's work,
    # not the program's. One small evaluation first makes them (kept, like a provider's state),
    # so the clock measures the program and the SDK alone.
    evaluate(synthetic_stack(1))
    started = time.perf_counter()
    evaluation = evaluate(config)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    names = [f"node{i:03d}" for i in range(count)]
    first = names[0]
    mine = [r for r in evaluation.resources if r.name == f"nodes-{first}" or r.name.startswith(f"nodes-{first}-")]
    node_data = sum(resource_bytes(r)[0] for r in mine)
    node_overhead = sum(resource_bytes(r)[1] for r in mine)
    biggest = sorted(((resource_bytes(r)[0], r.name) for r in mine), reverse=True)[:3]
    # A file backend rewrites the whole checkpoint after every step (model: one write per step,
    # at its end, in the order the program registered the resources).
    running = written = 0
    for r in evaluation.resources:
        data, overhead = resource_bytes(r)
        running += data + overhead
        written += running
    return {
        "nodes": count, "seconds": seconds, "peak_rss_kb": peak_kb, "resources": len(evaluation.resources),
        "node_resources": len(mine), "node_state_bytes": node_data, "node_overhead_bytes": node_overhead,
        "biggest": biggest, "checkpoint_final_bytes": running, "checkpoint_written_bytes": written,
    }


def measure_evaluations(sizes, runs: int) -> dict[int, dict]:
    """Each size ``runs`` times, each in a fresh process: median time, highest peak RSS."""
    results = {}
    for count in sizes:
        samples = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-m", "bench.run", "--eval-one", str(count)], cwd=ROOT,
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"evaluation of {count} nodes failed:\n{out.stderr[-3000:]}")
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
        result = dict(samples[-1])
        result["seconds"] = statistics.median(s["seconds"] for s in samples)
        result["peak_rss_kb"] = max(s["peak_rss_kb"] for s in samples)
        results[count] = result
        log(f"evaluated {count} nodes: {result['seconds']:.2f} s, {result['peak_rss_kb'] / 1024:.0f} MiB "
            "(runs: " + ", ".join(f"{s['seconds']:.2f}" for s in samples) + " s)")
    return results


# ----------------------------------------------------------------------------- SSH accounting

class SshdLog:
    """Counts sshd's "Accepted" lines (one per authenticated connection) per node since a mark."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.marks = {}

    def mark(self) -> None:
        self.marks = {name: len(node.log()) for name, node in self.nodes.items()}

    def accepted(self) -> dict[str, int]:
        return {name: node.log()[self.marks.get(name, 0):].count("Accepted ") for name, node in self.nodes.items()}


def per_node(counts: dict[str, int]) -> float:
    return sum(counts.values()) / len(counts)


# ----------------------------------------------------------------------------- program side

def program_rounds(nodes, client_key, reps: int, work: Path) -> list[dict]:
    """The real `pulumi` (scripts/toolchain) on a new stack each repetition: first up, no-change up
    (refresh + nothing to do), registry-IP change, destroy. The kubernetes provider renders the
    cluster's objects to a folder, against the test bed's API server (tests/pulumi_real.py)."""
    from pulumi_real import RealStack, toolchain_dir
    from testbed.apiserver import start_apiserver

    sshd = SshdLog(nodes)
    clean = {name: snapshot(node) for name, node in nodes.items()}
    api = start_apiserver(toolchain_dir(), work / "kube-api", API_IP)
    rounds = []
    try:
        for rep in range(reps):
            root = work / f"stack-{rep}"
            real = RealStack(root, "bench", kubeconfig=api.kubeconfig_path, render_dir=root / "rendered")
            for key, value in stack({name: (node.ip, ROLES[name]) for name, node in nodes.items()}).items():
                real.config_set(key, int(value) if key == "k3sRestartTimeout" else value)
            real.config_set("sshPrivateKey", client_key.private_key_text, secret=True)
            # The guide's ansible steps put the CA into each node's trust store: the same work.
            real.config_set("osTrustStore", True)
            row: dict[str, Any] = {}

            def timed(*args: str, real: RealStack = real) -> tuple[float, float]:
                sshd.mark()
                started = time.perf_counter()
                real.up(*args).check()
                return time.perf_counter() - started, per_node(sshd.accepted())

            row["first"] = timed()
            row["nochange"] = timed("--expect-no-changes")
            sshd.mark()
            real.refresh("--expect-no-changes").check()
            row["refresh_sessions"] = per_node(sshd.accepted())
            real.config_set("loadBalancerIp", CHANGED_IP)
            row["ipchange"] = timed()
            real.destroy().check()
            for name, node in nodes.items():
                if snapshot(node) != clean[name]:
                    raise RuntimeError(f"destroy did not give {name} back as it was (repetition {rep + 1})")
            rounds.append(row)
            log(f"program repetition {rep + 1}: "
                + ", ".join(f"{k} {v[0]:.2f} s" for k, v in row.items() if isinstance(v, tuple)))
    finally:
        api.stop()
    return rounds


def trust_floor(nodes, reps: int) -> list[float]:
    """What adding one certificate with the OS tool costs on the 3 hosts at once (``update-ca-certificates``,
    as the program's trust step and the guide's ansible step both run it): a floor for any first up."""
    from testbed.certs import self_signed_cert

    clean = {name: snapshot(node) for name, node in nodes.items()}
    floor_cert = "/usr/local/share/ca-certificates/k3s-registry-bench-floor.crt"
    seconds = []
    for rep in range(reps):
        for node in nodes.values():
            node.write_file(floor_cert, self_signed_cert(f"floor{rep}.bench.test").cert_pem)
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            started = time.perf_counter()
            results = list(pool.map(lambda node: node.run_local(["update-ca-certificates"]), nodes.values()))
            seconds.append(time.perf_counter() - started)
        if any(result.returncode != 0 for result in results):
            raise RuntimeError(f"update-ca-certificates failed: {[r.stderr.decode()[-500:] for r in results]}")
        for name, node in nodes.items():
            reset(node, clean[name], [floor_cert], "the trust store floor")
    log("update-ca-certificates, one certificate added on 3 hosts at once: "
        + ", ".join(f"{s:.2f}" for s in seconds) + " s")
    return seconds


def snapshot(node) -> dict[str, bytes]:
    return {p: v for p, v in node.snapshot(SNAPSHOT_PATHS).items() if not p.startswith("/etc/ssl")}


# ----------------------------------------------------------------------------- ansible side

def ensure_ansible() -> Path:
    ansible = ANSIBLE_VENV / "bin" / "ansible"
    if not ansible.exists():
        log(f"installing ansible-core into {ANSIBLE_VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "--quiet", "ansible-core"], check=True)
    return ansible


def guide_commands(files: Path) -> list[list[str]]:
    """The guide's node commands, in its order, plus the k3s restart it forgot.

    One deviation: the test hosts' /etc/hosts is a bind mount (as in containers and LXC), where
    the guide's copy fails (rename: device or resource busy); ansible's own remedy for that,
    ``unsafe_writes=yes``, lets it write the file in place.
    """
    return [
        ["cube", "-b", "-m", "copy", "-a", f"src={files}/registry.crt dest=/usr/local/share/ca-certificates/registry.crt"],
        ["cube", "-b", "-m", "copy", "-a", f"src={files}/registry.key dest=/usr/local/share/ca-certificates/registry.key"],
        ["all", "-b", "-m", "shell", "-a", "update-ca-certificates"],
        ["cube", "-b", "-m", "copy", "-a", f"src={files}/hosts dest=/etc/hosts unsafe_writes=yes"],
        ["cube", "-b", "-m", "file", "-a", "path=/etc/rancher/k3s state=directory"],
        ["cube", "-b", "-m", "copy", "-a", f"src={files}/registries.yaml dest=/etc/rancher/k3s/registries.yaml"],
        ["cube", "-b", "-m", "shell", "-a", "systemctl restart {{ k3s_unit }}"],
    ]


def guide_files(files: Path, ip: str) -> None:
    """What the guide has on control01: the certificate and key, its /etc/hosts, registries.yaml."""
    files.mkdir(parents=True, exist_ok=True)
    if not (files / "registry.key").exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-sha256", "-days", "3650", "-nodes",
                        "-keyout", str(files / "registry.key"), "-out", str(files / "registry.crt"),
                        "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME},IP:{REGISTRY_IP}"],
                       check=True, capture_output=True)
    (files / "hosts").write_bytes(HOSTS + f"{ip} registry {HOSTNAME}\n".encode())
    (files / "registries.yaml").write_text(
        f'mirrors:\n  {HOSTNAME}:5000:\n    endpoint:\n      - "https://{HOSTNAME}:5000"\n'
        f'configs:\n  {HOSTNAME}:\n    tls:\n'
        '      ca_file: "/usr/local/share/ca-certificates/registry.crt"\n'
        '      key_file: "/usr/local/share/ca-certificates/registry.key"\n'
    )


def write_inventory(inventory: Path, nodes, client_key) -> None:
    lines = ["[cube]"]
    for name, node in nodes.items():
        unit = "k3s" if ROLES[name] == "server" else "k3s-agent"
        lines.append(f"{name} ansible_host={node.ip} k3s_unit={unit}")
    lines += ["", "[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={client_key.private_key_path}",
              "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
              "ansible_python_interpreter=/usr/bin/python3", ""]
    inventory.write_text("\n".join(lines))


def run_ansible(ansible: Path, inventory: Path, env: dict, commands, nodes) -> tuple[float, dict[str, int]]:
    """Runs the ad-hoc commands in sequence; wall time and SSH sessions per node (ssh invocations, -vvv)."""
    sessions = dict.fromkeys(nodes, 0)
    ips = {node.ip: name for name, node in nodes.items()}
    started = time.perf_counter()
    for argv in commands:
        out = subprocess.run([str(ansible), "-i", str(inventory), "-vvv", *argv], env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"ansible {' '.join(argv)} failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
        for ip in re.findall(r"^<(127\.[0-9.]+)> SSH: EXEC ", out.stdout, re.MULTILINE):
            sessions[ips[ip]] += 1
    return time.perf_counter() - started, sessions


def reset(node, clean: dict[str, bytes], paths, what: str) -> None:
    """Removes ``paths``, puts the starting /etc/hosts back, rebuilds the trust store from its
    files, and checks the node is byte for byte as it started."""
    for path in paths:
        node.remove(path)
    node.write_file("/etc/hosts", HOSTS)
    node.run_local(["update-ca-certificates", "--fresh"], check=True)
    if snapshot(node) != clean:
        raise RuntimeError(f"could not reset {node.name} after {what}")


def reset_after_guide(node, clean: dict[str, bytes]) -> None:
    reset(node, clean, ("/usr/local/share/ca-certificates/registry.crt", "/usr/local/share/ca-certificates/registry.key",
                        "/etc/rancher"), "the guide's run")


def ansible_rounds(nodes, client_key, reps: int, work: Path) -> list[dict]:
    ansible = ensure_ansible()
    files = work / "control01"
    inventory = work / "inventory.ini"
    write_inventory(inventory, nodes, client_key)
    sshd = SshdLog(nodes)
    clean = {name: snapshot(node) for name, node in nodes.items()}
    rounds = []
    for rep in range(reps):
        # A fresh ControlPath directory per repetition: ansible's ControlPersist (60 s) may reuse
        # connections within a repetition, as it would for someone running the guide, not across.
        env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / f"cp{rep}"),
               "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"), "ANSIBLE_HOME": str(work / "ansible-home")}
        guide_files(files, REGISTRY_IP)
        commands = guide_commands(files)
        row = {}
        for key in ("first", "rerun"):
            sshd.mark()
            seconds, sessions = run_ansible(ansible, inventory, env, commands, nodes)
            row[key] = (seconds, per_node(sshd.accepted()), per_node(sessions))
        guide_files(files, CHANGED_IP)  # the guide's way: edit control01's /etc/hosts, copy it out
        sshd.mark()
        seconds, sessions = run_ansible(ansible, inventory, env, [commands[3]], nodes)
        row["ipchange"] = (seconds, per_node(sshd.accepted()), per_node(sessions))
        for name, node in nodes.items():
            reset_after_guide(node, clean[name])
        rounds.append(row)
        log(f"ansible repetition {rep + 1}: " + ", ".join(f"{k} {v[0]:.2f} s" for k, v in row.items()))
    return rounds


# ----------------------------------------------------------------------------- report

def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(rounds, key, index=0):
    return statistics.median(r[key][index] for r in rounds)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def report(prog, ans, evals, floor, quick: bool, reps: int) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def row(figure, measured, target="", met=None):
        rows.append((figure, measured, target, "" if met is None else ("yes" if met else "NO")))

    p_first, a_first = median(prog, "first"), median(ans, "first")
    p_none, a_none = median(prog, "nochange"), median(ans, "rerun")
    p_ip, a_ip = median(prog, "ipchange"), median(ans, "ipchange")
    r_first, r_none, r_ip = a_first / p_first, a_none / p_none, a_ip / p_ip
    row("first up: program (s)", f"{p_first:.2f}")
    row("first up: ansible, guide's commands (s)", f"{a_first:.2f}")
    row("first up: ansible / program", f"{r_first:.1f}x", ">= 5x", r_first >= 5)
    trust = statistics.median(floor)
    row("  floor: update-ca-certificates adding one certificate on the 3 hosts at once (s)", f"{trust:.2f}")
    row("  best ratio any first up can reach with that floor: ansible / floor", f"{a_first / trust:.1f}x")
    e3 = evals[3]["seconds"]
    row("first up incl. evaluation (3 nodes): ansible / program", f"{a_first / (p_first + e3):.1f}x")
    row("no-change up: program, refresh + nothing (s)", f"{p_none:.2f}")
    row("no-change re-run: ansible (s)", f"{a_none:.2f}")
    row("no-change: ansible / program", f"{r_none:.1f}x", ">= 40x", r_none >= 40)
    row("no-change incl. evaluation (3 nodes): ansible / program", f"{a_none / (p_none + e3):.1f}x")
    row("registry-IP change: program, refresh + update (s)", f"{p_ip:.2f}")
    row("registry-IP change: ansible, hosts copy only (s)", f"{a_ip:.2f}")
    row("registry-IP change: ansible / program", f"{r_ip:.1f}x")
    refresh = statistics.median(r["refresh_sessions"] for r in prog)
    row("SSH sessions/node per refresh: program", f"{refresh:.0f}", "1", refresh <= 1)
    for label, key, rs in (("first up", "first", prog), ("no-change up", "nochange", prog), ("IP change", "ipchange", prog)):
        row(f"SSH sessions/node, {label}: program (= connections)", f"{median(rs, key, 1):.0f}")
    for label, key in (("first run", "first"), ("re-run", "rerun"), ("IP change", "ipchange")):
        row(f"SSH sessions/node, {label}: ansible (connections)", f"{median(ans, key, 2):.0f} ({median(ans, key, 1):.0f})")
    sizes = sorted(evals)
    for n in sizes:
        row(f"evaluation {n} nodes: time (s) / peak RSS (MiB)",
            f"{evals[n]['seconds']:.2f} / {evals[n]['peak_rss_kb'] / 1024:.0f}",
            "< 6 s" if n == 300 else "", evals[n]["seconds"] < 6 if n == 300 else None)
    growth = evals[300]["seconds"] / evals[100]["seconds"] if 300 in evals else None
    if growth is not None:
        row("evaluation growth t(300)/t(100)", f"{growth:.2f}x", "<= 3.5x", growth <= 3.5)
    else:
        row("evaluation growth t(100)/t(30) (--quick: no 300)", f"{evals[100]['seconds'] / evals[30]['seconds']:.2f}x")
    per = evals[100]
    state = per["node_state_bytes"]
    row(f"state per node ({per['node_resources']} resources, inputs+outputs)", human_bytes(state), "<= 25 kB", state <= 25e3)
    row("  largest: " + ", ".join(f"{name.split('-', 2)[-1]} {human_bytes(b)}" for b, name in per["biggest"]), "")
    row("checkpoint after first up, 100 nodes (model)", human_bytes(per["checkpoint_final_bytes"]))
    written = per["checkpoint_written_bytes"]
    row("checkpoint bytes written, first up of 100 nodes (model)", human_bytes(written), "< 300 MB", written < 300e6)

    widths = [max(len(r[i]) for r in [*rows, ("figure", "measured", "target", "met?")]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format("figure", "measured", "target", "met?"))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r).rstrip())
    print()
    print(f"Median of {reps} repetition(s){' (--quick)' if quick else ''} on 3 test hosts (1 server, 2 agents);")
    print("evaluations: median of 1 (--quick) or 3 fresh processes each, after the mocks made the TLS keys.")
    print("Program times are the real `pulumi up` (CLI, language host, plugins, the program's evaluation, the")
    print("kubernetes objects rendered to files) over real SSH; 'incl. evaluation' adds the mocks' 3-node evaluation")
    print("time once more. Ansible: the guide's 7 ad-hoc commands in sequence (forks 5, ControlPersist on, -vvv to count ssh")
    print("invocations); its IP change is the hosts copy alone.")
    print("State: JSON of inputs+outputs per resource of one node (100-node evaluation), without the backend's")
    print("indentation or secret encryption. Checkpoint written = a model: the whole checkpoint (inputs, outputs,")
    print("URN, type, parent, dependencies) rewritten once after each resource step, in registration order;")
    print("the snapshot manager also persists when a step begins, so the real figure is likely higher.")
    eval_part = (f"eval 300 nodes {evals[300]['seconds']:.1f} s, growth {growth:.1f}x (target <=3.5x, <6 s)"
                 if growth is not None else f"eval 100 nodes {evals[100]['seconds']:.1f} s (--quick: no 300)")
    print(f"bench: first up {r_first:.1f}x faster than ansible (target 5x; update-ca-certificates alone allows "
          f"{a_first / trust:.1f}x here), no-change up {r_none:.1f}x (target 40x), "
          f"refresh {refresh:.0f} SSH sessions/node (target 1), state {human_bytes(state)}/node (target 25 kB), "
          f"checkpoint {human_bytes(written)}/100 nodes (target 300 MB), {eval_part}")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, evaluation up to 100 nodes")
    parser.add_argument("--eval-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval_one:
        print(json.dumps(eval_one(args.eval_one)))
        return 0
    if os.geteuid() != 0:
        log("needs root (the test hosts run in their own mount namespaces); run ./scripts/bench")
        return 2
    missing = [p for p in ("sshd", "ssh", "ssh-keygen", "unshare", "nsenter", "update-ca-certificates", "openssl")
               if not shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        log(f"missing programs {missing}: run ./scripts/test once, which installs them")
        return 2
    reps = 1 if args.quick else 5

    from nodebed import NodeSpec, free_addresses, running_nodes, units_for
    from testbed.sshexec import generate_client_key

    evals = measure_evaluations(EVAL_SIZES_QUICK if args.quick else EVAL_SIZES_FULL, 1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="k3s-registry-bench-"))
    try:
        client_key = generate_client_key(work / "client-key")
        ips = free_addresses(CANDIDATES, len(ROLES))
        specs = [NodeSpec(name, ip, HOSTS, units=units_for(ROLES[name])) for name, ip in zip(ROLES, ips, strict=True)]

        def workdir_for(name: str) -> Path:
            path = work / "nodes" / name
            path.mkdir(parents=True)
            return path

        with running_nodes(specs, client_key, workdir_for) as nodes:
            prog = program_rounds(nodes, client_key, reps, work)
            floor = trust_floor(nodes, reps)
            ans = ansible_rounds(nodes, client_key, reps, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(prog, ans, evals, floor, args.quick, reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
