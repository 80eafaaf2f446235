"""Shell scripts that configure one node, rendered from settings by small pure functions.

Every script is POSIX ``sh`` with ``set -eu``, is idempotent (a second run writes nothing and
restarts nothing) and has an inverse that puts the node back as it was. Data is embedded as
single-quoted literals; nothing secret is ever embedded (secrets travel on stdin).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Optional
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
    owner: str = ""
    """Which resource manages the steps (its parent's URN): a delete leaves a step another owns."""

    def owner_file(self, step: str) -> str:
        return f"{STATE_ROOT}/{self.instance_id}-{step}.owner"

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

# replace_file TARGET DEFAULT_MODE SOURCE [exact]: gives TARGET the content of SOURCE and sets
# $changed to yes or no. Writes a temporary file beside TARGET and renames it over, so a reader
# sees the old or the new file, never a mix; a bind-mounted file (containers, LXC) refuses the
# rename and is rewritten in place, with a rollback copy (see restore_interrupted). An existing
# TARGET keeps its mode, unless "exact": then the new content never has any other mode.
# Where an in-place rewrite keeps the old content until it is complete.
ROLLBACK_COPY_FUNCTION = """\
rollback_copy_of() {
  printf '%s/.k3s-registry-backup.%s' "${1%/*}" "${1##*/}"
}
"""

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
def _ownership(target: NodeTarget, step: str) -> str:
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
    # refresh_trust fresh: a plain run keeps the links (and Java's keystore entry) of a removed
    # or rewritten local certificate; a fresh rebuild derives everything from the files again,
    # at about three times the cost, so it is kept for when a certificate leaves the store.
    refresh_trust() {{
      if [ "$1" = fresh ]; then update-ca-certificates --fresh; else update-ca-certificates; fi
    }}
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
    refresh_trust() {{ update-ca-trust extract; }}  # always rebuilt from the files
    announce_removal() {{ :; }}
    ;;
  *)
    supported="Debian, Ubuntu, Raspberry Pi OS, RHEL, Fedora, CentOS, Rocky and AlmaLinux"
    fail "cannot install the registry certificate on $os_name: supported are $supported"
    ;;
esac
"""


# The manual guide copied the registry's certificate AND its private key into the Debian trust
# store under these names.
GUIDE_CERTIFICATE = f"{DEBIAN_ANCHORS}/registry.crt"
GUIDE_KEY = f"{DEBIAN_ANCHORS}/registry.key"


def guide_trust_cleanup(target: NodeTarget, hostname: str) -> str:
    """Removes the guide's key (a PEM private key) and its certificate (one issued for ``hostname``).

    Recorded as pending before the removal, so a run cut short still rebuilds the store next time.
    """
    return f"""\
guide_pending={q(STATE_ROOT)}/{q(target.instance_id + "-guide.removing")}
guide_key={q(GUIDE_KEY)}
guide_certificate={q(GUIDE_CERTIFICATE)}
guide_leftovers=
if [ -f "$guide_key" ] && grep -q -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' "$guide_key"; then
  guide_leftovers="$guide_key"
fi
if [ -f "$guide_certificate" ]; then
  command -v openssl >/dev/null 2>&1 || fail "migrateFromGuide needs openssl to recognise the guide's registry.crt"
  if openssl x509 -in "$guide_certificate" -noout -checkhost {q(hostname)} 2>/dev/null | grep -q 'does match'; then
    guide_leftovers="$guide_leftovers $guide_certificate"
  fi
fi
if [ -n "$guide_leftovers" ]; then
  mkdir -p {q(STATE_ROOT)}
  : > "$guide_pending"
  # shellcheck disable=SC2086  # two fixed paths without spaces
  rm -f $guide_leftovers
  echo "trust store: removed the manual guide's$guide_leftovers"
fi
"""


def trust_install_script(target: NodeTarget, certificate_pem: str, guide_hostname: Optional[str] = None) -> str:
    """Adds the registry's public certificate to the OS trust store.

    With ``guide_hostname`` (migrateFromGuide) it first removes the manual guide's leftovers.
    """
    cleanup = guide_trust_cleanup(target, guide_hostname) if guide_hostname else ""
    guide_pending = ' || [ -e "$guide_pending" ]' if guide_hostname else ""
    after_refresh = (
        """\
  if [ -e "$guide_pending" ]; then
    announce_removal registry.crt
    rm -f "$guide_pending"
  fi
