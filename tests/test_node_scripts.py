"""The node scripts as text (POSIX sh, shellcheck-clean, nothing secret) and their edge cases."""

import subprocess

import pytest
import yaml

from components.node.shell import as_command
from components.node.steps import hosts, registries, restart, trust
from components.node.steps.registries_edit import EditError, merge, unmerge
from components.node.target import NodeTarget

from harness import GUIDE_CONFIG, evaluate
from testbed.certs import self_signed_cert
from testbed.sshexec import ssh_run
from testbed.sshnodes import K3S_AGENT, K3S_SERVER, RHEL_SECURE_PATH, Unit, start_node

# The owner is a URN: `$` and `::` must survive the quoting.
OWNER = "urn:pulumi:dev::k3s-registry::k3s-registry:index:ClusterNodes$k3s-registry:index:NodeConfiguration::nodes-cube01"
TARGET = NodeTarget(node_name="cube01", role="agent", instance_id="k3s-registry-dev", owner=OWNER)
SERVER = NodeTarget(node_name="control01", role="server", instance_id="k3s-registry-dev", owner=OWNER)
ADDRESS = "registry.cube.local:5000"


@pytest.fixture(scope="module")
def certificate_pem():
    return evaluate(GUIDE_CONFIG).outputs["caCertificatePem"]


@pytest.fixture(scope="module")
def scripts(certificate_pem):
    return {
        "trust install": trust.trust_install_script(TARGET, certificate_pem),
        "trust remove": trust.trust_remove_script(TARGET),
        "trust probe": trust.trust_probe_script(TARGET, certificate_pem),
        "hosts install": hosts.hosts_install_script(TARGET, "registry.cube.local", "192.168.0.202"),
        "hosts remove": hosts.hosts_remove_script(TARGET),
        "k3s install": registries.registries_install_script(TARGET, ADDRESS, certificate_pem),
        "k3s remove": registries.registries_remove_script(TARGET, ADDRESS, restart=True),
        "restart": restart.restart_script(TARGET, restart=True, timeout_seconds=5),
        "restart server": restart.restart_script(SERVER, restart=True, timeout_seconds=5),
        "restart, turned off": restart.restart_script(TARGET, restart=False),
        "restart remove": restart.restart_remove_script(TARGET, ADDRESS, restart=True, timeout_seconds=5),
    }


def test_every_script_is_shellcheck_clean_posix_sh(scripts):
    for name, script in scripts.items():
        result = subprocess.run(
            ["shellcheck", "--shell=sh", "--severity=style", "-"], input=script.encode(), capture_output=True,
            check=False,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout.decode()}"


def test_shellcheck_would_catch_a_problem():
    result = subprocess.run(["shellcheck", "--shell=sh", "-"], input=b"set -eu\necho $1 [[ x ]]\n", capture_output=True,
                            check=False)
    assert result.returncode != 0


def test_every_script_stops_at_the_first_error(scripts):
    for name, script in scripts.items():
        assert script.startswith("set -eu\n"), name


def test_scripts_carry_the_certificate_and_never_a_key(scripts, certificate_pem):
    assert certificate_pem.strip() in scripts["trust install"]
    assert certificate_pem.strip() in scripts["k3s install"]
    for name, script in scripts.items():
        assert "PRIVATE KEY" not in script, name


def test_k3s_restart_is_left_to_the_user_when_turned_off(scripts):
    assert "systemctl restart" in scripts["restart"]
    assert "systemctl restart" not in scripts["restart, turned off"]
    assert "restart k3s-agent yourself" in scripts["restart, turned off"]


def test_the_settings_step_never_restarts_k3s_itself(scripts):
    # It reads the unit's command line (a --private-registry flag), and never restarts anything.
    assert "systemctl restart" not in scripts["k3s install"] and "rc-service" not in scripts["k3s install"]
    assert "restart_k3s" not in scripts["k3s install"]


