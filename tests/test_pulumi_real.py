"""The real `pulumi` runs the program: preview, up, refresh, destroy, on real test hosts.

The CLI, the Python language host, the dynamic-provider plugin and the command, tls, random
and kubernetes providers are the ones scripts/toolchain built from Go source at the pinned
releases (tests/pulumi_real.py). The stack lives on a local file backend in a temporary
folder; its settings are written with `pulumi config set` as a user would (the SSH key and a
cache's password with --secret); its nodes are sshd test hosts: a server reached as root
(systemd), a second server reached as `deploy` through sudo (OpenRC), and an agent that
already has a registries.yaml of its own. The kubernetes provider applies the cluster's objects
to the test bed's cluster (tests/testbed/cluster.py: a real control plane, a kwok node, MetalLB),
and awaits them; after each step the test reads what the API server holds, and the real
registry is started from the Deployment and Secrets it holds.

One story, in order: preview, up, the nodes pull from the registry, no-change up and preview,
a tamper seen by refresh and repaired by up, a renamed node, a CA rotation, a new registry IP,
auth off, a cache added and removed, the state holds no secret in plain text, destroy.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from typing import Any

import pytest
import yaml
from cryptography import x509

from components.settings import DEFAULT_NAMESPACE

from harness import NODE_SCRIPTS
from nodebed import NodeSpec, file_times, free_addresses, running_nodes, units_for
from pod import start_registry_pod
from pulumi_real import PROVIDERS, RealStack, applied, pins
from testbed.cluster import DEFAULT_NODE
from testbed.oci import build_oci_layout, skopeo_copy
from testbed.sshnodes import DEFAULT_MANAGED_PATHS

HOSTNAME = "registry.cube.test"
REGISTRY_IP, MOVED_IP = "127.0.0.65", "127.0.0.66"
ADDRESS = f"{HOSTNAME}:5000"
NAMESPACE = DEFAULT_NAMESPACE  # the story's stack is the only one in the test cluster's namespace
STACK = "realtest"
MARKER = f"# managed by k3s-registry (k3s-registry-{STACK})"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
EXISTING_REGISTRIES = b"""# mirrors we had before
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.cube.test:5000"
"""
NODE_ADDRESSES = [f"127.0.0.{last}" for last in range(61, 65)]
NODES: dict[str, dict[str, Any]] = {
    "server01": {"role": "server", "user": "root", "init": "systemd",
                 "hosts": b"127.0.0.1\tlocalhost\n127.0.1.1\tserver01\n", "files": {}},
    "server02": {"role": "server", "user": "deploy", "init": "openrc",
                 "hosts": b"127.0.0.1 localhost server02\n", "files": {}},
    "agent01": {"role": "agent", "user": "root", "init": "systemd",
                "hosts": b"127.0.0.1 localhost\n127.0.1.1 agent01\n10.9.9.9 registry.cube.test",
                "files": {REGISTRIES_YAML: EXISTING_REGISTRIES}},
}
UNIT = {("server", "systemd"): "restart --no-block k3s", ("agent", "systemd"): "restart --no-block k3s-agent",
        ("server", "openrc"): "k3s restart", ("agent", "openrc"): "k3s-agent restart"}


# ------------------------------------------------------------------ the test bed

@pytest.fixture(scope="module")
def addresses():
    return dict(zip([*NODES, "outsider"], free_addresses(NODE_ADDRESSES, len(NODES) + 1), strict=True))


@pytest.fixture(scope="module")
def cluster(client_key, tmp_path_factory, addresses):
    specs = [NodeSpec(name, addresses[name], spec["hosts"], spec["init"], spec["files"], units_for(spec["role"]))
             for name, spec in NODES.items()]
    specs.append(NodeSpec("outsider", addresses["outsider"], f"127.0.0.1 localhost\n{REGISTRY_IP} {HOSTNAME}\n".encode()))
    with running_nodes(specs, client_key, tmp_path_factory.mktemp) as started:
        yield started


@pytest.fixture(scope="module")
def managed(cluster):
    return [cluster[name] for name in NODES]


@pytest.fixture(scope="module")
def before(managed):
    # A test node starts with the machine's bundle but an empty local CA folder; one rebuild
    # makes its trust store consistent, as it is on any real node.
    for node in managed:
        assert node.run_local(["update-ca-certificates", "--fresh"]).returncode == 0
    return {node.name: node.snapshot() for node in managed}


def node_entries(addresses, renamed=None):
    entries = []
    for name, spec in NODES.items():
        entries.append({"name": (renamed or {}).get(name, name), "host": addresses[name],
                        "role": spec["role"], "user": spec["user"]})
    return entries


JAVA_KEYSTORE = "/etc/ssl/certs/java/cacerts"


def java_trusted(node) -> list[str]:
    """The Java keystore's entries (alias and certificate), without its per-entry import dates."""
    if not node.exists(JAVA_KEYSTORE):
        return []
    listing = node.run_local(["keytool", "-list", "-rfc", "-keystore", JAVA_KEYSTORE, "-storepass", "changeit"])
    assert listing.returncode == 0, listing.stderr.decode()
    return [line for line in listing.stdout.decode().splitlines() if not line.startswith("Creation date")]