"""
        if guide_hostname
        else ""
    )
    return (
        _header(target, REPLACE_FILE_FUNCTION, _ownership(target, "trust"))
        + trust_store_detection()
        + "claim_step\n"
        + cleanup
        + f"""\
anchor="$anchors/"{q(target.anchor_file_name)}
printf '%s' {q(with_final_newline(certificate_pem))} > "$work/anchor"
# Another certificate in our file (a rotation) leaves the store: recorded before the rewrite,
# so a run cut short before the rebuild still rebuilds from scratch next time.
replacing={q(STATE_ROOT)}/{q(target.instance_id + "-trust.replacing")}
if [ -e "$anchor" ] && ! cmp -s "$work/anchor" "$anchor"; then
  : > "$replacing"
fi
replace_file "$anchor" 644 "$work/anchor"
# Also rebuilds when a run was cut short between writing the file and rebuilding the bundle.
signature={q(signature_line(certificate_pem))}
if [ "$changed" = yes ] || [ -e "$replacing" ]{guide_pending} || ! grep -qxF "$signature" "$bundle" 2>/dev/null; then
  if [ -e "$replacing" ]{guide_pending}; then refresh_trust fresh; else refresh_trust add; fi
  rm -f "$replacing"
{after_refresh}  echo "trust store: certificate installed"
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
        _header(target, REPLACE_FILE_FUNCTION, _ownership(target, "trust"))
        + trust_store_detection()
        + f"""\
leave_if_owned_by_another
anchor="$anchors/"{q(target.anchor_file_name)}
# Recorded before the removal, so a run cut short before the rebuild still rebuilds next time.
pending={q(STATE_ROOT)}/{q(target.instance_id + "-trust.removing")}
remove_stale_temps "$anchor"
if [ -e "$anchor" ] || [ -e "$pending" ]; then
  mkdir -p {q(STATE_ROOT)}
  : > "$pending"
  rm -f "$anchor"
  refresh_trust fresh
  announce_removal {q(target.anchor_file_name)}
  rm -f "$pending" {q(STATE_ROOT)}/{q(target.instance_id + "-trust.replacing")}
  echo "trust store: certificate removed"
else
  echo "trust store: nothing to remove"
fi
release_step
"""
    )


# ----------------------------------------------------------------------------- /etc/hosts

# Rewrites /etc/hosts with every line but ours (a line ending in the marker), byte for byte,
# including a missing final newline; prints our line first when one is given, so it wins
# over any older mapping of the same name further down. With $guide_name set (migrateFromGuide)
# a line that maps that name (the manual guide's) is left out too.
_HOSTS_REWRITE_FUNCTION = """\
hosts_without_ours() {
  final_newline=0
  if [ -s "$hosts" ] && [ "$(tail -c 1 "$hosts" | od -An -c | tr -d ' ')" = '\\n' ]; then final_newline=1; fi
  awk -v marker="$marker" -v final_newline="$final_newline" -v guide_name="${guide_name:-}" '
    { n = length($0) - length(marker) + 1 }
    n >= 1 && substr($0, n) == marker { next }
    guide_name != "" && $1 !~ /^#/ { for (i = 2; i <= NF && $i !~ /^#/; i++) if ($i == guide_name) next }
    { if (printed) printf "\\n"; printf "%s", $0; printed = 1 }
    END { if (printed && final_newline) printf "\\n" }
  ' "$hosts"
}
"""


def hosts_install_script(target: NodeTarget, hostname: str, ip_address: str, migrate_from_guide: bool = False) -> str:
    """Maps the registry's name to its address in /etc/hosts: one managed line, nothing else touched
    (with ``migrate_from_guide``, the guide's line for the same name goes)."""
    line = f"{ip_address}\t{hostname}\t{target.hosts_marker}"
    guide = f"guide_name={q(hostname)}\n" if migrate_from_guide else ""
    return (
        _header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION,
                _ownership(target, "hosts"))
        + f"""\
claim_step
hosts={q(HOSTS_FILE)}
marker={q(target.hosts_marker)}
{guide}restore_interrupted "$hosts"
[ -e "$hosts" ] || : > "$hosts"
{{ printf '%s\\n' {q(line)}; hosts_without_ours; }} > "$work/hosts"
replace_file "$hosts" 644 "$work/hosts"
echo "/etc/hosts: $changed"
"""
    )