def test_a_server_waits_for_the_kubernetes_api_and_an_agent_for_its_containerd(scripts):
    assert '"$k3s" kubectl get --raw=/readyz' in scripts["restart server"]
    assert "readyz" not in scripts["restart"]
    assert '"$k3s" crictl --runtime-endpoint unix:///run/k3s/containerd/containerd.sock info' in scripts["restart"]
    # Never a blocking restart: k3s's units have TimeoutStartSec=0.
    for script in (scripts["restart server"], scripts["restart"]):
        assert 'systemctl restart --no-block "$unit"' in script and "systemctl restart k3s" not in script


def test_sudo_is_used_only_for_non_root_users():
    assert as_command("echo hi", "root") == "sh -c 'echo hi'"
    assert as_command("echo hi", "ubuntu") == "sudo -n sh -c 'echo hi'"


# ------------------------------------------------------------------ registries.yaml editing

EXISTING = """mirrors:
  docker.io:
    endpoint: ["https://mirror.cube.local"]
configs:
  mirror.cube.local:
    auth: {username: pull, password: s3cret}
"""


def test_merge_adds_mirror_and_ca_keyed_with_port_and_keeps_other_entries():
    document = yaml.safe_load(merge(EXISTING, ADDRESS, "/etc/rancher/k3s/ca.crt"))
    assert document["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.cube.local"]}
    assert document["configs"]["mirror.cube.local"]["auth"]["password"] == "s3cret"
    assert document["mirrors"][ADDRESS] == {"endpoint": [f"https://{ADDRESS}"]}
    assert document["configs"][ADDRESS] == {"tls": {"ca_file": "/etc/rancher/k3s/ca.crt"}}


def test_merge_is_idempotent_and_unmerge_takes_out_only_ours():
    once = merge(EXISTING, ADDRESS, "/ca.crt")
    assert merge(once, ADDRESS, "/ca.crt") == once
    assert yaml.safe_load(unmerge(once, ADDRESS)) == yaml.safe_load(EXISTING)


def test_merge_moves_the_entry_when_the_address_changes():
    moved = yaml.safe_load(merge(merge("", ADDRESS, "/ca.crt"), "registry.cube.local:5443", "/ca.crt", ADDRESS))
    assert list(moved["mirrors"]) == ["registry.cube.local:5443"]
    assert list(moved["configs"]) == ["registry.cube.local:5443"]


def test_unmerge_of_our_only_entries_leaves_an_empty_file():
    assert unmerge(merge("", ADDRESS, "/ca.crt"), ADDRESS) == ""


def test_a_broken_file_is_reported_without_quoting_it():
    with pytest.raises(EditError) as error:
        merge("configs:\n  r:\n    auth: {password: hunter2\n", ADDRESS, "/ca.crt")
    assert "not valid YAML at line" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_a_file_that_is_not_a_mapping_is_refused():
    with pytest.raises(EditError, match="mapping"):
        merge("- just\n- a list\n", ADDRESS, "/ca.crt")


# ------------------------------------------------------------------ on a real host

@pytest.fixture(scope="module")
def odd_node(client_key, tmp_path_factory):
    # Both units, so the agent's and the server's scripts can each run here.
    node = start_node("odd", "127.0.0.21", tmp_path_factory.mktemp("odd"),
                      hosts_content=b"127.0.0.1 localhost odd\n", authorized_pubkey=client_key.public_key_line,
                      units=(K3S_SERVER, K3S_AGENT))
    yield node
    node.stop()


def run(node, script, client_key):
    return ssh_run(node, as_command(script, "root"), pkey=client_key.pkey())


def with_os_release(node, content: str):
    node.run_local(["sh", "-c", f"rm -f /etc/os-release && printf '%s' '{content}' > /etc/os-release"])


def restore_os_release(node):
    node.run_local(["sh", "-c", "rm -f /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release"])


