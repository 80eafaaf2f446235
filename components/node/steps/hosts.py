"""/etc/hosts: one managed line maps the registry's name to its address; nothing else is touched.

install writes our line first (with migrateFromGuide, dropping the guide's line for the name),
remove takes it out, probe checks there is exactly one and it is first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..shell import (
    REPLACE_FILE_FUNCTION,
    RESTORE_INTERRUPTED_FUNCTION,
    header,
    ownership,
    probe_header,
    q,
)
from ..step import NodeStep
from ..target import NodeTarget

if TYPE_CHECKING:
    from ..plan import NodePlan

HOSTS_FILE = "/etc/hosts"

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
        header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION,
                ownership(target, "hosts"))
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
        header(target, REPLACE_FILE_FUNCTION, RESTORE_INTERRUPTED_FUNCTION, _HOSTS_REWRITE_FUNCTION,
                ownership(target, "hosts"))
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



def hosts_probe_script(target: NodeTarget, hostname: str, ip_address: str) -> str:
    """In sync when exactly one line carries our marker, it is the first line and maps ip to hostname."""
    line = f"{ip_address}\t{hostname}\t{target.hosts_marker}"
    return (
        probe_header(target)
        + f"""\
hosts={q(HOSTS_FILE)}
marker={q(target.hosts_marker)}
expected_line={q(line)}
if [ ! -e "$hosts" ]; then
  drift "/etc/hosts is missing"
else
  managed=$(awk -v marker="$marker" '
    {{ n = length($0) - length(marker) + 1 }}
    n >= 1 && substr($0, n) == marker {{ count++ }}
    END {{ print count + 0 }}
  ' "$hosts")
  first_line=$(head -n 1 "$hosts")
  if [ "$managed" -eq 0 ]; then
    drift "/etc/hosts has no managed line"
  else
    if [ "$managed" -gt 1 ]; then
      drift "/etc/hosts has $managed managed lines instead of one"
    fi
    if ! grep -qxF "$expected_line" "$hosts"; then
      drift "/etc/hosts: the managed line maps another address or name"
    elif [ "$first_line" != "$expected_line" ]; then
      drift "/etc/hosts: the managed line is not the first line"
    fi
  fi
fi
report
"""
    )



def render(plan: NodePlan) -> dict[str, str]:
    target = plan.target
    return {
        "install": hosts_install_script(target, plan.hostname, plan.ip_address, plan.migrate_from_guide),
        "remove": hosts_remove_script(target),
        "probe": hosts_probe_script(target, plan.hostname, plan.ip_address),
    }


STEP = NodeStep("hosts", render)
