"""Restarting k3s on a node: it reads registries.yaml only when it starts.

Shared by the restart step (which applies a change) and the k3s step's remove (which gives the
file back and applies that); the unit is ``k3s`` on a server and ``k3s-agent`` on an agent, as
k3s's install.sh names them.
"""

from __future__ import annotations

from ..settings import DEFAULT_K3S_RESTART_TIMEOUT
from .target import NodeTarget

SERVICE_FOR_ROLE = {"server": "k3s", "agent": "k3s-agent"}
DEFAULT_RESTART_TIMEOUT = DEFAULT_K3S_RESTART_TIMEOUT


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