def test_an_unknown_os_fails_naming_the_node_and_the_os(odd_node, client_key, scripts):
    with_os_release(odd_node, 'ID=nixos\nPRETTY_NAME="NixOS 24.11"\n')
    try:
        status, _, stderr = run(odd_node, scripts["trust install"], client_key)
    finally:
        restore_os_release(odd_node)
    assert status == 1
    assert b"k3s-registry: node cube01: cannot install the registry certificate on NixOS 24.11" in stderr
    assert not odd_node.exists("/usr/local/share/ca-certificates/k3s-registry-k3s-registry-dev.crt")


@pytest.mark.parametrize("os_release", [
    'ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n',
    'ID="opensuse-leap"\nID_LIKE="suse opensuse"\nPRETTY_NAME="openSUSE Leap 15.6"\n',
    'ID="sles"\nID_LIKE="suse"\nPRETTY_NAME="SUSE Linux Enterprise Server 15 SP6"\n',
])
def test_on_alpine_and_suse_the_os_store_is_skipped_saying_why(odd_node, client_key, scripts, os_release):
    """Their nodes are not refused (k3s gets the CA through registries.yaml); nothing is
    written to a store whose tools are not the ones tested, and the probe has nothing to miss."""
    with_os_release(odd_node, os_release)
    before = odd_node.snapshot(["/usr/local/share/ca-certificates", "/etc/ssl/certs"])
    try:
        status, stdout, stderr = run(odd_node, scripts["trust install"], client_key)
        assert status == 0, stderr
        assert b"trust store: skipped on " in stdout and b"trust the registry through registries.yaml" in stdout
        assert run(odd_node, scripts["trust probe"], client_key)[1] == b"in-sync\n"
        status, stdout, _ = run(odd_node, scripts["trust remove"], client_key)
        assert status == 0 and b"trust store: skipped on " in stdout
    finally:
        restore_os_release(odd_node)
    assert odd_node.snapshot(["/usr/local/share/ca-certificates", "/etc/ssl/certs"]) == before


def test_a_node_without_pyyaml_fails_with_the_package_to_install(odd_node, client_key, scripts):
    hidden = odd_node.run_local(["mount", "--bind", "/bin/false", "/usr/bin/python3"])
    assert hidden.returncode == 0, hidden.stderr
    try:
        status, _, stderr = run(odd_node, scripts["k3s install"], client_key)
    finally:
        odd_node.run_local(["umount", "/usr/bin/python3"])
    assert status == 1
    assert b"needs python3 with PyYAML (apt install python3-yaml" in stderr
    assert not odd_node.exists("/etc/rancher/k3s/registries.yaml")
    run(odd_node, scripts["k3s remove"], client_key)


def test_a_restart_lost_to_a_failed_run_happens_on_the_next_run(odd_node, client_key, scripts):
    """If systemctl fails after registries.yaml was written, the next `up` still restarts k3s."""
    odd_node.clear_restart_log()
    status, stdout, _ = run(odd_node, scripts["k3s install"], client_key)
    assert status == 0 and b"registries.yaml: yes" in stdout
    odd_node.run_local(["sh", "-c", ("mv /usr/local/sbin/systemctl /usr/local/sbin/systemctl.real && "
                        "printf '#!/bin/sh\\n[ \"$1\" = restart ] && exit 1\\nexec /usr/local/sbin/systemctl.real \"$@\"\\n' "
                        "> /usr/local/sbin/systemctl && "
                        "chmod +x /usr/local/sbin/systemctl")])
    try:
        status, _, stderr = run(odd_node, scripts["restart"], client_key)
    finally:
        odd_node.run_local(["mv", "/usr/local/sbin/systemctl.real", "/usr/local/sbin/systemctl"])
    assert status != 0
    assert b"k3s-registry: node cube01: systemctl restart k3s-agent failed" in stderr
    status, stdout, _ = run(odd_node, scripts["k3s install"], client_key)
    assert status == 0 and b"registries.yaml: no" in stdout
    status, stdout, stderr = run(odd_node, scripts["restart"], client_key)
    assert status == 0, stderr
    assert b"k3s-agent restarted" in stdout
    assert [line for line in odd_node.restart_log() if "restart" in line.split()] == ["restart --no-block k3s-agent"]
    status, stdout, _ = run(odd_node, scripts["restart"], client_key)
    assert b"no restart" in stdout
    run(odd_node, scripts["restart remove"], client_key)
    run(odd_node, scripts["k3s remove"], client_key)


