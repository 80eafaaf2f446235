"""Shell scripts that configure one node, rendered from settings by small pure functions.

Every script is POSIX ``sh`` with ``set -eu``, is idempotent (a second run writes nothing and
restarts nothing) and has an inverse that puts the node back as it was. Data is embedded as
single-quoted literals; nothing secret is ever embedded (secrets travel on stdin).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

STATE_ROOT = "/var/lib/k3s-registry"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
K3S_CONFIG_DIR = "/etc/rancher/k3s"
HOSTS_FILE = "/etc/hosts"
DEBIAN_ANCHORS = "/usr/local/share/ca-certificates"
REDHAT_ANCHORS = "/etc/pki/ca-trust/source/anchors"
SERVICE_FOR_ROLE = {"server": "k3s", "agent": "k3s-agent"}
REGISTRIES_EDITOR_SOURCE = (Path(__file__).with_name("registries_edit.py")).read_text(encoding="utf-8")


@dataclass(frozen=True)
class NodeTarget:
    """What the scripts need to know about the node and this program's instance on it."""

    node_name: str
    role: str
    instance_id: str

    @property
    def state_dir(self) -> str:
        return f"{STATE_ROOT}/{self.instance_id}"

    @property
    def anchor_file_name(self) -> str:
        return f"k3s-registry-{self.instance_id}.crt"

    @property
    def k3s_ca_file(self) -> str:
        return f"{K3S_CONFIG_DIR}/k3s-registry-{self.instance_id}-ca.crt"

    @property
    def hosts_marker(self) -> str:
        return f"# managed by k3s-registry ({self.instance_id})"


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
# does not remove: .k3s-registry.<target name>.<random> beside the target.
REMOVE_STALE_TEMPS_FUNCTION = """\
remove_stale_temps() {
  rm -f "$(dirname "$1")/.k3s-registry.$(basename "$1")."*
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

# replace_file TARGET DEFAULT_MODE SOURCE [exact]: gives TARGET the content of SOURCE and sets
# $changed to yes or no. Writes a temporary file beside TARGET and renames it over, so a reader
# sees the old or the new file, never a mix; a bind-mounted file (containers, LXC) refuses the
# rename and is rewritten in place, with a rollback copy (see restore_interrupted). An existing
# TARGET keeps its mode, unless "exact": then the new content never has any other mode.
# Where an in-place rewrite keeps the old content until it is complete.
ROLLBACK_COPY_FUNCTION = """\
rollback_copy_of() {
  printf '%s/.k3s-registry-backup.%s' "$(dirname "$1")" "$(basename "$1")"
}
"""

REPLACE_FILE_FUNCTION = REMOVE_STALE_TEMPS_FUNCTION + ROLLBACK_COPY_FUNCTION + """\
replace_file() {
  target=$1
  mode=$2
  remove_stale_temps "$target"
  if [ -e "$target" ] && cmp -s "$3" "$target"; then
    changed=no
    return 0
  fi
  if [ -e "$target" ] && [ "${4:-}" != exact ]; then mode=$(stat -c %a "$target"); fi
  target_dir=$(dirname "$target")
  mkdir -p "$target_dir"
  tmp=$(mktemp "$target_dir/.k3s-registry.$(basename "$target").XXXXXX")
  cat "$3" > "$tmp"
  chmod "$mode" "$tmp"
  if ! mv -f "$tmp" "$target" 2>/dev/null; then
    backup=$(rollback_copy_of "$target")
    cp -p "$target" "$target_dir/.k3s-registry.$(basename "$target").backup"
    mv -f "$target_dir/.k3s-registry.$(basename "$target").backup" "$backup"
    cat "$tmp" > "$target"
    rm -f "$backup" "$tmp"
  fi
  if command -v restorecon >/dev/null 2>&1; then restorecon "$target" 2>/dev/null || true; fi
  changed=yes
}
"""

# A private scratch directory for content being prepared, gone when the script ends.
WORK_DIR = """\
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"""


def _header(target: NodeTarget, *functions: str) -> str:
    return PREAMBLE + f"node={q(target.node_name)}\n" + FAIL_FUNCTION + "".join(functions) + WORK_DIR


# ----------------------------------------------------------------------------- trust store

def trust_store_detection() -> str:
    return f"""\