@pytest.fixture(scope="module")
def java_before(managed, before):
    return {node.name: java_trusted(node) for node in managed}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, client_key, cluster, addresses, before, java_before, kube_cluster):
    root = tmp_path_factory.mktemp("real-stack")
    real = RealStack(root, STACK, kubeconfig=kube_cluster.kubeconfig_path)
    real.config_set("hostname", HOSTNAME)
    real.config_set("loadBalancerIp", REGISTRY_IP)
    real.config_set("sshPrivateKey", client_key.private_key_text, secret=True)
    real.config_set("k3sRestartTimeout", 30)
    # The CA in each node's OS trust store too (opt-in): the lifecycle below checks it there,
    # and its last update turns it off again.
    real.config_set("osTrustStore", True)
    real.config_set("nodes", node_entries(addresses))
    # Host keys pinned: the real pulumi-command and the NodeScripts provider both verify them.
    for index, name in enumerate(NODES):
        real.config_set(f"nodes[{index}].hostKey", cluster[name].host_public_key, path=True)
    return real


class Registry:
    """The real registry, started from the Deployment and Secrets the API server holds; started
    again after an `up` that changed them (a new CA, a new address)."""

    def __init__(self, stack, cluster, workdir):
        self.stack, self.cluster, self.workdir, self.running, self.count = stack, cluster, workdir, None, 0

    def serve(self, ip):
        self.stop()
        self.count += 1
        objects = applied(self.cluster, self.stack.outputs()["namespace"])
        self.running = start_registry_pod(objects, self.workdir / f"pod-{self.count}", ip)
        return self.running

    def stop(self):
        if self.running is not None:
            self.running.stop()
            self.running = None


@pytest.fixture(scope="module")
def registry(stack, kube_cluster, tmp_path_factory):
    serving = Registry(stack, kube_cluster, tmp_path_factory.mktemp("registry"))
    yield serving
    serving.stop()


# ------------------------------------------------------------------ what the tests look at

CACHE = "registry-cache-quay-io"


def cluster_names(kube_cluster) -> dict[str, list[str]]:
    """kind -> the names of the objects of that kind the API server holds in the namespace."""
    held: dict[str, list[str]] = {}
    for resource in applied(kube_cluster, NAMESPACE).resources:
        held.setdefault(resource.inputs["kind"], []).append(resource.name)
    return held


def service_addresses(kube_cluster, name) -> list[str]:
    from kubernetes import client

    service: Any = client.CoreV1Api(kube_cluster.client()).read_namespaced_service(name, NAMESPACE)
    return [ingress.ip for ingress in service.status.load_balancer.ingress or []]

def k3s_credentials(node):
    auth = yaml.safe_load(node.read_file(REGISTRIES_YAML))["configs"][ADDRESS]["auth"]
    return f"{auth['username']}:{auth['password']}"


def curl_catalog(node, credentials=None, cacert=None):
    """The catalog as curl on the node gets it: trusting the OS store, or only ``cacert``."""
    user = ["--user", credentials] if credentials else []
    trust = ["--cacert", cacert] if cacert else []
    return node.run_local(["curl", "-sS", "--fail", "--max-time", "10", *user, *trust,
                           f"https://{ADDRESS}/v2/_catalog"])


def managed_lines(hosts: bytes) -> list[bytes]:
    return [line for line in hosts.split(b"\n") if line.endswith(MARKER.encode())]


def restarts(node):
    return [line for line in node.restart_log() if re.search(r"\brestart\b", line)]


def anchors(node):
    return list(node.snapshot(["/usr/local/share/ca-certificates"]).values())


