"""What one node is given: its step scripts, shipped once, and the short command lines that run them.

Every step's scripts (components/node_scripts.py, components/drift_probes.py) are rendered
from a ``NodePlan`` and written to the node by its ``NodeScripts`` resource
(components/drift.py), in one SSH session, into a directory of their own::

    /var/lib/k3s-registry/scripts-<digest of instance and owner>/
        run                     checks a script against the digest it is called with, runs it
        trust/install.sh  trust/remove.sh  trust/probe.sh
        hosts/...  k3s/...  restart/install.sh  restart/remove.sh
        id                      which NodeScripts resource wrote the directory

The Commands then carry only ``sh <dir>/run <step> <action> <sha256>``: the state holds a
digest per script instead of the script, and a changed script still changes the command text,
so the engine re-runs exactly the steps whose scripts changed. A refresh reads every step in
one session (``reader_script``). The directory is per owner (see ``NodeTarget.owner``), so
a renamed node's old deletes run their own scripts, which leave what the new owner configured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from . import drift_probes, node_scripts
from .node_scripts import PREAMBLE, STATE_ROOT, NodeTarget, q, with_final_newline

STEPS = ("trust", "hosts", "k3s", "restart")
OBSERVED_STEPS = ("trust", "hosts", "k3s")
"""The steps a refresh observes (the restart leaves nothing to observe: it applies the k3s step)."""
SCRIPTS = "scripts"
"""The pseudo-step a refresh reports for the scripts directory itself."""
ACTIONS = {"trust": ("install", "remove", "probe"), "hosts": ("install", "remove", "probe"),
           "k3s": ("install", "remove", "probe"), "restart": ("install", "remove")}
RUNNER = "run"
SHORT_DIGEST = 16
"""Hex digits of a SHA-256 kept in the state and command lines: 64 bits tell versions apart (the
digests catch changed or stale scripts; whoever can write them is root on the node anyway)."""


@dataclass(frozen=True)
class NodePlan:
    """Everything a node's scripts are rendered from; no secret (credentials travel on stdin)."""

    node_name: str
    role: str
    instance_id: str
    owner: str
    certificate_pem: str
    hostname: str
    ip_address: str
    address: str
    caches: tuple[tuple[str, str], ...] = ()
    migrate_from_guide: bool = False
    restart_k3s: bool = True
    restart_timeout_seconds: int = node_scripts.DEFAULT_RESTART_TIMEOUT
    _rendered: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    """The rendered scripts, once asked for: its own per plan (not an init field, so a copy made
    with dataclasses.replace renders again)."""

    @property
    def target(self) -> NodeTarget:
        return NodeTarget(node_name=self.node_name, role=self.role, instance_id=self.instance_id, owner=self.owner)

    @property
    def scripts_dir(self) -> str:
        return scripts_dir(self.instance_id, self.owner)

    def to_props(self) -> dict[str, Any]:
        """The plan as the resource's input (JSON-like); settings at their default are left out,
        as every byte of it is kept in the state and rewritten with every checkpoint."""
        props: dict[str, Any] = {
            "node_name": self.node_name, "role": self.role, "instance_id": self.instance_id, "owner": self.owner,
            "certificate_pem": self.certificate_pem, "hostname": self.hostname, "ip_address": self.ip_address,
            "address": self.address,
        }
        if self.caches:
            props["caches"] = [list(cache) for cache in self.caches]
        if self.migrate_from_guide:
            props["migrate_from_guide"] = True
        if not self.restart_k3s:
            props["restart_k3s"] = False
        if self.restart_timeout_seconds != node_scripts.DEFAULT_RESTART_TIMEOUT:
            props["restart_timeout_seconds"] = self.restart_timeout_seconds
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, Any]) -> "NodePlan":
        """Back from the wire, where numbers are doubles and lists may be tuples."""
        return cls(
            node_name=str(props["node_name"]), role=str(props["role"]), instance_id=str(props["instance_id"]),
            owner=str(props["owner"]), certificate_pem=str(props["certificate_pem"]),
            hostname=str(props["hostname"]), ip_address=str(props["ip_address"]), address=str(props["address"]),
            caches=tuple((str(upstream), str(address)) for upstream, address in props.get("caches") or ()),
            migrate_from_guide=bool(props.get("migrate_from_guide")),
            restart_k3s=bool(props.get("restart_k3s", True)),
            restart_timeout_seconds=int(props.get("restart_timeout_seconds") or node_scripts.DEFAULT_RESTART_TIMEOUT),
        )

    def scripts(self) -> dict[str, str]:
        """Every script by ``<step>/<action>``, rendered once per plan."""
        if not self._rendered:
            self._rendered.update(render_scripts(self))
        return dict(self._rendered)

    def step_digests(self) -> dict[str, str]:
        """Per step: the digest of the runner and the step's scripts (ACTIONS order), as the node computes it."""
        scripts = self.scripts()
        runner = runner_script(self.scripts_dir)
        return {step: digest(runner + "".join(scripts[f"{step}/{action}"] for action in actions))
                for step, actions in ACTIONS.items()}


