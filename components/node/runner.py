"""What runs on the node to carry the steps out: the scripts directory, its runner, and the
short command lines that call it.

Every step's scripts (components/node/steps/) are rendered from the node's plan
(components/node/plan.py) and written to the node by its ``NodeScripts`` resource
(components/node/scripts_resource.py), in one SSH session, into a directory of their own::

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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .shell import DRIFT_PREFIX, IN_SYNC, PREAMBLE, q, with_final_newline
from .steps import ACTIONS, NODE_STEPS, OBSERVED_STEPS, STEPS
from .target import STATE_ROOT

if TYPE_CHECKING:
    from .plan import NodePlan

SCRIPTS = "scripts"
"""The pseudo-step a refresh reports for the scripts directory itself."""
RUNNER = "run"
SHORT_DIGEST = 16
"""Hex digits of a SHA-256 kept in the state and command lines: 64 bits tell versions apart (the
digests catch changed or stale scripts; whoever can write them is root on the node anyway)."""


def digest(text: str) -> str:
    """The first SHORT_DIGEST hex digits of the SHA-256: what the state and the command lines keep."""
    return hashlib.sha256(text.encode()).hexdigest()[:SHORT_DIGEST]


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


def command_line(directory: str, step: str, action: str, user: str, step_digest: str | None = None) -> str:
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
    the update puts the scripts back and re-runs the step. Only a step that reads the
    credentials (the k3s step) gets stdin; a step without a probe has only its scripts checked.
    """
    checks, unobserved = [], []
    for step in NODE_STEPS:
        intact = f"scripts_intact {step.name} {q(step_digests.get(step.name, ''))} {' '.join(step.actions)}"
        if not step.observed:
            unobserved.append(f"""\
if ! {intact}; then
  scripts_drift="${{scripts_drift:+$scripts_drift, }}{step.name}"
fi
""")
            continue
        stdin = "" if step.reads_credentials else " < /dev/null"
        checks.append(f"""\
if {intact}; then
  verdict=$(sh "$dir"/{step.name}/probe.sh{stdin})
else
  verdict='drift: the scripts of this step on the node are missing or changed'
  scripts_drift="${{scripts_drift:+$scripts_drift, }}{step.name}"
fi
printf '{step.name} %s\\n' "$verdict"
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
""" + "".join(checks) + "".join(unobserved) + f"""\
if [ -n "$scripts_drift" ]; then
  printf '{SCRIPTS} drift: missing or changed on the node: %s\\n' "$scripts_drift"
else
  echo '{SCRIPTS} {IN_SYNC}'
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


def parse_observations(stdout: str) -> dict[str, str] | None:
    """The reader's answer by step, or None if it is not exactly one verdict per step."""
    found: dict[str, str] = {}
    for line in stdout.strip().splitlines():
        step, _, verdict = line.partition(" ")
        if step in found or step not in (*OBSERVED_STEPS, SCRIPTS):
            return None
        if verdict != IN_SYNC and not verdict.startswith(DRIFT_PREFIX):
            return None
        found[step] = verdict
    return found if set(found) == {*OBSERVED_STEPS, SCRIPTS} else None