def hosts_remove_script(target: NodeTarget) -> str:
    """Removes the managed line; the rest of /etc/hosts is left exactly as it is."""
    return (
        _header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION,
                _ownership(target, "hosts"))
        + f"""\
leave_if_owned_by_another
hosts={q(HOSTS_FILE)}
marker={q(target.hosts_marker)}
restore_interrupted "$hosts"
if [ -e "$hosts" ]; then
  hosts_without_ours > "$work/hosts"
  replace_file "$hosts" 644 "$work/hosts"
  echo "/etc/hosts: $changed"
fi
release_step
"""
    )


# ----------------------------------------------------------------------------- k3s registries.yaml

DEFAULT_RESTART_TIMEOUT = 300
NEEDS_PYYAML = "needs python3 with PyYAML (apt install python3-yaml, dnf install python3-pyyaml)"
"""What a node without PyYAML is told (registries.yaml is read and written with it)."""
GENERATION_LINE = "k3s settings generation: "


def restart_function(target: NodeTarget, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT) -> str:
    """Defines restart_k3s: k3s reads registries.yaml only when it starts.

    The restart is followed by a bounded wait until the unit is active again and, on a server,
    the Kubernetes API answers, so the next server is only restarted once this one is back.
    A unit that is not running (stopped by its administrator) is not started.
    """
    service = SERVICE_FOR_ROLE[target.role]
    if not restart:
        return f"""\
restart_k3s() {{
  echo "registries.yaml changed; restartK3s is false, restart {service} yourself to apply it"
}}
"""
    api_wait = (
        f"""\
  command -v k3s >/dev/null 2>&1 || fail "{service} restarted, but there is no k3s command to ask the API whether it is back"
  until k3s kubectl get --raw=/readyz >/dev/null 2>&1; do
    [ "$waited" -lt "$timeout" ] \\
      || fail "{service} is active again, but the Kubernetes API did not answer within $timeout s; see 'journalctl -u {service}'"
    sleep 1
    waited=$((waited + 1))
  done
"""
        if target.role == "server"
        else ""
    )
    return f"""\
timeout={int(timeout_seconds)}
init_system() {{
  if [ -d /run/systemd/system ]; then
    echo systemd
  elif command -v rc-service >/dev/null 2>&1; then
    echo openrc
  else
    fail "neither systemd nor OpenRC found; restart {service} by hand to apply registries.yaml"
  fi
}}
service_active() {{
  case $(init_system) in
    systemd) systemctl is-active --quiet {service} ;;
    openrc) rc-service {service} status >/dev/null 2>&1 ;;
  esac
}}
restart_k3s() {{
  if ! service_active; then
    echo "{service} is not running; it reads registries.yaml when it starts"
    return 0
  fi
  case $(init_system) in
    systemd) systemctl restart {service} || fail "systemctl restart {service} failed; see 'journalctl -u {service}'" ;;
    openrc) rc-service {service} restart || fail "rc-service {service} restart failed" ;;
  esac
  waited=0
  until service_active; do
    [ "$waited" -lt "$timeout" ] \\
      || fail "{service} did not become active again within $timeout s after the restart; see 'journalctl -u {service}'"
    sleep 1
    waited=$((waited + 1))
  done
{api_wait}  echo "{service} restarted, back after about $waited s"
}}
"""


def _registries_common(target: NodeTarget, *functions: str) -> str:
    return (
        _header(target, REPLACE_FILE_FUNCTION, _ownership(target, "k3s"), *functions)
        + f"""\
state={q(target.state_dir)}
registries={q(REGISTRIES_YAML)}
# shellcheck disable=SC2034  # not every script that edits registries.yaml touches the CA file
ca_file={q(target.k3s_ca_file)}
# shellcheck disable=SC2016  # Python source, kept literal on purpose
editor={q(REGISTRIES_EDITOR_SOURCE)}
needs={q("editing registries.yaml " + NEEDS_PYYAML)}
# One interpreter start per edit: the editor exits 4 without PyYAML, 3 (with its message) when
# the file cannot be edited.
edit_registries() {{
  command -v python3 >/dev/null 2>&1 || fail "$needs"
  status=0
  python3 -c "$editor" "$@" || status=$?
  case $status in
    0|3) return "$status" ;;
    4) fail "$needs" ;;
    *) fail "python3 failed ($status) on registries.yaml; $needs" ;;
  esac
}}
"""
    )


