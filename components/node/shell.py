"""The shell every node script is written in: one vocabulary, shared by all the steps.

Every script is POSIX ``sh`` with ``set -eu``, is idempotent (a second run writes nothing and
restarts nothing) and has an inverse that puts the node back as it was. Data is embedded as
single-quoted literals; nothing secret is ever embedded (secrets travel on stdin).

Here: quoting, the preamble, fail, the atomic replace of a file (with the rollback copy of an
in-place rewrite), step ownership, the scratch directory; and the probes' findings and answer
line. A step's module (components/node/steps/) composes its scripts from these.
"""

from __future__ import annotations

import shlex

from .target import STATE_ROOT, NodeTarget


def q(value: str) -> str:
    """A shell literal for ``value``, exact to the byte."""
    return shlex.quote(value)


PREAMBLE = "set -eu\numask 022\n"

FAIL_FUNCTION = """\
fail() {
  printf 'k3s-registry: node %s: %s\\n' "$node" "$1" >&2
  exit 1
}
"""

# Temporary files are named after their target, so a run cut short leaves nothing the next run
# does not remove: .k3s-registry.<target name>.<random> beside the target. Targets are absolute
# paths: ${1%/*} is the directory, ${1##*/} the name, without a process for either.
REMOVE_STALE_TEMPS_FUNCTION = """\
remove_stale_temps() {
  rm -f "${1%/*}/.k3s-registry.${1##*/}."*
}
"""

# An in-place rewrite (below) cannot be atomic: cut short between the truncation and the end of
# the write, it leaves the file torn. A copy of the old content is therefore put beside the
# file (atomically) first and removed only once the write is complete; every script that reads
# or writes such a file first puts a left-over copy back, so it is entirely old again. Goes
# with REPLACE_FILE_FUNCTION, which defines rollback_copy_of.
RESTORE_INTERRUPTED_FUNCTION = """\
restore_interrupted() {
  backup=$(rollback_copy_of "$1")
  if [ -e "$backup" ]; then
    cat "$backup" > "$1"
    rm -f "$backup"
  fi
}
"""

# Where an in-place rewrite keeps the old content until it is complete.
ROLLBACK_COPY_FUNCTION = """\
rollback_copy_of() {
  printf '%s/.k3s-registry-backup.%s' "${1%/*}" "${1##*/}"
}
"""

# replace_file TARGET DEFAULT_MODE SOURCE [exact]: gives TARGET the content of SOURCE and sets
# $changed to yes or no. Writes a temporary file beside TARGET and renames it over, so a reader
# sees the old or the new file, never a mix; a bind-mounted file (containers, LXC) refuses the
# rename and is rewritten in place, with a rollback copy (see restore_interrupted). An existing
# TARGET keeps its mode, unless "exact": then the new content never has any other mode.
REPLACE_FILE_FUNCTION = REMOVE_STALE_TEMPS_FUNCTION + ROLLBACK_COPY_FUNCTION + """\
replace_file() {
  target=$1
  mode=$2
  remove_stale_temps "$target"
  # shellcheck disable=SC2034  # read by the scripts that report it
  if [ -e "$target" ] && cmp -s "$3" "$target"; then
    changed=no
    return 0
  fi
  if [ -e "$target" ] && [ "${4:-}" != exact ]; then mode=$(stat -c %a "$target"); fi
  target_dir=${target%/*}
  target_name=${target##*/}
  mkdir -p "$target_dir"
  tmp=$(mktemp "$target_dir/.k3s-registry.$target_name.XXXXXX")
  cat "$3" > "$tmp"
  chmod "$mode" "$tmp"
  if ! mv -f "$tmp" "$target" 2>/dev/null; then
    backup=$(rollback_copy_of "$target")
    cp -p "$target" "$target_dir/.k3s-registry.$target_name.backup"
    mv -f "$target_dir/.k3s-registry.$target_name.backup" "$backup"
    cat "$tmp" > "$target"
    rm -f "$backup" "$tmp"
  fi
  if command -v restorecon >/dev/null 2>&1; then restorecon "$target" 2>/dev/null || true; fi
  # shellcheck disable=SC2034  # read by the scripts that report it
  changed=yes
}
"""

