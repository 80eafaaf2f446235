"""The registries.yaml editor against what k3s reads: every byte that is not ours is kept.

k3s reads registries.yaml with rancher/wharfie (gopkg.in/yaml.v2 into string fields: an
unquoted scalar keeps its literal text). The suite builds wharfie's own reader
(toolchain/wharfie, ``wharfie-registries``), so what k3s gets from a file is read by k3s's code,
not by PyYAML's YAML 1.1, which reads the same text as other values.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess

import pytest
import yaml

from components.node.steps.registries import REGISTRIES_CHECKER_SOURCE
from components.node.steps.registries_edit import MARK, EditError, forget_guide, merge, private_registry, unmerge

from pulumi_real import toolchain_dir

ADDRESS = "registry.cube.local:5000"
CA_FILE = "/etc/rancher/k3s/k3s-registry-ca.crt"
AUTH = {"username": "registry", "password": "s3cret-for-our-registry"}
CACHES = [{"upstream": "docker.io", "address": "registry.cube.local:5001"},
          {"upstream": "quay.io", "address": "registry.cube.local:5002"}]

# Another registry's settings, written the way people write them: comments, flow style inside an
# entry, and unquoted values that YAML 1.1 (PyYAML) and yaml.v2 (k3s) read differently.
THEIRS = """\
# Lab registries (kept by ansible, do not reorder)
mirrors:
  docker.io:            # k3s's embedded mirror (Spegel) shares images between nodes
  registry.k8s.io:
  harbor.lab.test:
    endpoint:
      - https://harbor.lab.test:8443
    rewrite:
      "^library/(.*)": "mirror/$1"

configs:
  harbor.lab.test:8443:
    auth:
      username: no
      password: 0123
    tls:
      insecure_skip_verify: yes
  legacy.lab.test:
    auth: {username: robot, password: 12:30:00}   # flow style inside an entry