def test_a_k3s_that_does_not_come_back_fails_naming_the_node_and_the_unit(odd_node, client_key, scripts):
    run(odd_node, scripts["k3s install"], client_key)
    odd_node.set_unit("k3s-agent", "broken")
    try:
        status, _, stderr = run(odd_node, scripts["restart"], client_key)
    finally:
        odd_node.set_unit("k3s-agent", "active")
    assert status == 1
    assert (b"k3s-registry: node cube01: k3s-agent did not come back within 5 s after the restart "
            b"(still waiting for containerd (k3s crictl info))") in stderr
    assert run(odd_node, scripts["restart"], client_key)[0] == 0, "the restart is still due, and retried"
    run(odd_node, scripts["restart remove"], client_key)
    run(odd_node, scripts["k3s remove"], client_key)


def test_a_k3s_stopped_by_its_administrator_is_not_started(odd_node, client_key, scripts):
    odd_node.clear_restart_log()
    run(odd_node, scripts["k3s install"], client_key)
    odd_node.set_unit("k3s-agent", "inactive")
    try:
        status, stdout, _ = run(odd_node, scripts["restart"], client_key)
    finally:
        odd_node.set_unit("k3s-agent", "active")
    assert status == 0 and b"k3s-agent is not running" in stdout
    assert [line for line in odd_node.restart_log() if "restart" in line.split()] == []
    run(odd_node, scripts["restart remove"], client_key)
    run(odd_node, scripts["k3s remove"], client_key)


def test_a_server_waits_until_the_unit_is_back_and_the_api_answers(odd_node, client_key, scripts):
    server_scripts = {
        "k3s install": registries.registries_install_script(SERVER, ADDRESS, scripts_pem(scripts)),
        "restart": scripts["restart server"],
    }
    odd_node.set_restart_seconds(1.5)
    try:
        run(odd_node, server_scripts["k3s install"], client_key)
        status, stdout, stderr = run(odd_node, server_scripts["restart"], client_key)
    finally:
        odd_node.set_restart_seconds(0)
    assert status == 0, stderr
    events = [(unit, event) for _, unit, event in odd_node.timeline()]
    assert events[-2:] == [("k3s", "down"), ("k3s", "up")]
    assert b"k3s restarted, back after about" in stdout
    run(odd_node, restart.restart_remove_script(SERVER, ADDRESS, restart=False), client_key)
    run(odd_node, registries.registries_remove_script(SERVER, ADDRESS, restart=False), client_key)


def scripts_pem(scripts) -> str:
    text = scripts["trust install"]
    return text[text.index("-----BEGIN CERTIFICATE-----"):text.index("-----END CERTIFICATE-----")] + "-----END CERTIFICATE-----\n"


# ------------------------------------------------------------------ pull-through caches in registries.yaml

CACHES = [{"upstream": "docker.io", "address": "registry.cube.local:5001"},
          {"upstream": "ghcr.io", "address": "registry.cube.local:5002"}]
AUTH = {"username": "registry", "password": "pw"}


def test_each_cache_is_the_mirror_of_its_upstream_with_our_ca_and_credentials():
    document = yaml.safe_load(merge("", ADDRESS, "/ca.crt", None, AUTH, CACHES))
    assert document["mirrors"]["docker.io"] == {"endpoint": ["https://registry.cube.local:5001"]}
    assert document["mirrors"]["ghcr.io"] == {"endpoint": ["https://registry.cube.local:5002"]}
    for address in ("registry.cube.local:5001", "registry.cube.local:5002", ADDRESS):
        assert document["configs"][address] == {"tls": {"ca_file": "/ca.crt"}, "auth": AUTH}


