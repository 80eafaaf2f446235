"""Restarting k3s on a node: it reads registries.yaml only when it starts.

Shared by the restart step (which applies a change) and the k3s step's remove (which gives the
file back and applies that); the unit is ``k3s`` on a server and ``k3s-agent`` on an agent, as
k3s's install.sh names them.
"""

from __future__ import annotations

from ..settings import DEFAULT_K3S_RESTART_TIMEOUT
from .shell import q
from .target import NodeTarget

SERVICE_FOR_ROLE = {"server": "k3s", "agent": "k3s-agent"}
K3S_CONTAINERD_ENDPOINT = "unix:///run/k3s/containerd/containerd.sock"
"""Where k3s's embedded containerd listens, whatever its data dir (k3s's --container-runtime-endpoint default)."""
DEFAULT_RESTART_TIMEOUT = DEFAULT_K3S_RESTART_TIMEOUT


def restart_function(target: NodeTarget, restart: bool, timeout_seconds: int = DEFAULT_RESTART_TIMEOUT) -> str:
    """Defines restart_k3s: k3s reads registries.yaml only when it starts.

    What k3s's install.sh makes, and so what this relies on (k3s-io/k3s install.sh, setup_env and
    create_systemd_service_file): the unit is ``k3s`` on a server and ``k3s-agent`` on an agent;
    under systemd it is Type=notify (an agent installed by an older install.sh: Type=exec) with
    TimeoutStartSec=0, so a blocking ``systemctl restart`` of a server waits for k3s without any
    limit, and pulumi-command has no timeout of its own. The restart is therefore queued
    (``--no-block``) and the wait is ours, bounded by ``timeout_seconds``: a new start of the unit
    (systemd's InvocationID changes), the unit active, and k3s answering: on a server the API's
    /readyz, on an agent its containerd (``k3s crictl info``; containerd is k3s's child and is
    restarted with it, reading the new configuration). k3s is looked up where the unit runs it
    (its ExecStart, or OpenRC's ``command``), then on PATH and in install.sh's BIN_DIR choices
    (/usr/local/bin, /opt/bin): sudo's secure_path on RHEL has no /usr/local/bin.

    A unit that does not exist fails the step, naming the role and the k3s units the node has;
    a unit that exists but is stopped (inactive or failed) is left alone: it reads the file when
    it starts.
    """
    service = SERVICE_FOR_ROLE[target.role]
    if not restart:
        return f"""\
restart_k3s() {{
  echo "registries.yaml changed; restartK3s is false, restart {service} yourself to apply it"
}}
"""
    if target.role == "server":
        readiness = """\
k3s_answers() {
  "$k3s" kubectl get --raw=/readyz >/dev/null 2>&1
}
what_answers="the Kubernetes API (/readyz)"
"""
    else:
        # k3s's own containerd socket, named: crictl's default config lives under the data dir,
        # which a node may have moved (--data-dir).
        readiness = f"""\
k3s_answers() {{
  "$k3s" crictl --runtime-endpoint {q(K3S_CONTAINERD_ENDPOINT)} info >/dev/null 2>&1
}}
what_answers="containerd (k3s crictl info)"
"""
    return f"""\
timeout={int(timeout_seconds)}
# Quoted: shellcheck reads a bare name with a dash as arithmetic (SC2100).
unit='{service}'
role='{target.role}'
init_system() {{
  if [ -d /run/systemd/system ]; then
    echo systemd
  elif command -v rc-service >/dev/null 2>&1; then
    echo openrc
  else
    fail "neither systemd nor OpenRC found; restart $unit by hand to apply registries.yaml"
  fi
}}
unit_exists() {{
  case $(init_system) in
    systemd) [ "$(systemctl show --property=LoadState --value "$unit")" = loaded ] ;;
    openrc) rc-service --exists "$unit" ;;
  esac
}}
k3s_units() {{
  case $(init_system) in
    systemd)
      systemctl list-unit-files --no-legend 'k3s*.service' | while read -r file _; do printf '%s ' "${{file%.service}}"; done
      ;;
    openrc) for file in /etc/init.d/k3s*; do if [ -e "$file" ]; then printf '%s ' "${{file##*/}}"; fi; done ;;
  esac
}}
# systemd's ActiveState; OpenRC knows started (active) or not.
unit_state() {{
  case $(init_system) in
    systemd) systemctl show --property=ActiveState --value "$unit" ;;
    openrc) if rc-service "$unit" status >/dev/null 2>&1; then echo active; else echo inactive; fi ;;
  esac
}}
unit_run() {{
  if [ "$(init_system)" = systemd ]; then systemctl show --property=InvocationID --value "$unit"; fi
}}
find_k3s() {{
  declared=
  case $(init_system) in
    systemd) declared=$(systemctl show --property=ExecStart --value "$unit" | sed -n 's/^{{ path=\\([^ ;]*\\) ;.*/\\1/p') ;;
    openrc) declared=$(sed -n 's/^command="\\(.*\\)"$/\\1/p' "/etc/init.d/$unit" 2>/dev/null || true) ;;
  esac
  for k3s in "$declared" "$(command -v k3s 2>/dev/null || true)" /usr/local/bin/k3s /opt/bin/k3s; do
    if [ -n "$k3s" ] && [ -x "$k3s" ]; then return 0; fi
  done
  fail "no k3s binary found (not in $unit's start command, on PATH, in /usr/local/bin or /opt/bin);\
 cannot tell when $unit is back"
}}
{readiness}came_back() {{
  if [ "$(unit_run)" = "$before" ] && [ -n "$before" ]; then missing="a new start of $unit"; return 1; fi
  if [ "$(unit_state)" != active ]; then missing="$unit to be active"; return 1; fi
  if ! k3s_answers; then missing=$what_answers; return 1; fi
}}
restart_k3s() {{
  if ! unit_exists; then
    found=$(k3s_units)
    found=${{found% }}
    fail "role $role restarts the unit $unit, which this node does not have (k3s units here: ${{found:-none}});\
 set the node's role to match its unit"
  fi
  case $(unit_state) in
    inactive|failed)
      echo "$unit is not running (stopped by its administrator); it reads registries.yaml when it starts"
      return 0
      ;;
  esac
  find_k3s
  before=$(unit_run)
  case $(init_system) in
    systemd) systemctl restart --no-block "$unit" || fail "systemctl restart $unit failed; see 'journalctl -u $unit'" ;;
    openrc) rc-service "$unit" restart || fail "rc-service $unit restart failed" ;;
  esac
  waited=0
  missing=
  until came_back; do
    [ "$waited" -lt "$timeout" ] \\
      || fail "$unit did not come back within $timeout s after the restart (still waiting for $missing);\
 see 'journalctl -u $unit'"
    sleep 1
    waited=$((waited + 1))
  done
  echo "$unit restarted, back after about $waited s"
}}
"""