def scripts_dir(instance_id: str, owner: str) -> str:
    """Named after the owner (whose URN names the project and stack), so short: the state and every
    command line carry it; its ``id`` file and the scripts' own text say whose it is."""
    return f"{STATE_ROOT}/scripts-{hashlib.sha256(f'{instance_id} {owner}'.encode()).hexdigest()[:10]}"


def digest(text: str) -> str:
    """The first SHORT_DIGEST hex digits of the SHA-256: what the state and the command lines keep."""
    return hashlib.sha256(text.encode()).hexdigest()[:SHORT_DIGEST]


def render_scripts(plan: NodePlan) -> dict[str, str]:
    target = plan.target
    guide_hostname = plan.hostname if plan.migrate_from_guide else None
    restart = (plan.restart_k3s, plan.restart_timeout_seconds)
    pem = plan.certificate_pem
    scripts = {
        "trust/install": node_scripts.trust_install_script(target, pem, guide_hostname),
        "trust/remove": node_scripts.trust_remove_script(target),
        "trust/probe": drift_probes.trust_probe_script(target, pem),
        "hosts/install": node_scripts.hosts_install_script(target, plan.hostname, plan.ip_address,
                                                           plan.migrate_from_guide),
        "hosts/remove": node_scripts.hosts_remove_script(target),
        "hosts/probe": drift_probes.hosts_probe_script(target, plan.hostname, plan.ip_address),
        "k3s/install": node_scripts.registries_install_script(target, plan.address, pem, guide_hostname,
                                                              plan.caches),
        "k3s/remove": node_scripts.registries_remove_script(target, plan.address, *restart),
        "k3s/probe": drift_probes.registries_probe_script(target, plan.address, pem, plan.caches),
        "restart/install": node_scripts.restart_script(target, *restart),
        "restart/remove": node_scripts.restart_remove_script(target, plan.address, *restart),
    }
    # Exactly the bytes the installer writes (a here-document ends in one newline).
    return {name: text.rstrip("\n") + "\n" for name, text in scripts.items()}


# ----------------------------------------------------------------------------- on the node

def runner_script(directory: str) -> str:
    """``run STEP ACTION [DIGEST]``: runs the step's script, after checking the step's scripts are
    the version the Command expects (DIGEST: the step's entry in the resource's ``digests``).

    Deletes call it without a digest: they run whatever the latest update wrote for their owner
    (a remove reads what to undo from the node, not from its text). stdin passes through.
    """
    cases = "".join(f"  {step}) actions={q(' '.join(actions))} ;;\n" for step, actions in ACTIONS.items())
    return PREAMBLE + f"""\
dir={q(directory)}
case $1 in
{cases}  *) echo "k3s-registry: no step $1" >&2; exit 2 ;;
esac
script="$dir/$1/$2.sh"
if [ ! -e "$script" ]; then
  echo "k3s-registry: $script is missing on this node; 'pulumi up' (which refreshes first) puts it back" >&2
  exit 1
fi
if [ -n "${{3:-}}" ]; then
  # shellcheck disable=SC2086  # the step's action names, split on purpose
  actual=$({{ cat "$dir/{RUNNER}"; for action in $actions; do cat "$dir/$1/$action.sh"; done; }} | sha256sum)
  if [ "$(printf '%.{SHORT_DIGEST}s' "$actual")" != "$3" ]; then
    stale="the scripts in $dir/$1 are not the version this update expects"
    echo "k3s-registry: $stale; 'pulumi up' (which refreshes first) puts them back" >&2
    exit 1
  fi
fi
exec sh "$script"
"""


def command_line(directory: str, step: str, action: str, user: str, step_digest: Optional[str] = None) -> str:
    """The text a Command runs: short, and changed whenever the step's scripts changed."""
    arguments = [f"{directory}/{RUNNER}", step, action, *([step_digest] if step_digest else [])]
    text = "sh " + " ".join(q(argument) for argument in arguments)
    return text if user == "root" else f"sudo -n {text}"


def command_texts(directory: str, step_digests: Mapping[str, str], repairs: Mapping[str, Any], user: str
                  ) -> dict[str, str]:
    """Every Command's texts, by ``<step>/create`` and ``<step>/delete``: the create line carries
    the step's digest and, once a refresh found the step drifted, its repair count."""
    texts = {}
    for step in STEPS:
        create = command_line(directory, step, "install", user, step_digests.get(step))
        texts[f"{step}/create"] = with_repairs(create, repairs.get(step))
        texts[f"{step}/delete"] = command_line(directory, step, "remove", user)
    return texts