def test_merging_again_changes_nothing_and_a_dropped_cache_leaves_exactly_its_entries():
    text = merge("mirrors:\n  quay.io:\n    endpoint: [https://quay.lab.test]\n", ADDRESS, "/ca.crt", None, AUTH, CACHES)
    assert merge(text, ADDRESS, "/ca.crt", None, AUTH, CACHES, CACHES) == text
    fewer = yaml.safe_load(merge(text, ADDRESS, "/ca.crt", None, AUTH, CACHES[:1], CACHES))
    assert "ghcr.io" not in fewer["mirrors"] and "registry.cube.local:5002" not in fewer["configs"]
    assert fewer["mirrors"]["quay.io"] == {"endpoint": ["https://quay.lab.test"]}
    assert fewer["mirrors"]["docker.io"] == {"endpoint": ["https://registry.cube.local:5001"]}


def test_a_mirror_of_the_same_upstream_that_we_did_not_write_is_a_conflict_named_not_overwritten():
    theirs = "mirrors:\n  docker.io:\n    endpoint: [https://mirror.lab.test]\n"
    with pytest.raises(EditError, match=r"already has a mirror for docker\.io that this program did not write"):
        merge(theirs, ADDRESS, "/ca.crt", None, AUTH, CACHES)


def test_unmerge_takes_out_the_registry_and_its_caches_only():
    text = merge("mirrors:\n  quay.io:\n    endpoint: [https://quay.lab.test]\n", ADDRESS, "/ca.crt", None, AUTH, CACHES)
    assert yaml.safe_load(unmerge(text, ADDRESS, CACHES)) == {"mirrors": {"quay.io": {"endpoint": ["https://quay.lab.test"]}}}


def test_with_auth_off_the_caches_get_the_ca_and_no_credentials():
    document = yaml.safe_load(merge("", ADDRESS, "/ca.crt", None, {}, CACHES))
    assert document["configs"]["registry.cube.local:5001"] == {"tls": {"ca_file": "/ca.crt"}}


# ------------------------------------------------------------------ the trust store rebuild

def test_the_trust_store_is_rebuilt_from_scratch_only_when_a_certificate_leaves_it(odd_node, client_key, scripts):
    """A first install adds (a plain run: a third of the time); a rotation and a removal take a
    certificate out of the store, which only a fresh rebuild does completely (links, Java's keystore)."""
    calls = "/run/update-ca-certificates.calls"
    wrapper = (f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {calls}\n"
               "exec /run/update-ca-certificates.real \"$@\"\n")
    odd_node.write_file("/run/update-ca-certificates.wrapper", wrapper.encode())
    setup = odd_node.run_local(["sh", "-c", ("cp /usr/sbin/update-ca-certificates /run/update-ca-certificates.real && "
                                f"chmod +x /run/update-ca-certificates.wrapper && : > {calls} && "
                                "mount --bind /run/update-ca-certificates.wrapper /usr/sbin/update-ca-certificates")])
    assert setup.returncode == 0, setup.stderr
    rotated = trust.trust_install_script(TARGET, self_signed_cert("registry.rotated.test").cert_pem.decode())
    anchor = "/usr/local/share/ca-certificates/k3s-registry-k3s-registry-dev.crt"

    def step(script: str) -> list[str]:
        before = (odd_node.read_file(calls) or b"").decode().splitlines()
        status, _, stderr = run(odd_node, script, client_key)
        assert status == 0, stderr
        return (odd_node.read_file(calls) or b"").decode().splitlines()[len(before):]

    try:
        assert step(scripts["trust install"]) == [""], "a first install adds: plain run"
        assert step(scripts["trust install"]) == [], "nothing changed: no rebuild"
        assert step(rotated) == ["--fresh"], "the old certificate leaves: fresh rebuild"
        assert not odd_node.exists("/var/lib/k3s-registry/k3s-registry-dev-trust.replacing")
        odd_node.remove(anchor)
        assert step(rotated) == [""], "put back after someone deleted it: plain run"
        assert step(scripts["trust remove"]) == ["--fresh"], "removal: fresh rebuild"
        assert not odd_node.exists(anchor)
    finally:
        odd_node.run_local(["umount", "/usr/sbin/update-ca-certificates"])
        step_back = run(odd_node, scripts["trust remove"], client_key)
        assert step_back[0] == 0, step_back[2]


