"""Trust store: the registry's CA certificate in the node's OS trust store (and Java's, by its hook).

Only with osTrustStore: install adds it (with migrateFromGuide, first removing the manual
guide's key and certificate from the store), remove takes it out and rebuilds the store, probe
checks the file and the bundle. Without it (the default) install keeps our CA out of the store,
removing what an earlier `up` put there, and probe reports a CA found there as drift: k3s's
containerd trusts the registry through registries.yaml's ca_file (the k3s step), and a CA in the
OS store is trusted by every TLS client on the node for every name (pulumi-tls's certificates
carry no X.509 name constraints) while its private key is in the Pulumi state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from ..target import STATE_ROOT, NodeTarget

if TYPE_CHECKING:
    from ..plan import NodePlan

DEBIAN_ANCHORS = "/usr/local/share/ca-certificates"
REDHAT_ANCHORS = "/etc/pki/ca-trust/source/anchors"


def trust_store_detection(refuse_unknown_os: bool = True) -> str:
    """Sets ``anchors`` (empty: the OS store is not used here, ``skipped`` says why), ``bundle``,
    ``refresh_trust`` and ``announce_removal`` for the node's OS. An OS we do not know fails the
    install; with ``refuse_unknown_os`` false (nothing of ours can be in its store) it is skipped."""
    unknown_os = (
        """\
    supported="Debian, Ubuntu, Raspberry Pi OS, RHEL, Fedora, CentOS, Rocky and AlmaLinux (skipped: Alpine, SUSE)"
    fail "cannot install the registry certificate on $os_name: supported are $supported"
"""
        if refuse_unknown_os
        else """\
    anchors=
    # shellcheck disable=SC2034  # read by the scripts that include this detection
    skipped="trust store: nothing of ours on $os_name (no OS trust store of ours is used there)"
"""
    )
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
  *" alpine "*|*" suse "*|*" opensuse "*|*" sles "*)
    # Their stores' tools are not the ones tested here: the OS step is skipped, which k3s does
    # not need (containerd gets the CA from registries.yaml's ca_file, the k3s step).
    anchors=
    # shellcheck disable=SC2034  # read by the install and remove scripts only
    skipped="trust store: skipped on $os_name (not supported for the OS trust store); k3s and containerd \
trust the registry through registries.yaml; add the CA (pulumi stack output caCertificatePem) to the OS \
store yourself if other programs on this node need it"
    ;;
  *)
{unknown_os}    ;;
esac
"""


# On an OS whose store is skipped (anchors is empty): say so, and do nothing else.
SKIP_UNSUPPORTED_STORE = """if [ -z "$anchors" ]; then
  echo "$skipped"
  exit 0
fi
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


def guide_parts(target: NodeTarget, guide_hostname: str | None) -> tuple[str, str, str]:
    """With migrateFromGuide, the pieces an install takes the guide's files out with: the
    cleanup, the condition that a removal is pending, and its announcement after the rebuild
    (all empty without it)."""
    if not guide_hostname:
        return "", "", ""
    announce = """\
  if [ -e "$guide_pending" ]; then
    announce_removal registry.crt
    rm -f "$guide_pending"
  fi
"""
    return guide_trust_cleanup(target, guide_hostname), ' || [ -e "$guide_pending" ]', announce


def trust_install_script(target: NodeTarget, certificate_pem: str, guide_hostname: str | None = None) -> str:
    """Adds the registry's public certificate to the OS trust store.

    With ``guide_hostname`` (migrateFromGuide) it first removes the manual guide's leftovers.
    """
    cleanup, guide_pending, after_refresh = guide_parts(target, guide_hostname)
    return (
        header(target, REPLACE_FILE_FUNCTION, ownership(target, "trust"))
        + trust_store_detection()
        + "claim_step\n"
        + SKIP_UNSUPPORTED_STORE
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
        header(target, REPLACE_FILE_FUNCTION, ownership(target, "trust"))
        + trust_store_detection(refuse_unknown_os=False)
        + f"""\