def with_repairs(command_text: str, repairs: Any) -> str:
    """The step's command text carrying the repair count as a trailing comment line.

    Unchanged while no repair was ordered, so adopting drift detection re-runs nothing; the
    count is an int whatever the wire made of it (numbers arrive as floats).
    """
    count = int(repairs or 0)
    return command_text if count == 0 else f"{command_text}\n# repair {count}"


def installer_script(plan: NodePlan, resource_id: str) -> str:
    """Writes the scripts directory (read by ``sh -s`` from stdin, so its size has no limit).

    Every file is written beside its target and renamed over it, so a cut-short run leaves each
    script old or new, never torn; the reader's digests then tell which. Nothing is run: each
    step checks what it needs (a supported OS, python3 with PyYAML) and fails naming it.
    """
    directory = plan.scripts_dir
    files = {RUNNER: runner_script(directory), **{f"{name}.sh": text for name, text in plan.scripts().items()}}
    lines = [PREAMBLE.rstrip("\n"), f"node={q(plan.node_name)}", f"dir={q(directory)}", f"mkdir -p {q(STATE_ROOT)}",
             "umask 077", "mkdir -p \"$dir\" " + " ".join(f"\"$dir\"/{step}" for step in STEPS)]
    for name, text in {**files, "id": resource_id + "\n"}.items():
        delimiter = f"K3S_REGISTRY_{digest(text)}"
        lines += [f"cat > \"$dir\"/{name}.tmp <<'{delimiter}'", with_final_newline(text).rstrip("\n"), delimiter,
                  f"mv -f \"$dir\"/{name}.tmp \"$dir\"/{name}"]
    lines.append('echo "scripts for node $node: installed"')
    return "\n".join(lines) + "\n"


def reader_script(directory: str, step_digests: Mapping[str, str]) -> str:
    """One session, every observation: ``<step> <verdict>`` per observed step, then the scripts'.

    A step whose scripts are missing or changed cannot be judged by them: it reads as drift, so
    the update puts the scripts back and re-runs the step. Only the k3s probe reads stdin.
    """
    checks = []
    for step in OBSERVED_STEPS:
        stdin = "" if step == "k3s" else " < /dev/null"
        checks.append(f"""\
if scripts_intact {step} {q(step_digests.get(step, ""))} {" ".join(ACTIONS[step])}; then
  verdict=$(sh "$dir"/{step}/probe.sh{stdin})
else
  verdict='drift: the scripts of this step on the node are missing or changed'
  scripts_drift="${{scripts_drift:+$scripts_drift, }}{step}"
fi
printf '{step} %s\\n' "$verdict"
""")
    return PREAMBLE + f"""\
dir={q(directory)}
scripts_drift=
# scripts_intact STEP DIGEST ACTION...: the runner and the step's scripts are all there, byte for byte.
scripts_intact() {{
  step=$1
  expected=$2
  shift 2
  [ -f "$dir/{RUNNER}" ] || return 1
  for action in "$@"; do
    [ -f "$dir/$step/$action.sh" ] || return 1
  done
  actual=$({{ cat "$dir/{RUNNER}"; for action in "$@"; do cat "$dir/$step/$action.sh"; done; }} | sha256sum)
  [ "$(printf '%.{SHORT_DIGEST}s' "$actual")" = "$expected" ]
}}
""" + "".join(checks) + f"""\
if ! scripts_intact restart {q(step_digests.get("restart", ""))} {" ".join(ACTIONS["restart"])}; then
  scripts_drift="${{scripts_drift:+$scripts_drift, }}restart"
fi
if [ -n "$scripts_drift" ]; then
  printf '{SCRIPTS} drift: missing or changed on the node: %s\\n' "$scripts_drift"
else
  echo '{SCRIPTS} {drift_probes.IN_SYNC}'
fi
"""


def remover_script(directory: str, resource_id: str) -> str:
    """Removes the scripts directory, unless another NodeScripts resource wrote it since (a
    replacement on the same machine creates the new one before deleting the old)."""
    return PREAMBLE + f"""\
dir={q(directory)}
if [ -d "$dir" ] && [ "$(cat "$dir/id" 2>/dev/null)" != {q(resource_id)} ] && [ -e "$dir/id" ]; then
  echo "scripts: left as they are, another resource wrote them since"
  exit 0
fi
rm -rf "$dir"
rmdir {q(STATE_ROOT)} 2>/dev/null || true
echo "scripts: removed"
"""


def parse_observations(stdout: str) -> Optional[dict[str, str]]:
    """The reader's answer by step, or None if it is not exactly one verdict per step."""
    found: dict[str, str] = {}
    for line in stdout.strip().splitlines():
        step, _, verdict = line.partition(" ")
        if step in found or step not in (*OBSERVED_STEPS, SCRIPTS):
            return None
        if verdict != drift_probes.IN_SYNC and not verdict.startswith(drift_probes.DRIFT_PREFIX):
            return None
        found[step] = verdict
    return found if set(found) == {*OBSERVED_STEPS, SCRIPTS} else None