def test_a_rotation_cut_short_before_the_rebuild_still_rebuilds_from_scratch(odd_node, client_key, scripts):
    """The rewrite of our certificate is recorded first: the next run knows a certificate left."""
    run(odd_node, scripts["trust install"], client_key)
    rotated = trust.trust_install_script(TARGET, self_signed_cert("registry.rotated.test").cert_pem.decode())
    cut_short = rotated.replace("  if [ -e \"$replacing\" ]", "  exit 7\n  if [ -e \"$replacing\" ]", 1)
    assert cut_short != rotated
    assert run(odd_node, cut_short, client_key)[0] == 7
    assert odd_node.exists("/var/lib/k3s-registry/k3s-registry-dev-trust.replacing")
    status, stdout, stderr = run(odd_node, rotated, client_key)
    assert status == 0, stderr
    assert b"certificate installed" in stdout
    assert not odd_node.exists("/var/lib/k3s-registry/k3s-registry-dev-trust.replacing")
    run(odd_node, scripts["trust remove"], client_key)
    assert not odd_node.exists("/var/lib/k3s-registry")


# ------------------------------------------------------------------ the k3s units as install.sh makes them

def restart_once(node, target, client_key, *, timeout=3, user="root"):
    """The k3s step then the restart step for ``target`` on ``node``; then the node given back."""
    pem = self_signed_cert("k3s-registry-test-ca").cert_pem.decode()
    try:
        assert ssh_run(node, as_command(registries.registries_install_script(target, ADDRESS, pem), user),
                       user=user, pkey=client_key.pkey())[0] == 0
        return ssh_run(node, as_command(restart.restart_script(target, True, timeout), user), user=user,
                       pkey=client_key.pkey(), timeout=60)
    finally:
        for script in (restart.restart_remove_script(target, ADDRESS, restart=False),
                       registries.registries_remove_script(target, ADDRESS, restart=False)):
            ssh_run(node, as_command(script, user), user=user, pkey=client_key.pkey())


@pytest.mark.parametrize(("units", "found"), [((K3S_SERVER,), b"k3s"), ((Unit("k3s-edge", "agent"),), b"k3s-edge")])
def test_a_role_whose_unit_the_node_lacks_fails_naming_the_role_and_the_units(client_key, tmp_path, units, found):
    """A server listed as an agent (or a custom INSTALL_K3S_NAME): systemd says the unit is not
    found; the step must fail, not report "not running" and record the restart as done."""
    node = start_node("lacks", "127.0.0.22", tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line, units=units)
    try:
        assert node.run_local(["systemctl", "is-active", "k3s-agent"]).stdout == b"inactive\n", "as systemd answers"
        status, stdout, stderr = restart_once(node, TARGET, client_key)
        assert status == 1, stdout
        assert (b"k3s-registry: node cube01: role agent restarts the unit k3s-agent, which this node does not have "
                b"(k3s units here: " + found + b"); set the node's role to match its unit") in stderr
        assert not [line for line in node.restart_log() if "restart" in line.split()]
    finally:
        node.stop()


def test_a_server_restart_that_never_completes_is_bounded_by_the_timeout(client_key, tmp_path):
    """k3s's server unit is Type=notify with TimeoutStartSec=0: a blocking `systemctl restart`
    waits for it forever (the test bed's systemctl does too). The step must give up in time."""
    node = start_node("stuck", "127.0.0.23", tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line)
    try:
        node.set_unit("k3s", "broken")
        status, _, stderr = restart_once(node, SERVER, client_key, timeout=2)
        assert status == 1
        assert (b"k3s did not come back within 2 s after the restart (still waiting for k3s to be active)"
                in stderr), stderr
        assert node.run_local(["systemctl", "is-active", "k3s"]).stdout == b"activating\n"
    finally:
        node.stop()


