"""k3s registries.yaml: the registry (and its pull-through caches) as mirrors, with our CA file.

install merges our entries into the file (the editor, registries_edit.py, runs on the node with
python3 and PyYAML) and records that a restart is due; remove gives the file back as it was
before this program, or minus our entries when someone edited it since; probe checks the CA
file and our entries. Credentials, when there are any, travel on stdin, never in the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..k3s_service import DEFAULT_RESTART_TIMEOUT, SERVICE_FOR_ROLE, restart_function
from ..shell import (
    REPLACE_FILE_FUNCTION,
    header,
    ownership,
    probe_header,
    q,
    same_bytes_check,
    with_final_newline,
)
from ..step import NodeStep
from ..target import K3S_CONFIG_DIR, NodeTarget

if TYPE_CHECKING:
    from ..plan import NodePlan

REGISTRIES_YAML = f"{K3S_CONFIG_DIR}/registries.yaml"
REGISTRIES_EDITOR_SOURCE = Path(__file__).with_name("registries_edit.py").read_text(encoding="utf-8")
NEEDS_PYYAML = "needs python3 with PyYAML (apt install python3-yaml, dnf install python3-pyyaml)"
"""What a node without PyYAML is told (registries.yaml is read and written with it)."""
GENERATION_LINE = "k3s settings generation: "


def registries_common(target: NodeTarget, *functions: str) -> str:
    return (
        header(target, REPLACE_FILE_FUNCTION, ownership(target, "k3s"), *functions)
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


def caches_json(caches: tuple[tuple[str, str], ...], anonymous: tuple[str, ...] = ()) -> str:
    """The pull-through caches as the registries editor takes them: [{upstream, address}], and
    ``"anonymous": true`` on a cache nodes read without credentials."""
    return json.dumps(
        [{"upstream": upstream, "address": address, **({"anonymous": True} if address in anonymous else {})}
         for upstream, address in caches],
        sort_keys=True,
    )


def registries_install_script(
    target: NodeTarget,
    address: str,
    ca_pem: str,
    guide_hostname: str | None = None,
    caches: tuple[tuple[str, str], ...] = (),
    anonymous_caches: tuple[str, ...] = (),
) -> str:
    """Points k3s at the registry: a mirror and a configs entry keyed host:port, with our CA file.

    It does not restart k3s: it records that a restart is due, and the restart step applies
    it once the registry is in place (see restart_script). Every change of the file raises the
    generation it prints, which is how the restart step knows to run.
    Credentials, when there are any, are read from stdin by the editor, never from the text.
    With ``guide_hostname`` (migrateFromGuide) the manual guide's configs entry for that bare
    host name goes, from the file and from the copy kept to give back on destroy.
    ``caches``: (upstream, host:port) of each pull-through cache: ``mirrors.<upstream>`` points
    there, with the same CA and credentials (none for the ``anonymous_caches``: containerd would
    send a pod's pull secret to them instead). A cache dropped from the list is taken out again;
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
        registries_common(target)
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
caches={q(caches_json(caches, anonymous_caches))}
old_caches=
if [ -e "$state/caches" ]; then old_caches=$(cat "$state/caches"); fi
# k3s reads another file when its config says so (--private-registry): this one would not apply.
elsewhere=$(edit_registries private-registry {q(K3S_CONFIG_DIR)}/config.yaml {q(K3S_CONFIG_DIR)}/config.yaml.d/*.yaml)
# A flag on k3s's command line wins over its config (install.sh's INSTALL_K3S_EXEC puts flags
# into the unit: systemd's ExecStart, OpenRC's command_args).
unit='{SERVICE_FOR_ROLE[target.role]}'
if [ -d /run/systemd/system ]; then
  unit_command=$(systemctl show --property=ExecStart --value "$unit" 2>/dev/null || true)
else
  unit_command=$(cat "/etc/init.d/$unit" 2>/dev/null || true)
fi
flagged=$(printf '%s\\n' "$unit_command" | sed -n 's/.*--private-registry[= ]\\{{1,\\}}\\([^ ;"]*\\).*/\\1/p' | head -n 1)
elsewhere=${{flagged:-$elsewhere}}
if [ -n "$elsewhere" ] && [ "$elsewhere" != "$registries" ]; then
  fail "k3s here reads its registries from $elsewhere (private-registry in its config or unit), not $registries; \
remove private-registry from the k3s config or unit, or point it at $registries"
fi
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
GIVE_BACK_FUNCTION = """\
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



def registries_remove_script(
    target: NodeTarget, address: str, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT
) -> str:
    """Removes the CA file and what the node keeps for this program; gives registries.yaml back
    (and restarts) first if the restart step's delete has not (state from an older version)."""
    return (
        registries_common(target, restart_function(target, restart, timeout_seconds), GIVE_BACK_FUNCTION)
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



# ----------------------------------------------------------------------------- probe

# Runs on the node (python3 -c): standard library and PyYAML only, Python 3.6 syntax (RHEL 8).
# Prints its findings on one line ("; " between them), never a value from the file. Expected
# credentials, if any, arrive on stdin as {"username", "password"} (the editor's format); {} or
# nothing means none.
REGISTRIES_CHECKER_SOURCE = '''\
import json
import sys

try:
    import yaml
except ImportError:
    sys.exit(3)


def load(path):
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError):
        return None, "registries.yaml is not readable"
    except yaml.YAMLError:
        return None, "registries.yaml is not valid YAML"
    if document is None:
        return {}, None
    if not isinstance(document, dict):
        return None, "registries.yaml does not hold a mapping"
    return document, None


def entry(document, section, address):
    entries = document.get(section)
    return entries.get(address) if isinstance(entries, dict) else None


def mirror_findings(document, name, address, others=()):
    """``others``: keys of someone else's entry we added our endpoint to (a cache's upstream)."""
    mirror = entry(document, "mirrors", name)
    if mirror is None:
        return ["registries.yaml has no mirror for " + name]
    ours = isinstance(mirror, dict) and mirror.get("endpoint") == ["https://" + address]
    if not ours or set(mirror) - {"endpoint"} - set(others):
        return ["registries.yaml: the mirror for " + name + " is not https://" + address + " alone"]
    return []


def config_findings(document, address, ca_file, auth):
    config = entry(document, "configs", address)
    if config is None:
        return ["registries.yaml has no configs entry for " + address]
    if not isinstance(config, dict):
        return ["registries.yaml: configs." + address + " is not a mapping"]
    found = []
    if config.get("tls") != {"ca_file": ca_file}:
        found.append("registries.yaml: configs." + address + ".tls is not ca_file " + ca_file + " alone")
    expected_auth = {"username": auth["username"], "password": auth["password"]} if auth else None
    if config.get("auth") != expected_auth:
        if expected_auth is None:
            found.append("registries.yaml: configs." + address + " has credentials this program did not set")
        elif config.get("auth") is None:
            found.append("registries.yaml: configs." + address + " has no credentials")
        else:
            found.append("registries.yaml: configs." + address + " has other credentials")
    if set(config) - {"tls", "auth"}:
        found.append("registries.yaml: configs." + address + " has settings this program does not write")
    return found


def main(path, address, ca_file, caches="[]"):
    auth = json.loads(sys.stdin.read() or "{}")
    document, problem = load(path)
    if problem:
        found = [problem]
    else:
        found = mirror_findings(document, address, address) + config_findings(document, address, ca_file, auth)
        for cache in json.loads(caches):
            found += mirror_findings(document, cache["upstream"], cache["address"], ("rewrite",))
            found += config_findings(document, cache["address"], ca_file, None if cache.get("anonymous") else auth)
    if found:
        print("; ".join(found))


main(*sys.argv[1:5])
'''


def registries_probe_script(
    target: NodeTarget, address: str, ca_pem: str, caches: tuple[tuple[str, str], ...] = (),
    anonymous_caches: tuple[str, ...] = (),
) -> str:
    """In sync when k3s's CA file holds the PEM and registries.yaml has our mirror and configs entry.

    Expected credentials (if the step sets any) must be given to the probe on stdin, as the
    JSON the registries editor reads; they never appear in this text.
    """
    return (
        probe_header(target)
        + f"""\
ca_file={q(target.k3s_ca_file)}
registries={q(REGISTRIES_YAML)}
address={q(address)}
caches={q(caches_json(caches, anonymous_caches))}
"""
        + same_bytes_check("ca_file", with_final_newline(ca_pem), "k3s: CA file")
        + f"""\
if [ ! -e "$registries" ]; then
  drift "registries.yaml is missing"
else
  needs={q("checking registries.yaml " + NEEDS_PYYAML)}
  command -v python3 >/dev/null 2>&1 || fail "$needs"
  # shellcheck disable=SC2016  # Python source, kept literal on purpose
  checker={q(REGISTRIES_CHECKER_SOURCE)}
  # One interpreter start (it is most of a refresh's time on the node): exit 3 means no PyYAML.
  if findings=$(python3 -c "$checker" "$registries" "$address" "$ca_file" "$caches"); then
    if [ -n "$findings" ]; then
      drift "$findings"
    fi
  elif [ "$?" -eq 3 ]; then
    fail "$needs"
  else
    fail "python3 failed on registries.yaml; $needs"
  fi
fi
report
"""
    )


def render(plan: NodePlan) -> dict[str, str]:
    target, pem = plan.target, plan.certificate_pem
    restart = (plan.restart_k3s, plan.restart_timeout_seconds)
    return {
        "install": registries_install_script(target, plan.address, pem,
                                             plan.hostname if plan.migrate_from_guide else None, plan.caches,
                                             plan.anonymous_caches),
        "remove": registries_remove_script(target, plan.address, *restart),
        "probe": registries_probe_script(target, plan.address, pem, plan.caches, plan.anonymous_caches),
    }


STEP = NodeStep("k3s", render, reads_credentials=True)
