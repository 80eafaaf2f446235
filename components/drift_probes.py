"""Read-only shell probes: does one node step still hold what the program last applied?

pulumi-command cannot read a node back, so ``pulumi refresh`` alone never notices a deleted CA
file or an edited /etc/hosts line. Each probe here checks one step (trust, hosts, k3s) and
prints exactly one line: ``in-sync``, or ``drift: <reasons>`` naming WHAT drifted (never file
contents: registries.yaml can hold passwords). A probe that cannot judge (unsupported OS, no
python3 for the YAML) exits non-zero with a message on stderr, so a refresh fails loudly
instead of guessing.

Probes are POSIX ``sh`` with ``set -eu`` and write nothing on the node: no scratch files, the
expected bytes are piped into ``cmp``. Public expected values (certificate, names, paths) are
embedded; secrets (registry credentials) only arrive on stdin.
"""

from __future__ import annotations

from . import node_scripts
from .node_scripts import FAIL_FUNCTION, HOSTS_FILE, PREAMBLE, REGISTRIES_YAML, NodeTarget, q

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


def _probe_header(target: NodeTarget) -> str:
    """set -eu, the node name for fail(), and the findings helpers; no scratch directory (read-only)."""
    return PREAMBLE + f"node={q(target.node_name)}\n" + FAIL_FUNCTION + _FINDINGS_FUNCTIONS


def _same_bytes_check(path_variable: str, content: str, label: str) -> str:
    """Drift when the file is missing or not byte-identical to ``content`` (compared via a pipe, no temp file)."""
    return f"""\
if [ ! -e "${path_variable}" ]; then
  drift "{label} ${path_variable} is missing"
elif ! printf '%s' {q(content)} | cmp -s - "${path_variable}"; then
  drift "{label} ${path_variable} differs"
fi
"""


# ----------------------------------------------------------------------------- trust store

def trust_probe_script(target: NodeTarget, certificate_pem: str) -> str:
    """In sync when the anchor file holds exactly the PEM the install script writes and the bundle has it.

    The OS detection is the install script's own, so probe and install agree on the paths; its
    helper functions (refresh_trust, announce_removal) are defined there but never called here.
    """
    pem = node_scripts.with_final_newline(certificate_pem)
    return (
        _probe_header(target)
        + node_scripts.trust_store_detection()
        + f"anchor=\"$anchors/\"{q(target.anchor_file_name)}\n"
        + _same_bytes_check("anchor", pem, "trust store: certificate file")
        + f"""\
if ! grep -qxF {q(node_scripts.signature_line(certificate_pem))} "$bundle" 2>/dev/null; then
  drift "trust store: the system bundle $bundle does not contain the certificate"
fi
report
"""
    )


# ----------------------------------------------------------------------------- /etc/hosts

def hosts_probe_script(target: NodeTarget, hostname: str, ip_address: str) -> str:
    """In sync when exactly one line carries our marker, it is the first line and maps ip to hostname."""
    line = f"{ip_address}\t{hostname}\t{target.hosts_marker}"
    return (
        _probe_header(target)
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


# ----------------------------------------------------------------------------- k3s registries.yaml

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


def mirror_findings(document, name, address):
    mirror = entry(document, "mirrors", name)
    if mirror is None:
        return ["registries.yaml has no mirror for " + name]
    if mirror != {"endpoint": ["https://" + address]}:
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
            found += mirror_findings(document, cache["upstream"], cache["address"])
            found += config_findings(document, cache["address"], ca_file, auth)
    if found:
        print("; ".join(found))


main(*sys.argv[1:5])
'''


def registries_probe_script(
    target: NodeTarget, address: str, ca_pem: str, caches: tuple[tuple[str, str], ...] = ()
) -> str:
    """In sync when k3s's CA file holds the PEM and registries.yaml has our mirror and configs entry.

    Expected credentials (if the step sets any) must be given to the probe on stdin, as the
    JSON the registries editor reads; they never appear in this text.
    """
    return (
        _probe_header(target)
        + f"""\
ca_file={q(target.k3s_ca_file)}
registries={q(REGISTRIES_YAML)}
address={q(address)}
caches={q(node_scripts.caches_json(caches))}
"""
        + _same_bytes_check("ca_file", node_scripts.with_final_newline(ca_pem), "k3s: CA file")
        + f"""\
if [ ! -e "$registries" ]; then
  drift "registries.yaml is missing"
else
  needs={q("checking registries.yaml " + node_scripts.NEEDS_PYYAML)}
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