def changes_of(run):
    """The resources a preview or an update would change or did change, as `(op, type, name)`:
    the CLI's lines that end in a step's verdict, not its progress lines (refreshing, creating...)."""
    found = re.findall(r"^\s*([+~-]|\+-|-\+)\s+(\S+:\S+:\S+)\s+(\S+)\s+(\S+)", run.stdout, flags=re.MULTILINE)
    return [(op, type_, name) for op, type_, name, status in found
            if not status.endswith("ing") and status != "refresh"]


def assert_converged(stack):
    """Nothing left to do: the engine's own verdict, after its refresh of every node."""
    stack.preview("--expect-no-changes").check()


def clear_restart_logs(managed):
    for node in managed:
        node.clear_restart_log()


# ------------------------------------------------------------------ the toolchain the CLI uses

def test_the_cli_is_the_pinned_release(stack):
    version = stack.pulumi("version", stack=False).check().stdout.strip()
    assert version == f"v{pins()['pulumi']}"


def test_only_the_pinned_plugins_are_installed_and_nothing_is_downloaded(stack):
    listed = json.loads(stack.pulumi("plugin", "ls", "--json", stack=False).check().stdout)
    assert sorted((plugin["name"], plugin["version"]) for plugin in listed) == sorted(
        (name, pins()[name]) for name in PROVIDERS)


# ------------------------------------------------------------------ preview, then the first up

@pytest.fixture(scope="module")
def first_preview(stack):
    # The engine's own account of the plan (--json), not the display, whose lines a busy
    # machine can print in other shapes.
    return stack.preview("--json").check()


def planned_steps(run) -> set[tuple[str, str, str]]:
    """(op, type, name) of every step a `pulumi preview --json` plans; the type is the URN's
    last type (a child's URN carries its parents' types before it, separated by $)."""
    steps = json.loads(run.stdout)["steps"]
    found = set()
    for step in steps:
        *_, types, name = step["urn"].split("::")
        found.add((step["op"], types.split("$")[-1], name))
    return found


def test_preview_shows_every_create_and_touches_no_node(first_preview, managed, before):
    creates = {(type_, name) for op, type_, name in planned_steps(first_preview) if op == "create"}
    for name in NODES:
        assert (NODE_SCRIPTS, f"nodes-{name}-scripts") in creates
        for step in ("trust", "hosts", "k3s", "restart"):
            assert ("command:remote:Command", f"nodes-{name}-{step}") in creates
    assert ("kubernetes:apps/v1:Deployment", "registry-deployment") in creates
    assert ("tls:index/privateKey:PrivateKey", "registry-ca-key") in creates  # a URN's type token, in full
    for node in managed:
        assert node.snapshot() == before[node.name], f"a preview changed {node.name}"


def test_no_plugin_warning_and_no_download(first_preview):
    diagnostics = json.loads(first_preview.stdout).get("diagnostics", [])
    warnings = [d["message"] for d in diagnostics if d["severity"] == "warning"]
    assert warnings == []
    said = "\n".join(d["message"] for d in diagnostics) + first_preview.stderr
    assert not re.search(r"(?i)download|plugin", said), said


class ReadinessWatch:
    """When the API server first showed the registry's Deployment ready (its current template's
    pod available) and its Service with an address: the wall clock the test hosts' init tools
    write their timeline with."""

    def __init__(self, cluster, namespace, name="registry"):
        from kubernetes import client

        api = cluster.client()
        self._apps: Any = client.AppsV1Api(api)
        self._core: Any = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.deployment_ready: float | None = None
        self.service_addressed: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        from kubernetes.client.exceptions import ApiException

        while not self._stopped.wait(0.05):
            now = time.time()
            try:
                deployment = self._apps.read_namespaced_deployment(self.name, self.namespace)
                service = self._core.read_namespaced_service(self.name, self.namespace)
            except ApiException:
                continue  # not created yet
            status = deployment.status
            if (self.deployment_ready is None and status.observed_generation == deployment.metadata.generation
                    and status.updated_replicas == 1 and status.available_replicas == 1):
                self.deployment_ready = now
            if self.service_addressed is None and (service.status.load_balancer.ingress or []):
                self.service_addressed = now

    def stop(self):
        self._stopped.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def first_up(first_preview, stack, managed, kube_cluster):
    clear_restart_logs(managed)
    # Restarts that take a while, so that two servers down at once would show on the timeline.
    for node in managed:
        node.set_restart_seconds(1.0)
    watch = ReadinessWatch(kube_cluster, NAMESPACE)
    try:
        run = stack.up().check()
    finally:
        watch.stop()
        for node in managed:
            node.set_restart_seconds(0)
    run.readiness = watch
    return run