def test_an_exec_agent_is_back_only_once_its_containerd_answers(client_key, tmp_path):
    """A Type=exec unit (an agent from an older install.sh) is active the moment k3s runs:
    is-active alone would call it back before containerd has the new configuration."""
    node = start_node("execagent", "127.0.0.24", tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line, units=(K3S_AGENT,))
    try:
        node.set_restart_seconds(2)
        status, stdout, stderr = restart_once(node, TARGET, client_key, timeout=10)
        assert status == 0, stderr
        assert [event for _, _, event in node.timeline()] == ["down", "up"], "seen ready, not only active"
        assert b"k3s-agent restarted, back after about 2 s" in stdout or b"back after about 3 s" in stdout, stdout
    finally:
        node.stop()


def test_a_server_behind_rhel_sudo_finds_k3s_where_install_sh_put_it(client_key, tmp_path):
    """sudo's secure_path on RHEL has no /usr/local/bin: `k3s` is not on the script's PATH."""
    node = start_node("rhel", "127.0.0.25", tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line, sudo_secure_path=RHEL_SECURE_PATH)
    try:
        on_path = ssh_run(node, "sudo -n sh -c 'command -v k3s || echo none'", user="deploy", pkey=client_key.pkey())
        assert on_path[1] == b"none\n", "the test bed's sudo must hide /usr/local/bin, as RHEL's does"
        status, stdout, stderr = restart_once(node, SERVER, client_key, user="deploy")
        assert status == 0, stderr
        assert b"k3s restarted, back after about" in stdout
        assert [event for _, _, event in node.timeline()] == ["down", "up"]
    finally:
        node.stop()


def test_a_k3s_that_reads_another_registries_file_stops_the_step_naming_it(odd_node, client_key, scripts):
    """--private-registry in k3s's config: our registries.yaml would never be read."""
    odd_node.write_file("/etc/rancher/k3s/config.yaml.d/50-registries.yaml", "private-registry: /etc/k3s/registries.yaml\n")
    try:
        status, _, stderr = run(odd_node, scripts["k3s install"], client_key)
        assert status == 1
        assert (b"k3s-registry: node cube01: k3s here reads its registries from /etc/k3s/registries.yaml (private-registry "
                b"in its config or unit), not /etc/rancher/k3s/registries.yaml") in stderr, stderr
        assert not odd_node.exists("/etc/rancher/k3s/registries.yaml")
        odd_node.write_file("/etc/rancher/k3s/config.yaml.d/50-registries.yaml",
                            "private-registry: /etc/rancher/k3s/registries.yaml\n")
        status, _, stderr = run(odd_node, scripts["k3s install"], client_key)
        assert status == 0, stderr
    finally:
        odd_node.remove("/etc/rancher/k3s/config.yaml.d")
        run(odd_node, scripts["k3s remove"], client_key)


@pytest.mark.parametrize("init", ["systemd", "openrc"])
def test_a_private_registry_flag_in_the_unit_wins_over_the_config(client_key, tmp_path, certificate_pem, init):
    """install.sh's INSTALL_K3S_EXEC puts flags into the unit; a flag beats config.yaml."""
    unit = Unit("k3s-agent", "agent", "exec", args=("--private-registry", "/etc/k3s/from-the-unit.yaml"))
    node = start_node("flagged", "127.0.0.26", tmp_path, hosts_content=b"127.0.0.1 localhost\n",
                      authorized_pubkey=client_key.public_key_line, init=init, units=(unit,),
                      extra_files={"/etc/rancher/k3s/config.yaml": b"private-registry: /etc/rancher/k3s/registries.yaml\n"})
    try:
        status, _, stderr = run(node, registries.registries_install_script(TARGET, ADDRESS, certificate_pem), client_key)
        assert status == 1
        assert b"k3s here reads its registries from /etc/k3s/from-the-unit.yaml" in stderr, stderr
    finally:
        node.stop()