if [ -r /etc/os-release ]; then
  # shellcheck source=/dev/null
  . /etc/os-release
fi
os_id=${{ID:-unknown}}
os_like=${{ID_LIKE:-}}
os_name=${{PRETTY_NAME:-$os_id}}
case " $os_id $os_like " in
  *" debian "*|*" ubuntu "*|*" raspbian "*)
    anchors={q(DEBIAN_ANCHORS)}
    # shellcheck disable=SC2034  # read by the install script only
    bundle=/etc/ssl/certs/ca-certificates.crt
    command -v update-ca-certificates >/dev/null 2>&1 \\
      || fail "$os_name has no update-ca-certificates; install the ca-certificates package"
    # --fresh: a plain run keeps the links (and Java's keystore entry) of a removed or
    # rewritten local certificate; a fresh rebuild derives everything from the files again.
    refresh_trust() {{ update-ca-certificates --fresh; }}
    # update-ca-certificates tells its hooks (Java's keystore) only about removals it
    # detects itself, and a deleted local file is not one: tell them, as it would.
    announce_removal() {{
      for hook in /etc/ca-certificates/update.d/*; do
        if [ -x "$hook" ]; then
          printf -- '-/etc/ssl/certs/%s.pem\n' "${{1%.crt}}" | "$hook" || echo "hook $hook failed" >&2
        fi
      done
    }}
    ;;
  *" rhel "*|*" fedora "*|*" centos "*|*" rocky "*|*" almalinux "*)
    anchors={q(REDHAT_ANCHORS)}
    # shellcheck disable=SC2034  # read by the install script only
    bundle=/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem
    command -v update-ca-trust >/dev/null 2>&1 \\
      || fail "$os_name has no update-ca-trust; install the ca-certificates package"
    refresh_trust() {{ update-ca-trust extract; }}
    announce_removal() {{ :; }}
    ;;
  *)
    fail "cannot install the registry certificate on $os_name: supported are Debian, Ubuntu, Raspberry Pi OS, RHEL, Fedora, CentOS, Rocky and AlmaLinux"
    ;;
esac
"""


def trust_install_script(target: NodeTarget, certificate_pem: str) -> str:
    """Adds the registry's public certificate to the OS trust store."""
    return (
        _header(target, REPLACE_FILE_FUNCTION)
        + trust_store_detection()
        + f"""\
printf '%s' {q(with_final_newline(certificate_pem))} > "$work/anchor"
replace_file "$anchors/"{q(target.anchor_file_name)} 644 "$work/anchor"
# Also rebuilds when a run was cut short between writing the file and rebuilding the bundle.
if [ "$changed" = yes ] || ! grep -qxF {q(signature_line(certificate_pem))} "$bundle" 2>/dev/null; then
  refresh_trust
  echo "trust store: certificate installed"
else
  echo "trust store: unchanged"
fi
"""
    )


def signature_line(certificate_pem: str) -> str:
    """The last full base64 line: it holds signature bytes, so no other certificate has it."""
    lines = [line for line in certificate_pem.strip().splitlines() if len(line) == 64]
    return lines[-1]


def trust_remove_script(target: NodeTarget) -> str:
    """Removes the certificate again; the trust store is rebuilt without it."""
    return (
        _header(target, REMOVE_STALE_TEMPS_FUNCTION)
        + trust_store_detection()
        + f"""\
anchor="$anchors/"{q(target.anchor_file_name)}
# Recorded before the removal, so a run cut short before the rebuild still rebuilds next time.
pending={q(STATE_ROOT)}/{q(target.instance_id + "-trust.removing")}
remove_stale_temps "$anchor"
if [ -e "$anchor" ] || [ -e "$pending" ]; then
  mkdir -p {q(STATE_ROOT)}
  : > "$pending"
  rm -f "$anchor"
  refresh_trust
  announce_removal {q(target.anchor_file_name)}
  rm -f "$pending"
  rmdir {q(STATE_ROOT)} 2>/dev/null || true
  echo "trust store: certificate removed"
else
  echo "trust store: nothing to remove"
fi
"""
    )


# ----------------------------------------------------------------------------- /etc/hosts

# Rewrites /etc/hosts with every line but ours (a line ending in the marker), byte for byte,
# including a missing final newline; prints our line first when one is given, so it wins
# over any older mapping of the same name further down.
_HOSTS_REWRITE_FUNCTION = """\
hosts_without_ours() {
  final_newline=0
  if [ -s "$hosts" ] && [ "$(tail -c 1 "$hosts" | od -An -c | tr -d ' ')" = '\\n' ]; then final_newline=1; fi
  awk -v marker="$marker" -v final_newline="$final_newline" '
    { n = length($0) - length(marker) + 1 }
    n >= 1 && substr($0, n) == marker { next }
    { if (printed) printf "\\n"; printf "%s", $0; printed = 1 }
    END { if (printed && final_newline) printf "\\n" }
  ' "$hosts"
}
"""


def hosts_install_script(target: NodeTarget, hostname: str, ip_address: str) -> str:
    """Maps the registry's name to its address in /etc/hosts: one managed line, nothing else touched."""
    line = f"{ip_address}\t{hostname}\t{target.hosts_marker}"
    return (
        _header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION)
        + f"""\
hosts={q(HOSTS_FILE)}
marker={q(target.hosts_marker)}
restore_interrupted "$hosts"
[ -e "$hosts" ] || : > "$hosts"
{{ printf '%s\\n' {q(line)}; hosts_without_ours; }} > "$work/hosts"
replace_file "$hosts" 644 "$work/hosts"
echo "/etc/hosts: $changed"
"""
    )


def hosts_remove_script(target: NodeTarget) -> str:
    """Removes the managed line; the rest of /etc/hosts is left exactly as it is."""
    return (
        _header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION)
        + f"""\
hosts={q(HOSTS_FILE)}
marker={q(target.hosts_marker)}
restore_interrupted "$hosts"
if [ -e "$hosts" ]; then
  hosts_without_ours > "$work/hosts"
  replace_file "$hosts" 644 "$work/hosts"
  echo "/etc/hosts: $changed"
fi
"""
    )


# ----------------------------------------------------------------------------- k3s registries.yaml

def restart_function(role: str, restart: bool) -> str:
    """Defines restart_k3s: k3s reads registries.yaml only when it starts."""
    service = SERVICE_FOR_ROLE[role]
    if not restart:
        return f"""\
restart_k3s() {{
  echo "registries.yaml changed; restartK3s is false, restart {service} yourself to apply it"
}}
"""
    return f"""\
restart_k3s() {{
  if [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet {service}; then
      systemctl restart {service}
      echo "{service} restarted"
    else
      echo "{service} is not running; it reads registries.yaml when it starts"
    fi
  elif command -v rc-service >/dev/null 2>&1; then
    if rc-service {service} status >/dev/null 2>&1; then
      rc-service {service} restart
      echo "{service} restarted"
    else
      echo "{service} is not running; it reads registries.yaml when it starts"
    fi
  else
    fail "neither systemd nor OpenRC found; restart {service} by hand to apply registries.yaml"
  fi
}}
"""


def _registries_common(target: NodeTarget, restart: bool) -> str:
    return (
        _header(target, REPLACE_FILE_FUNCTION, restart_function(target.role, restart))
        + f"""\
state={q(target.state_dir)}
registries={q(REGISTRIES_YAML)}
ca_file={q(target.k3s_ca_file)}
# shellcheck disable=SC2016  # Python source, kept literal on purpose
editor={q(REGISTRIES_EDITOR_SOURCE)}
edit_registries() {{
  if ! {{ command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' 2>/dev/null; }}; then
    fail "editing registries.yaml needs python3 with PyYAML (apt install python3-yaml, dnf install python3-pyyaml)"
  fi
  python3 -c "$editor" "$@"
}}
"""
    )


def registries_install_script(target: NodeTarget, address: str, ca_pem: str, restart: bool) -> str:
    """Points k3s at the registry: a mirror and a configs entry keyed host:port, with our CA file.

    Credentials, when there are any, are read from stdin by the editor, never from the text.
    """
    return (
        _registries_common(target, restart)
        + f"""\
address={q(address)}
mkdir -p "$state"
chmod 700 "$state"
# The file as it was before this program first touched it, to give it back on destroy.
if [ ! -e "$state/original" ] && [ ! -e "$state/original-absent" ]; then
  if [ -e "$registries" ]; then
    cp -p "$registries" "$state/original.tmp"
    mv -f "$state/original.tmp" "$state/original"
  else
    if [ ! -d {q(K3S_CONFIG_DIR)} ]; then : > "$state/created-config-dir"; fi
    : > "$state/original-absent"
  fi
fi
printf '%s' {q(with_final_newline(ca_pem))} > "$work/ca"
replace_file "$ca_file" 644 "$work/ca"
echo "registry CA file for k3s: $changed"
old_address=
if [ -e "$state/address" ]; then old_address=$(cat "$state/address"); fi
edit_registries merge "$registries" "$address" "$ca_file" "$old_address" > "$work/registries"
registries_changed=no
if [ ! -e "$registries" ] || ! cmp -s "$work/registries" "$registries"; then
  # Recorded before the write, so a run cut short after it still restarts k3s next time.
  : > "$state/restart-pending"
  # It may hold the registry's password: root only, whatever mode an older file had, from the
  # moment the content is there (the mode is set before the rename).
  replace_file "$registries" 600 "$work/registries" exact
  registries_changed=yes
fi
if [ "$(stat -c %a "$registries")" != 600 ]; then chmod 600 "$registries"; fi
replace_file "$state/written" 600 "$registries"
printf '%s\\n' "$address" > "$work/address"
replace_file "$state/address" 600 "$work/address"
echo "registries.yaml: $registries_changed"
if [ -e "$state/restart-pending" ]; then
  restart_k3s
  rm -f "$state/restart-pending"
fi
"""
    )


def registries_remove_script(target: NodeTarget, address: str, restart: bool) -> str:
    """Gives registries.yaml back: the original bytes if nobody edited it since, else minus our entries."""
    return (
        _registries_common(target, restart)
        + f"""\
rm -f "$ca_file"
remove_stale_temps "$ca_file"
remove_stale_temps "$registries"
if [ ! -d "$state" ]; then
  echo "registries.yaml: nothing to undo"
  exit 0
fi
registries_changed=no
if [ -e "$state/original" ] && [ -e "$registries" ] && cmp -s "$state/original" "$registries"; then
  # Given back already (by a run cut short after the write): at most its mode is left to do.
  chmod "$(stat -c %a "$state/original")" "$registries"
elif [ -e "$state/written" ] && [ -e "$registries" ] && cmp -s "$state/written" "$registries"; then
  # Recorded before the write, so a run cut short after it still restarts k3s next time.
  : > "$state/restart-pending"
  if [ -e "$state/original-absent" ]; then
    rm -f "$registries"
    registries_changed=yes
  elif [ -e "$state/original" ]; then
    replace_file "$registries" "$(stat -c %a "$state/original")" "$state/original" exact
    registries_changed=$changed
  fi
elif [ -e "$registries" ]; then
  # Edited since we wrote it: keep those edits, take out only this registry's entries.
  edit_registries unmerge "$registries" {q(address)} > "$work/without-current"
  cp "$work/without-current" "$work/registries"
  if [ -e "$state/address" ]; then
    edit_registries unmerge "$work/without-current" "$(cat "$state/address")" > "$work/registries"
  fi
  if [ -e "$state/original-absent" ] && [ ! -s "$work/registries" ]; then
    : > "$state/restart-pending"
    rm -f "$registries"
    registries_changed=yes
  elif ! cmp -s "$work/registries" "$registries"; then
    : > "$state/restart-pending"
    replace_file "$registries" 600 "$work/registries"
    registries_changed=$changed
  fi
fi
if [ -e "$state/created-config-dir" ]; then
  rmdir {q(K3S_CONFIG_DIR)} 2>/dev/null || true
  rmdir "$(dirname {q(K3S_CONFIG_DIR)})" 2>/dev/null || true
fi
echo "registries.yaml: $registries_changed"
if [ "$registries_changed" = yes ] || [ -e "$state/restart-pending" ]; then
  : > "$state/restart-pending"
  restart_k3s
fi
rm -rf "$state"
rmdir {q(STATE_ROOT)} 2>/dev/null || true
"""
    )


# ----------------------------------------------------------------------------- running them

def as_command(script: str, user: str) -> str:
    """The command line pulumi-command sends: the script run by ``sh``, through sudo unless root.

    ``sudo -n`` fails at once instead of waiting for a password no one can type (no PTY).
    """
    command = f"sh -c {q(script)}"
    return command if user == "root" else f"sudo -n {command}"


def with_final_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