def test_k3s_restarts_only_once_the_cluster_shows_the_registry_ready_and_addressed(first_up, cluster):
    """On the real timeline: every k3s restart began after the API server showed the registry's
    pod available and its Service with its address (the restart steps depend on both)."""
    watch = first_up.readiness
    assert watch.deployment_ready is not None and watch.service_addressed is not None, "never seen ready"
    ready = max(watch.deployment_ready, watch.service_addressed)
    for name in NODES:
        downs = [at for at, _unit, event in cluster[name].timeline() if event == "down"]
        assert downs, name
        # The watch polls every 0.05 s: it saw readiness at most that late.
        assert min(downs) >= ready - 0.1, (name, downs, ready)


def test_the_cluster_holds_every_object_under_restricted_pod_security(first_up, stack, kube_cluster):
    from kubernetes import client

    api = kube_cluster.client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    networking: Any = client.NetworkingV1Api(api)
    namespace = core.read_namespace(NAMESPACE)
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    (pod,) = core.list_namespaced_pod(NAMESPACE).items
    assert pod.spec.node_name == DEFAULT_NODE
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    claim = core.read_namespaced_persistent_volume_claim("registry-data", NAMESPACE)
    assert claim.status.phase == "Bound" and claim.status.capacity == {"storage": "15Gi"}
    deployment = apps.read_namespaced_deployment("registry", NAMESPACE)
    assert deployment.status.available_replicas == 1
    service = core.read_namespaced_service("registry", NAMESPACE)
    assert [ingress.ip for ingress in service.status.load_balancer.ingress] == [REGISTRY_IP]
    secrets = {secret.type for secret in core.list_namespaced_secret(NAMESPACE).items}
    assert secrets == {"kubernetes.io/tls", "Opaque"}
    policies = {policy.metadata.name: policy for policy in networking.list_namespaced_network_policy(NAMESPACE).items}
    assert set(policies) == {"registry", "registry-maintenance"}
    assert policies["registry"].spec.pod_selector.match_labels == deployment.spec.selector.match_labels
    # The maintenance job's pods pass the restricted level too: a pod of its template is admitted
    # (a dry run: the admission runs, nothing is created).
    batch: Any = client.BatchV1Api(api)
    (cron_job,) = batch.list_namespaced_cron_job(NAMESPACE).items
    template = api.sanitize_for_serialization(cron_job.spec.job_template.spec.template)
    core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "maintenance-dry-run", **template["metadata"]},
                                           "spec": template["spec"]}, dry_run="All")
    # The restricted level is enforced, not only labelled: a root pod is refused.
    with pytest.raises(client.exceptions.ApiException) as refused:
        core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "root"}, "spec": {
            "containers": [{"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0}}]}})
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body or "{}")["message"]


def test_the_serving_certificates_expiry_is_a_stack_output(first_up, stack, kube_cluster):
    """servingCertificateExpires is the notAfter of the certificate the registry serves."""
    (tls_secret,) = [r for r in applied(kube_cluster, NAMESPACE).of_type("kubernetes:core/v1:Secret")
                     if r.inputs.get("type") == "kubernetes.io/tls"]
    served = x509.load_pem_x509_certificate(tls_secret.inputs["stringData"]["tls.crt"].encode())
    expires = dt.datetime.fromisoformat(stack.outputs()["servingCertificateExpires"])
    # The provider keeps the fraction of a second that X.509's notAfter cannot hold.
    assert expires.replace(microsecond=0) == served.not_valid_after_utc


def test_up_configures_every_node(first_up, stack, managed, before):
    ca = stack.outputs()["caCertificatePem"]
    for node in managed:
        assert anchors(node) == [ca.encode()], node.name
        hosts = node.read_file("/etc/hosts")
        assert managed_lines(hosts) == [f"{REGISTRY_IP}\t{HOSTNAME}\t{MARKER}".encode()], node.name
        assert hosts.split(b"\n", 1)[1] == before[node.name]["/etc/hosts"], node.name
        document = yaml.safe_load(node.read_file(REGISTRIES_YAML))
        assert document["mirrors"][ADDRESS] == {"endpoint": [f"https://{ADDRESS}"]}
        assert set(document["configs"][ADDRESS]) == {"tls", "auth"}
        assert restarts(node) == [UNIT[NODES[node.name]["role"], NODES[node.name]["init"]]], node.name


def test_up_keeps_the_mirror_a_node_had(first_up, cluster):
    document = yaml.safe_load(cluster["agent01"].read_file(REGISTRIES_YAML))
    assert document["mirrors"]["docker.io"] == {"endpoint": ["https://mirror.cube.test:5000"]}


def test_the_servers_restart_one_at_a_time(first_up, cluster):
    intervals = []
    for name in ("server01", "server02"):
        events = cluster[name].timeline()
        down = [t for t, _, event in events if event == "down"]
        up = [t for t, _, event in events if event == "up"]
        assert len(down) == len(up) == 1, (name, events)
        intervals.append((down[0], up[0]))
    (_first_down, first_up_again), (second_down, _second_up_again) = sorted(intervals)
    assert first_up_again <= second_down, f"both servers were down at once: {intervals}"


def test_the_engine_orders_each_restart_after_the_registry_and_the_servers_one_after_another(first_up, stack):
    """The dependencies the real engine recorded (it ran the steps in their order)."""
    by_name = {r["urn"].rsplit("::", 1)[-1]: r for r in stack.resources()}

    def needs(name):
        return {urn.rsplit("::", 1)[-1] for urn in by_name[name].get("dependencies", [])}

    for name in NODES:
        assert {"registry-deployment", "registry-service", f"nodes-{name}-k3s"} <= needs(f"nodes-{name}-restart")
    assert "nodes-server01-restart" in needs("nodes-server02-restart")
    assert not {"nodes-server01-restart", "nodes-server02-restart"} & needs("nodes-agent01-restart"), \
        "agents restart without waiting for the servers"


@pytest.fixture(scope="module")
def pushed_image(first_up, stack, registry, cluster, tmp_path_factory):
    registry.serve(REGISTRY_IP)
    outputs = stack.outputs(show_secrets=True)
    work = tmp_path_factory.mktemp("push")
    layout = build_oci_layout(work / "image", "1.0", b"built on a laptop\n")
    (work / "certs").mkdir()
    (work / "certs" / "ca.crt").write_text(outputs["caCertificatePem"])
    result = skopeo_copy(f"oci:{layout}:1.0", f"docker://{outputs['registryAddress']}/apps/hello:1.0",
                         extra_args=["--dest-cert-dir", str(work / "certs"), "--dest-creds",
                                     f"{outputs['registryUsername']}:{outputs['registryPassword']}"],
                         run=cluster["outsider"].run_local)
    assert result.returncode == 0, result.stderr.decode()
    return f"{ADDRESS}/apps/hello:1.0"


def test_every_node_pulls_from_the_registry_with_its_k3s_credentials(pushed_image, managed, tmp_path):
    for node in managed:
        listed = curl_catalog(node, k3s_credentials(node))
        assert listed.returncode == 0, (node.name, listed.stderr.decode())
        assert json.loads(listed.stdout)["repositories"] == ["apps/hello"]
        pulled = node.run_local(["skopeo", "copy", "--src-creds", k3s_credentials(node),
                                 f"docker://{pushed_image}", f"dir:{tmp_path / node.name}"])
        assert pulled.returncode == 0, (node.name, pulled.stderr.decode())


def test_a_node_the_program_did_not_configure_fails_on_the_certificate(pushed_image, cluster):
    assert curl_catalog(cluster["outsider"]).returncode == 60


def test_without_the_credentials_the_registry_refuses_even_a_trusting_node(pushed_image, managed):
    result = curl_catalog(managed[0])
    assert result.returncode == 22 and b"401" in result.stderr  # curl --fail: HTTP error


def test_names_resolve_to_the_registry_ip(first_up, managed):
    for node in managed:
        assert node.run_local(["getent", "hosts", HOSTNAME]).stdout.decode().split()[0] == REGISTRY_IP, node.name


def test_registries_yaml_is_root_only_and_its_ca_file_holds_no_key(first_up, managed):
    for node in managed:
        assert node.run_local(["stat", "-c", "%a", REGISTRIES_YAML]).stdout.strip() == b"600", node.name
        config = yaml.safe_load(node.read_file(REGISTRIES_YAML))["configs"][ADDRESS]
        assert set(config["tls"]) == {"ca_file"} and HOSTNAME not in yaml.safe_load(
            node.read_file(REGISTRIES_YAML))["configs"], "the configs key carries the port"
        ca_file = node.read_file(config["tls"]["ca_file"]).decode()
        assert "BEGIN CERTIFICATE" in ca_file and "PRIVATE" not in ca_file


def test_no_private_key_lands_on_any_node(first_up, managed):
    for node in managed:
        for path, content in node.snapshot().items():
            assert b"PRIVATE KEY" not in content, (node.name, path)


# ------------------------------------------------------------------ nothing more to do

@pytest.fixture(scope="module")
def second_up(pushed_image, stack, managed):
    snapshots = {node.name: (node.snapshot(), file_times(node, DEFAULT_MANAGED_PATHS)) for node in managed}
    clear_restart_logs(managed)
    run = stack.up("--expect-no-changes").check()
    return snapshots, run


def test_a_second_up_changes_nothing_anywhere(second_up, stack, managed):
    snapshots, _ = second_up
    for node in managed:
        content, times = snapshots[node.name]
        assert node.snapshot() == content, node.name
        assert file_times(node, DEFAULT_MANAGED_PATHS) == times, f"{node.name}: a file was rewritten"
        assert restarts(node) == [], node.name
    assert_converged(stack)


# ------------------------------------------------------------------ drift: refresh sees it, up repairs it

@pytest.fixture(scope="module")
def tampered(second_up, stack, cluster, managed):
    node = cluster["agent01"]
    hosts = node.read_file("/etc/hosts")
    node.write_file("/etc/hosts", b"\n".join(line for line in hosts.split(b"\n") if not line.endswith(MARKER.encode())))
    clear_restart_logs(managed)
    refreshed = stack.refresh().check()
    return hosts, refreshed


def test_refresh_reports_the_tampered_step(tampered, stack):
    _, refreshed = tampered
    assert ("~", NODE_SCRIPTS, "nodes-agent01-scripts") in changes_of(refreshed), refreshed.stdout
    updated = {name for op, _, name in changes_of(refreshed) if op == "~"}
    assert updated == {"nodes-agent01-scripts"}, refreshed.stdout
    preview = stack.preview()
    assert ("~", "command:remote:Command", "nodes-agent01-hosts") in changes_of(preview.check())


def test_the_next_up_repairs_exactly_that_step(tampered, stack, cluster, managed):
    hosts, _ = tampered
    repaired = stack.up().check()
    changed = {(type_, name) for op, type_, name in changes_of(repaired) if op != "+"}
    assert ("command:remote:Command", "nodes-agent01-hosts") in changed
    assert not any(name.startswith("nodes-server") for _, name in changed), changed
    assert re.search(r"~ 2 updated\n\s+\d+ unchanged", repaired.stdout), "the observation and the hosts step only"
    assert cluster["agent01"].read_file("/etc/hosts") == hosts
    assert all(restarts(node) == [] for node in managed), "a hosts line needs no k3s restart"
    assert_converged(stack)


# ------------------------------------------------------------------ changes that converge in one up

@pytest.fixture(scope="module")
def renamed(tampered, stack):
    stack.config_set("nodes[2].name", "agent01b", path=True)
    return stack.up().check()


def test_a_renamed_node_stays_configured_after_one_up(renamed, stack, cluster):
    node = cluster["agent01"]
    assert managed_lines(node.read_file("/etc/hosts")), "the old name's deletes undid the new name's hosts line"
    assert ADDRESS in yaml.safe_load(node.read_file(REGISTRIES_YAML))["configs"]
    assert anchors(node) == [stack.outputs()["caCertificatePem"].encode()]
    assert "nodes-agent01b-scripts" in renamed.stdout and "nodes-agent01-scripts" in renamed.stdout
    assert_converged(stack)


@pytest.fixture(scope="module")
def rotated(renamed, stack, registry):
    old_ca = stack.outputs()["caCertificatePem"]
    urn = stack.urn_of("tls:index/privateKey:PrivateKey", "registry-ca-key")
    # In the preview the new CA is not known yet: every node's scripts are said to change.
    previewed = changes_of(stack.preview("--replace", urn).check())
    for name in ("server01", "server02", "agent01b"):
        assert ("~", NODE_SCRIPTS, f"nodes-{name}-scripts") in previewed, previewed
    run = stack.up("--replace", urn).check()
    registry.serve(REGISTRY_IP)
    return old_ca, run


def test_a_ca_rotation_reaches_every_node_in_one_up(rotated, stack, managed):
    old_ca, _ = rotated
    new_ca = stack.outputs()["caCertificatePem"]
    assert new_ca != old_ca
    for node in managed:
        assert anchors(node) == [new_ca.encode()], node.name
        assert old_ca.encode() not in node.read_file("/etc/ssl/certs/ca-certificates.crt"), node.name
        listed = curl_catalog(node, k3s_credentials(node))
        assert listed.returncode == 0, (node.name, listed.stderr.decode())
    assert_converged(stack)


@pytest.fixture(scope="module")
def moved(rotated, stack, registry, managed):
    stack.config_set("loadBalancerIp", MOVED_IP)
    clear_restart_logs(managed)
    anchors_before = {node.name: anchors(node) for node in managed}
    run = stack.up().check()
    registry.serve(MOVED_IP)
    return run, anchors_before


def test_a_new_registry_ip_converges_in_one_up(moved, stack, managed, before, kube_cluster):
    _, anchors_before = moved
    assert service_addresses(kube_cluster, "registry") == [MOVED_IP], "MetalLB gave the Service the new address"
    for node in managed:
        assert restarts(node) == [], "registries.yaml did not change, so k3s keeps running"
        assert anchors(node) == anchors_before[node.name], "the CA names the host, not the IP: nothing to re-trust"
        hosts = node.read_file("/etc/hosts")
        assert managed_lines(hosts) == [f"{MOVED_IP}\t{HOSTNAME}\t{MARKER}".encode()], node.name
        assert hosts.split(b"\n", 1)[1] == before[node.name]["/etc/hosts"], node.name
        assert curl_catalog(node, k3s_credentials(node)).returncode == 0, node.name
    assert_converged(stack)


@pytest.fixture(scope="module")
def auth_off(moved, stack):
    stack.config_set("auth", False)
    return stack.up().check()


def test_auth_off_converges_in_one_up(auth_off, stack, managed, registry):
    registry.serve(MOVED_IP)
    for node in managed:
        document = yaml.safe_load(node.read_file(REGISTRIES_YAML))
        assert set(document["configs"][ADDRESS]) == {"tls"}, node.name
        assert curl_catalog(node).returncode == 0, node.name
    assert "registryPassword" not in stack.outputs()
    assert_converged(stack)


@pytest.fixture(scope="module")
def cache_added(auth_off, stack):
    stack.config_set("auth", True)
    stack.config_set("mirrors[0].upstream", "quay.io", path=True)
    stack.config_set("mirrors[0].username", "myorg+robot", path=True)
    stack.config_set("mirrors[0].password", "quay-token-0123", secret=True, path=True)
    return stack.up().check()


def test_a_cache_with_a_secret_password_converges_in_one_up(cache_added, stack, managed, kube_cluster):
    assert "quay-token-0123" not in stack.stack_file(), "the password is stored encrypted"
    # Its own Deployment (available), claim (bound) and Service, which shares the registry's
    # address (MetalLB's allow-shared-ip: both Services carry the same key).
    assert sorted(cluster_names(kube_cluster)["Deployment"]) == ["registry", CACHE]
    assert service_addresses(kube_cluster, CACHE) == service_addresses(kube_cluster, "registry") == [MOVED_IP]
    cache_address = stack.outputs()["mirrors"]["quay.io"]
    for node in managed:
        document = yaml.safe_load(node.read_file(REGISTRIES_YAML))
        assert document["mirrors"]["quay.io"] == {"endpoint": [f"https://{cache_address}"]}, node.name
        assert set(document["configs"][cache_address]) == {"tls", "auth"}
    assert_converged(stack)


def test_the_state_holds_no_secret_in_plain_text(cache_added, stack, client_key):
    exported = json.dumps(stack.export())
    outputs = stack.outputs(show_secrets=True)
    assert "PRIVATE KEY" not in exported
    assert client_key.private_key_text.strip().splitlines()[1] not in exported
    assert outputs["registryPassword"] not in exported
    assert "quay-token-0123" not in exported
    assert not re.search(r"\$2[aby]\$\d\d\$", exported), "a bcrypt hash in plain text"


@pytest.fixture(scope="module")
def cache_removed(cache_added, stack):
    stack.config_rm("mirrors")
    return stack.up().check()


def test_a_removed_cache_leaves_nothing_on_the_nodes(cache_removed, stack, managed, cluster, kube_cluster):
    held = cluster_names(kube_cluster)
    assert not [name for names in held.values() for name in names if name.startswith(CACHE)], held
    for node in managed:
        document = yaml.safe_load(node.read_file(REGISTRIES_YAML))
        assert "quay.io" not in document["mirrors"], node.name
        assert set(document["configs"]) == {ADDRESS}, node.name
    assert yaml.safe_load(cluster["agent01"].read_file(REGISTRIES_YAML))["mirrors"]["docker.io"] == \
        {"endpoint": ["https://mirror.cube.test:5000"]}
    assert_converged(stack)


@pytest.fixture(scope="module")
def trust_store_off(cache_removed, stack, managed):
    stack.config_set("osTrustStore", False)
    clear_restart_logs(managed)
    return stack.up().check()


def test_turning_the_os_trust_store_off_takes_the_ca_out_and_k3s_keeps_it(
        trust_store_off, stack, managed, java_before, registry):
    changed = {name for op, _, name in changes_of(trust_store_off) if op != "+"}
    assert changed == {f"nodes-{name}-{step}" for name in ("server01", "server02", "agent01b")
                       for step in ("scripts", "trust")}, trust_store_off.stdout
    registry.serve(MOVED_IP)  # as declared now: with credentials again
    ca = stack.outputs()["caCertificatePem"]
    for node in managed:
        assert anchors(node) == [], node.name
        assert ca.encode() not in node.read_file("/etc/ssl/certs/ca-certificates.crt"), node.name
        assert java_trusted(node) == java_before[node.name], node.name
        assert restarts(node) == [], "registries.yaml did not change"
        # curl trusting the OS store refuses the registry; with the file k3s gives containerd it connects.
        assert curl_catalog(node, k3s_credentials(node)).returncode == 60, node.name
        ca_file = yaml.safe_load(node.read_file(REGISTRIES_YAML))["configs"][ADDRESS]["tls"]["ca_file"]
        assert node.read_file(ca_file) == ca.encode(), node.name
        listed = curl_catalog(node, k3s_credentials(node), cacert=ca_file)
        assert listed.returncode == 0, (node.name, listed.stderr.decode())
    assert_converged(stack)


# ------------------------------------------------------------------ destroy

@pytest.fixture(scope="module")
def destroyed(trust_store_off, stack, managed):
    clear_restart_logs(managed)
    return stack.destroy().check()


def test_destroy_returns_every_node_to_its_starting_bytes(destroyed, managed, before):
    for node in managed:
        # A JKS keystore stamps each entry with its import time, and every trust store rebuild
        # re-imports them all: its entries are compared on their own, below.
        after = {path: content for path, content in node.snapshot(DEFAULT_MANAGED_PATHS).items()
                 if path != JAVA_KEYSTORE}
        assert after == {k: v for k, v in before[node.name].items() if k != JAVA_KEYSTORE}, node.name
        assert restarts(node) == [UNIT[NODES[node.name]["role"], NODES[node.name]["init"]]], node.name


def test_destroy_leaves_javas_keystore_trusting_what_it_trusted_before(destroyed, managed, java_before):
    for node in managed:
        assert java_trusted(node) == java_before[node.name], node.name


def test_after_destroy_nodes_no_longer_trust_the_registry(destroyed, managed):
    for node in managed:
        node.write_file("/etc/hosts", f"{MOVED_IP} {HOSTNAME}\n".encode())
        assert curl_catalog(node).returncode == 60, node.name


def test_destroy_leaves_an_empty_stack(destroyed, stack):
    assert [r["type"] for r in stack.resources()] == []


def test_destroy_removes_the_namespace_and_the_volume_with_it(destroyed, kube_cluster):
    from kubernetes import client

    core: Any = client.CoreV1Api(kube_cluster.client())
    assert NAMESPACE not in [n.metadata.name for n in core.list_namespace().items]
    # The claim went with it, and its volume (reclaim policy Delete) after it.
    deadline = time.monotonic() + 30
    while [v for v in core.list_persistent_volume().items if v.spec.claim_ref.namespace == NAMESPACE]:
        assert time.monotonic() < deadline, "the registry's volume outlived its claim"
        time.sleep(0.5)