def caches_json(caches: tuple[tuple[str, str], ...]) -> str:
    """The pull-through caches as the registries editor takes them: [{upstream, address}]."""
    return json.dumps([{"upstream": upstream, "address": address} for upstream, address in caches], sort_keys=True)


def registries_install_script(
    target: NodeTarget,
    address: str,
    ca_pem: str,
    guide_hostname: Optional[str] = None,
    caches: tuple[tuple[str, str], ...] = (),
) -> str:
    """Points k3s at the registry: a mirror and a configs entry keyed host:port, with our CA file.

    It does not restart k3s: it records that a restart is due, and the restart step applies
    it once the registry is in place (see restart_script). Every change of the file raises the
    generation it prints, which is how the restart step knows to run.
    Credentials, when there are any, are read from stdin by the editor, never from the text.
    With ``guide_hostname`` (migrateFromGuide) the manual guide's configs entry for that bare
    host name goes, from the file and from the copy kept to give back on destroy.
    ``caches``: (upstream, host:port) of each pull-through cache: ``mirrors.<upstream>`` points
    there, with the same CA and credentials. A cache dropped from the list is taken out again;
    a mirror of the same upstream that this program did not write stops the step, by name.
    """
    forget_guide = (
        f"""\
edit_registries forget-guide "$registries" {q(guide_hostname)} > "$work/current"
current="$work/current"
if [ -e "$state/original" ]; then
  edit_registries forget-guide "$state/original" {q(guide_hostname)} > "$work/original"
  replace_file "$state/original" 600 "$work/original"
fi
"""
        if guide_hostname
        else ""
    )
    return (
        _registries_common(target)
        + f"""\
address={q(address)}
claim_step
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
current="$registries"
caches={q(caches_json(caches))}
old_caches=
if [ -e "$state/caches" ]; then old_caches=$(cat "$state/caches"); fi
{forget_guide}edit_registries merge "$current" "$address" "$ca_file" "$old_address" "$caches" "$old_caches" > "$work/registries"
registries_changed=no
if [ ! -e "$registries" ] || ! cmp -s "$work/registries" "$registries"; then
  # Recorded before the write, so a run cut short after it still restarts k3s later: the
  # pending restart carries the next generation, once, however often the write is retried.
  if [ ! -e "$state/restart-pending" ]; then
    generation=0
    if [ -e "$state/generation" ]; then generation=$(cat "$state/generation"); fi
    printf '%s\\n' "$((generation + 1))" > "$work/pending"
    replace_file "$state/restart-pending" 600 "$work/pending"
  fi
  # It may hold the registry's password: root only, whatever mode an older file had, from the
  # moment the content is there (the mode is set before the rename).
  replace_file "$registries" 600 "$work/registries" exact
  registries_changed=yes
fi
if [ "$(stat -c %a "$registries")" != 600 ]; then chmod 600 "$registries"; fi
replace_file "$state/written" 600 "$registries"
printf '%s\\n' "$address" > "$work/address"
replace_file "$state/address" 600 "$work/address"
printf '%s\\n' "$caches" > "$work/caches"
replace_file "$state/caches" 600 "$work/caches"
echo "registries.yaml: $registries_changed"
# The restart step's text carries this line: a new generation makes the engine run it.
if [ -s "$state/restart-pending" ]; then
  echo "{GENERATION_LINE}$(cat "$state/restart-pending")"
elif [ -e "$state/generation" ]; then
  echo "{GENERATION_LINE}$(cat "$state/generation")"
else
  echo "{GENERATION_LINE}0"
fi
"""
    )