# A private scratch directory for content being prepared, gone when the script ends.
WORK_DIR = """\
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"""


# A URN change (a node renamed in the stack, steps moved under a new parent) is not a
# replacement: the engine runs the new resource's create first and the old one's delete at the
# end of the update, on the same host. Each create therefore records its owner, and a delete
# undoes a step only while the step is still its own (or nobody's: state from before owners).
def ownership(target: NodeTarget, step: str) -> str:
    return f"""\
# shellcheck disable=SC2016  # a URN, literal on purpose
owner={q(target.owner)}
owner_file={q(target.owner_file(step))}
claim_step() {{
  mkdir -p {q(STATE_ROOT)}
  printf '%s\\n' "$owner" > "$work/owner"
  replace_file "$owner_file" 644 "$work/owner"
}}
leave_if_owned_by_another() {{
  if [ -e "$owner_file" ] && [ "$(cat "$owner_file")" != "$owner" ]; then
    echo "{step}: left as it is, it now belongs to $(cat "$owner_file")"
    exit 0
  fi
}}
release_step() {{
  rm -f "$owner_file"
  rmdir {q(STATE_ROOT)} 2>/dev/null || true
}}
"""


def header(target: NodeTarget, *functions: str) -> str:
    return PREAMBLE + f"node={q(target.node_name)}\n" + FAIL_FUNCTION + "".join(functions) + WORK_DIR


# ----------------------------------------------------------------------------- probes

# A probe checks one step read-only and prints exactly one line: ``in-sync``, or
# ``drift: <reasons>`` naming WHAT drifted (never file contents: registries.yaml can hold
# passwords). A probe that cannot judge (unsupported OS, no python3 for the YAML) exits non-zero
# with a message on stderr, so a refresh fails loudly instead of guessing. Probes write nothing
# on the node: no scratch files, the expected bytes are piped into ``cmp``.
IN_SYNC = "in-sync"
DRIFT_PREFIX = "drift: "
_DRIFT_FORMAT = DRIFT_PREFIX + "%s\\n"  # for printf

# drift REASON records one finding; report prints the single answer line at the end, so a
# probe names every drifted item at once instead of stopping at the first.
_FINDINGS_FUNCTIONS = f"""\
reasons=
drift() {{
  reasons="${{reasons:+$reasons; }}$1"
}}
report() {{
  if [ -z "$reasons" ]; then
    echo {q(IN_SYNC)}
  else
    printf {q(_DRIFT_FORMAT)} "$reasons"
  fi
}}
"""


def probe_header(target: NodeTarget) -> str:
    """set -eu, the node name for fail(), and the findings helpers; no scratch directory (read-only)."""
    return PREAMBLE + f"node={q(target.node_name)}\n" + FAIL_FUNCTION + _FINDINGS_FUNCTIONS


def same_bytes_check(path_variable: str, content: str, label: str) -> str:
    """Drift when the file is missing or not byte-identical to ``content`` (compared via a pipe, no temp file)."""
    return f"""\
if [ ! -e "${path_variable}" ]; then
  drift "{label} ${path_variable} is missing"
elif ! printf '%s' {q(content)} | cmp -s - "${path_variable}"; then
  drift "{label} ${path_variable} differs"
fi
"""


# ----------------------------------------------------------------------------- running them

def as_command(script: str, user: str) -> str:
    """The command line pulumi-command sends: the script run by ``sh``, through sudo unless root.

    ``sudo -n`` fails at once instead of waiting for a password no one can type (no PTY).
    """
    command = f"sh -c {q(script)}"
    return command if user == "root" else f"sudo -n {command}"


def with_final_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