leave_if_owned_by_another
if [ -z "$anchors" ]; then
  echo "$skipped"
  release_step
  exit 0
fi
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



def trust_probe_script(target: NodeTarget, certificate_pem: str) -> str:
    """In sync when the anchor file holds exactly the PEM the install script writes and the bundle has it.

    The OS detection is the install script's own, so probe and install agree on the paths; its
    helper functions (refresh_trust, announce_removal) are defined there but never called here.
    """
    pem = with_final_newline(certificate_pem)
    return (
        probe_header(target)
        + trust_store_detection()
        + 'if [ -z "$anchors" ]; then\n  report\n  exit 0\nfi\n'
        + f"anchor=\"$anchors/\"{q(target.anchor_file_name)}\n"
        + same_bytes_check("anchor", pem, "trust store: certificate file")
        + f"""\
if ! grep -qxF {q(signature_line(certificate_pem))} "$bundle" 2>/dev/null; then
  drift "trust store: the system bundle $bundle does not contain the certificate"
fi
report
"""
    )



TRUST_STORE_OFF = "osTrustStore is off: k3s trusts the registry through registries.yaml"


def trust_off_install_script(target: NodeTarget, guide_hostname: str | None = None) -> str:
    """Keeps our CA out of the OS trust store (osTrustStore off): takes out what an `up` with it
    on put there. With ``guide_hostname`` (migrateFromGuide) the manual guide's key and
    certificate leave the store too."""
    cleanup, guide_pending, announce_guide = guide_parts(target, guide_hostname)
    return (
        header(target, REPLACE_FILE_FUNCTION, ownership(target, "trust"))
        + trust_store_detection(refuse_unknown_os=False)
        + "claim_step\n"
        + SKIP_UNSUPPORTED_STORE
        + cleanup
        + f"""\
anchor="$anchors/"{q(target.anchor_file_name)}
# Recorded before the removal, so a run cut short before the rebuild still rebuilds next time.
pending={q(STATE_ROOT)}/{q(target.instance_id + "-trust.removing")}
remove_stale_temps "$anchor"
if [ -e "$anchor" ] || [ -e "$pending" ]{guide_pending}; then
  mkdir -p {q(STATE_ROOT)}
  ours=no
  if [ -e "$anchor" ] || [ -e "$pending" ]; then
    ours=yes
    : > "$pending"
    rm -f "$anchor"
  fi
  refresh_trust fresh
  if [ "$ours" = yes ]; then
    announce_removal {q(target.anchor_file_name)}
    echo "trust store: certificate removed ({TRUST_STORE_OFF})"
  fi
{announce_guide}  rm -f "$pending" {q(STATE_ROOT)}/{q(target.instance_id + "-trust.replacing")}
else
  echo "trust store: not used ({TRUST_STORE_OFF})"
fi
"""
    )


def trust_off_probe_script(target: NodeTarget) -> str:
    """In sync when our CA is not in the OS trust store (osTrustStore off)."""
    return (
        probe_header(target)
        + trust_store_detection(refuse_unknown_os=False)
        + 'if [ -z "$anchors" ]; then\n  report\n  exit 0\nfi\n'
        + f"""\
anchor="$anchors/"{q(target.anchor_file_name)}
if [ -e "$anchor" ]; then
  drift "trust store: $anchor holds a certificate of ours, but osTrustStore is off"
fi
report
"""
    )


def render(plan: NodePlan) -> dict[str, str]:
    target, pem = plan.target, plan.certificate_pem
    guide_hostname = plan.hostname if plan.migrate_from_guide else None
    if not plan.os_trust_store:
        return {
            "install": trust_off_install_script(target, guide_hostname),
            "remove": trust_remove_script(target),
            "probe": trust_off_probe_script(target),
        }
    return {
        "install": trust_install_script(target, pem, guide_hostname),
        "remove": trust_remove_script(target),
        "probe": trust_probe_script(target, pem),
    }


STEP = NodeStep("trust", render)