# give_back_registries: registries.yaml as it was before this program, or minus this
# registry's entries if someone edited it since. Once done it forgets what it wrote (address,
# written, original), so a second call only tidies up; a due restart stays recorded.
_GIVE_BACK_FUNCTION = """\
give_back_registries() {
  if [ ! -e "$state/address" ]; then
    rm -f "$state/written" "$state/original" "$state/original-absent" "$state/caches"
    return 0
  fi
  if [ -e "$state/original" ] && [ -e "$registries" ] && cmp -s "$state/original" "$registries"; then
    # Given back already (by a run cut short after the write): at most its mode is left to do.
    chmod "$(stat -c %a "$state/original")" "$registries"
  elif [ -e "$state/written" ] && [ -e "$registries" ] && cmp -s "$state/written" "$registries"; then
    # Recorded before the write, so a run cut short after it still restarts k3s next time.
    : > "$state/restart-pending"
    if [ -e "$state/original-absent" ]; then
      rm -f "$registries"
    elif [ -e "$state/original" ]; then
      replace_file "$registries" "$(stat -c %a "$state/original")" "$state/original" exact
    fi
  elif [ -e "$registries" ]; then
    # Edited since we wrote it: keep those edits, take out only this registry's entries.
    written_caches=
    if [ -e "$state/caches" ]; then written_caches=$(cat "$state/caches"); fi
    edit_registries unmerge "$registries" "$address" "$written_caches" > "$work/without-current"
    edit_registries unmerge "$work/without-current" "$(cat "$state/address")" > "$work/registries"
    if [ -e "$state/original-absent" ] && [ ! -s "$work/registries" ]; then
      : > "$state/restart-pending"
      rm -f "$registries"
    elif ! cmp -s "$work/registries" "$registries"; then
      : > "$state/restart-pending"
      replace_file "$registries" 600 "$work/registries"
    fi
  fi
  # First what marks the file as ours: cut short after it, the next run only tidies up.
  rm -f "$state/address"
  rm -f "$state/written" "$state/original" "$state/original-absent" "$state/caches"
  echo "registries.yaml: given back"
}
# ... and k3s restarted to apply it (also a restart a cut-short run left due).
give_back_and_restart() {
  give_back_registries
  if [ -e "$state/restart-pending" ]; then
    restart_k3s
    rm -f "$state/restart-pending"
  fi
}
"""


def restart_script(target: NodeTarget, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT) -> str:
    """Applies new registry settings by restarting k3s, when the k3s step recorded a change."""
    return (
        _header(target, restart_function(target, restart, timeout_seconds))
        + f"""\
state={q(target.state_dir)}
if [ -e "$state/restart-pending" ]; then
  restart_k3s
  # The pending generation is now the one k3s runs with.
  mv -f "$state/restart-pending" "$state/generation"
else
  echo "registries.yaml unchanged since k3s last started: no restart"
fi
"""
    )


def restart_remove_script(
    target: NodeTarget, address: str, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
) -> str:
    """Takes the registry out of registries.yaml and restarts k3s; runs before the k3s step's delete."""
    return (
        _registries_common(target, restart_function(target, restart, timeout_seconds), _GIVE_BACK_FUNCTION)
        + f"""\
address={q(address)}
leave_if_owned_by_another
if [ ! -d "$state" ]; then
  echo "registries.yaml: nothing to undo"
  exit 0
fi
give_back_and_restart
"""
    )


def registries_remove_script(
    target: NodeTarget, address: str, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
) -> str:
    """Removes the CA file and what the node keeps for this program; gives registries.yaml back
    (and restarts) first if the restart step's delete has not (state from an older version)."""
    return (
        _registries_common(target, restart_function(target, restart, timeout_seconds), _GIVE_BACK_FUNCTION)
        + f"""\
address={q(address)}
leave_if_owned_by_another
rm -f "$ca_file"
remove_stale_temps "$ca_file"
remove_stale_temps "$registries"
if [ -d "$state" ]; then
  give_back_and_restart
  if [ -e "$state/created-config-dir" ]; then
    rmdir {q(K3S_CONFIG_DIR)} 2>/dev/null || true
    rmdir "$(dirname {q(K3S_CONFIG_DIR)})" 2>/dev/null || true
  fi
  rm -rf "$state"
else
  echo "registries.yaml: nothing to undo"
fi
release_step
"""
    )


def settings_generation(stdout: str) -> str:
    """The generation the k3s step printed (see registries_install_script); "" if none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(GENERATION_LINE):
            return line[len(GENERATION_LINE):].strip()
    return ""


# ----------------------------------------------------------------------------- running them

def as_command(script: str, user: str) -> str:
    """The command line pulumi-command sends: the script run by ``sh``, through sudo unless root.

    ``sudo -n`` fails at once instead of waiting for a password no one can type (no PTY).
    """
    command = f"sh -c {q(script)}"
    return command if user == "root" else f"sudo -n {command}"


def with_final_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