"""


def k3s_reads(text: str, tmp_path) -> dict:
    """What k3s's agent gets from this registries.yaml (wharfie's GetPrivateRegistries)."""
    path = tmp_path / "registries.yaml"
    path.write_text(text)
    done = subprocess.run([str(toolchain_dir() / "wharfie-registries"), str(path)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def only_insertions(before: str, after: str) -> bool:
    """``after`` is ``before`` with lines added, none changed or removed."""
    matcher = difflib.SequenceMatcher(a=before.splitlines(True), b=after.splitlines(True), autojunk=False)
    return all(tag in ("equal", "insert") for tag, *_ in matcher.get_opcodes())


@pytest.fixture(scope="module")
def merged():
    return merge(THEIRS, ADDRESS, CA_FILE, None, AUTH, CACHES)


def test_the_values_differ_between_pyyaml_and_k3s(tmp_path):
    """Guards the test: these are values a load-and-dump editor would change."""
    pyyaml = yaml.safe_load(THEIRS)["configs"]
    k3s = k3s_reads(THEIRS, tmp_path)["configs"]
    assert pyyaml["harbor.lab.test:8443"]["auth"] == {"username": False, "password": 83}
    assert k3s["harbor.lab.test:8443"]["auth"]["username"] == "no"
    assert k3s["harbor.lab.test:8443"]["auth"]["password"] == "0123"
    assert pyyaml["legacy.lab.test"]["auth"]["password"] == 45000
    assert k3s["legacy.lab.test"]["auth"]["password"] == "12:30:00"


def test_merge_only_adds_lines_and_k3s_reads_every_other_entry_as_before(merged, tmp_path):
    assert only_insertions(THEIRS, merged), merged
    before, after = k3s_reads(THEIRS, tmp_path), k3s_reads(merged, tmp_path)
    for host, config in before["configs"].items():
        assert after["configs"][host] == config, host
    assert after["mirrors"]["harbor.lab.test"] == before["mirrors"]["harbor.lab.test"]
    assert after["mirrors"]["registry.k8s.io"] == before["mirrors"]["registry.k8s.io"]


def test_k3s_reads_our_entries(merged, tmp_path):
    read = k3s_reads(merged, tmp_path)
    assert read["mirrors"][ADDRESS]["endpoint"] == [f"https://{ADDRESS}"]
    assert read["configs"][ADDRESS]["auth"]["username"] == AUTH["username"]
    assert read["configs"][ADDRESS]["auth"]["password"] == AUTH["password"]
    assert read["configs"][ADDRESS]["tls"]["ca_file"] == CA_FILE
    for cache in CACHES:
        assert read["mirrors"][cache["upstream"]]["endpoint"] == [f"https://{cache['address']}"]
        assert read["configs"][cache["address"]]["tls"]["ca_file"] == CA_FILE


def test_an_endpoint_less_mirror_gets_our_endpoint_and_gives_it_back_exactly(merged):
    """Spegel's documented setup (`mirrors: docker.io:`) is mergeable, not someone else's mirror."""
    lines = merged.splitlines()
    at = lines.index("  docker.io:            # k3s's embedded mirror (Spegel) shares images between nodes")
    assert lines[at + 1:at + 3] == [f"    endpoint:  {MARK}", "    - https://registry.cube.local:5001"]
    assert unmerge(merged, ADDRESS, CACHES) == THEIRS


def test_a_mirror_with_only_a_rewrite_gets_our_endpoint_beside_it(tmp_path):
    rewrite_only = 'mirrors:\n  docker.io:\n    rewrite:\n      "^rancher/(.*)": "mirrored-rancher/$1"\n'
    text = merge(rewrite_only, ADDRESS, CA_FILE, None, {}, CACHES[:1])
    read = k3s_reads(text, tmp_path)["mirrors"]["docker.io"]
    assert read == {"endpoint": ["https://registry.cube.local:5001"], "rewrite": {"^rancher/(.*)": "mirrored-rancher/$1"}}
    assert unmerge(text, ADDRESS, CACHES[:1]) == rewrite_only


def test_merge_is_idempotent_and_a_dropped_cache_gives_back_its_lines(merged):
    assert merge(merged, ADDRESS, CA_FILE, None, AUTH, CACHES, CACHES) == merged
    fewer = merge(merged, ADDRESS, CA_FILE, None, AUTH, CACHES[1:], CACHES)
    assert "registry.cube.local:5001" not in fewer
    assert "  docker.io:            # k3s's embedded mirror (Spegel) shares images between nodes\n  registry.k8s.io:\n" in fewer
    assert only_insertions(THEIRS, fewer)


def test_a_mirror_with_endpoints_of_its_own_still_stops_the_step():
    theirs = "mirrors:\n  docker.io:\n    endpoint: [https://mirror.lab.test]\n"
    with pytest.raises(EditError, match=re.escape("already has a mirror for docker.io that this program did not write")):
        merge(theirs, ADDRESS, CA_FILE, None, {}, CACHES[:1])


@pytest.mark.parametrize(("text", "message"), [
    ("mirrors: {docker.io: {endpoint: [https://mirror.lab.test]}}\n", "'mirrors' is written in flow style"),
    ("mirrors:\n  docker.io: {rewrite: {a: b}}\n", "mirrors.docker.io is written in flow style"),
    ("mirrors:\n  docker.io: ~\n", "write it as 'docker.io:' with nothing after it"),
])
def test_what_cannot_be_edited_without_rewriting_others_is_refused_naming_it(text, message):
    with pytest.raises(EditError, match=re.escape(message)):
        merge(text, ADDRESS, CA_FILE, None, {}, CACHES[:1])


def test_an_empty_flow_section_takes_our_entries_below_it(tmp_path):
    text = merge("mirrors: {}\nconfigs: {}  # none yet\n", ADDRESS, CA_FILE, None, {})
    read = k3s_reads(text, tmp_path)
    assert read["mirrors"][ADDRESS]["endpoint"] == [f"https://{ADDRESS}"]
    assert text.splitlines()[0] == "mirrors:" and "configs:  # none yet" in text.splitlines()


def test_a_file_written_by_the_previous_editor_is_left_as_it_is():
    """The previous release loaded and dumped the whole file: an upgrade must not rewrite it
    (a rewrite restarts k3s on every node)."""
    previous = yaml.safe_dump({
        "mirrors": {ADDRESS: {"endpoint": [f"https://{ADDRESS}"]}},
        "configs": {ADDRESS: {"tls": {"ca_file": CA_FILE}, "auth": dict(AUTH)}},
    }, default_flow_style=False, sort_keys=False)
    assert merge(previous, ADDRESS, CA_FILE, None, AUTH) == previous
    assert unmerge(previous, ADDRESS) == ""


def test_the_guides_entry_goes_and_the_rest_stays_byte_for_byte():
    guide = ("configs:\n  registry.cube.local:\n    tls:\n      ca_file: /usr/local/share/ca-certificates/registry.crt\n"
             "      key_file: /usr/local/share/ca-certificates/registry.key\n")
    assert forget_guide(THEIRS.replace("configs:\n", guide, 1), "registry.cube.local") == THEIRS


def test_the_private_registry_setting_is_read_as_k3s_merges_its_config_files(tmp_path):
    main = tmp_path / "config.yaml"
    main.write_text("private-registry: /etc/k3s/first.yaml\nnode-label: [a=b]\n")
    later = tmp_path / "config.yaml.d" / "50-registries.yaml"
    later.parent.mkdir()
    later.write_text("private-registry: /etc/k3s/second.yaml\n")
    assert private_registry([str(main), str(later)]) == "/etc/k3s/second.yaml"
    assert private_registry([str(main), str(tmp_path / "config.yaml.d" / "*.yaml")]) == "/etc/k3s/first.yaml"
    assert private_registry([str(tmp_path / "absent.yaml")]) == ""


def probe_of(text: str, tmp_path, caches) -> str:
    """The k3s step's read-only checker (what a refresh runs on the node), on this file."""
    path = tmp_path / "probed.yaml"
    path.write_text(text)
    done = subprocess.run(["/usr/bin/python3", "-c", REGISTRIES_CHECKER_SOURCE, str(path), ADDRESS, CA_FILE,
                           json.dumps(caches)], input=json.dumps(AUTH), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_refresh_finds_a_merged_file_in_sync_and_a_foreign_endpoint_not(merged, tmp_path):
    """Our endpoint beside someone's rewrite is ours and in sync; another endpoint is drift."""
    assert probe_of(merged, tmp_path, CACHES) == ""
    rewrite_only = 'mirrors:\n  docker.io:\n    rewrite:\n      "^rancher/(.*)": "mirrored-rancher/$1"\n'
    assert probe_of(merge(rewrite_only, ADDRESS, CA_FILE, None, AUTH, CACHES[:1]), tmp_path, CACHES[:1]) == ""
    hijacked = merged.replace("    - https://registry.cube.local:5001", "    - https://elsewhere.lab.test")
    assert "the mirror for docker.io is not https://registry.cube.local:5001 alone" in probe_of(hijacked, tmp_path, CACHES)


def test_an_anonymous_cache_gets_no_credentials_and_turning_it_on_takes_them_out(merged, tmp_path):
    """containerd sends a configs entry's credentials to that cache: an anonymous one has none."""
    anonymous = [{**CACHES[0], "anonymous": True}, CACHES[1]]
    switched = merge(merged, ADDRESS, CA_FILE, None, AUTH, anonymous, CACHES)
    read = k3s_reads(switched, tmp_path)
    assert read["configs"]["registry.cube.local:5001"]["auth"] is None  # wharfie's struct: no credentials
    assert read["configs"]["registry.cube.local:5001"]["tls"]["ca_file"] == CA_FILE
    assert read["configs"]["registry.cube.local:5002"]["auth"]["password"] == AUTH["password"]
    assert read["configs"][ADDRESS]["auth"]["password"] == AUTH["password"]
    assert read["mirrors"]["docker.io"]["endpoint"] == ["https://registry.cube.local:5001"]
    assert probe_of(switched, tmp_path, anonymous) == ""
    # With its credentials back in the file, the anonymous cache is out of sync; and the other way round.
    assert "configs.registry.cube.local:5001 has credentials this program did not set" in probe_of(merged, tmp_path, anonymous)
    assert "configs.registry.cube.local:5001 has no credentials" in probe_of(switched, tmp_path, CACHES)
    back = merge(switched, ADDRESS, CA_FILE, None, AUTH, CACHES, anonymous)
    assert k3s_reads(back, tmp_path) == k3s_reads(merged, tmp_path)
    assert unmerge(switched, ADDRESS, anonymous) == unmerge(merged, ADDRESS, CACHES)
