"""monitoring: the registry's metrics on its debug port, a ServiceMonitor and the alerts.

The graph under the mocks (what is declared, and only with ``monitoring: true``); the alert
rules the program declares checked and tested by Prometheus's own ``promtool`` (Debian's
prometheus package) on synthetic series; and the real registry binary, started as the
Deployment declares it, serving its metrics on the debug port and not on the TLS port.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.request

import pytest
import yaml

from harness import GUIDE_CONFIG, evaluate
from pod import registry_pod

SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
SERVICE = "kubernetes:core/v1:Service"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
MONITORED = {**GUIDE_CONFIG, "monitoring": "true", "monitoringNamespace": "observability",
             "monitoringLabels": {"release": "kube-prometheus-stack"},
             "mirrors": [{"upstream": "docker.io", "url": "https://registry-1.docker.io"}]}
REGISTRY_IP = "127.0.0.207"


@pytest.fixture(scope="module")
def monitored():
    return evaluate(MONITORED)


def env_of(deployment):
    (container,) = deployment.inputs["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value") for item in container["env"]}, container["ports"]


def test_without_monitoring_there_is_no_debug_server_and_nothing_for_prometheus():
    plain = evaluate(GUIDE_CONFIG)
    assert plain.of_type(SERVICE_MONITOR) == plain.of_type(PROMETHEUS_RULE) == []
    assert [s.name for s in plain.of_type(SERVICE)] == ["registry-service"]
    env, ports = env_of(plain.one(DEPLOYMENT))
    # The registry:3 image's own config opens a debug server on :5001: an empty address opens none.
    assert {key: value for key, value in env.items() if "DEBUG" in key} == {"REGISTRY_HTTP_DEBUG_ADDR": ""}
    assert [p["name"] for p in ports] == ["https"]
    assert len(plain.named("registry-network-policy").inputs["spec"]["ingress"]) == 1


def test_the_metrics_are_on_the_debug_port_which_only_the_monitoring_namespace_reaches(monitored):
    registry = monitored.named("registry-deployment")
    env, ports = env_of(registry)
    assert env["REGISTRY_HTTP_DEBUG_ADDR"] == ":5001" and env["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"] == "true"
    assert {p["name"]: p["containerPort"] for p in ports} == {"https": 5000, "metrics": 5001}
    # Caches are not scraped: their claims are watched through the kubelet's volume statistics.
    cache_env = env_of(monitored.named("registry-cache-docker-io-deployment"))[0]
    assert {key: value for key, value in cache_env.items() if "DEBUG" in key} == {"REGISTRY_HTTP_DEBUG_ADDR": ""}
    metrics = monitored.named("registry-metrics-service").inputs
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["selector"] == registry.inputs["spec"]["selector"]["matchLabels"]
    assert metrics["spec"]["ports"] == [{"name": "metrics", "port": 5001, "targetPort": "metrics", "protocol": "TCP"}]
    policy = monitored.named("registry-network-policy").inputs
    https_rule, metrics_rule = policy["spec"]["ingress"]
    assert https_rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert metrics_rule == {"ports": [{"port": 5001, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]}
    # The LoadBalancer Service still exposes only the TLS port.
    assert [p["port"] for p in monitored.named("registry-service").inputs["spec"]["ports"]] == [5000]


def test_the_service_monitor_selects_the_metrics_service_and_carries_the_given_labels(monitored):
    (monitor,) = monitored.of_type(SERVICE_MONITOR)
    metrics = monitored.named("registry-metrics-service").inputs
    assert monitor.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor.inputs["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    assert not selector.items() <= monitored.named("registry-service").inputs["metadata"]["labels"].items()
    assert monitor.inputs["spec"]["namespaceSelector"] == {"matchNames": ["docker-registry"]}
    assert monitor.inputs["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "scheme": "http",
                                                     "interval": "30s"}]


@pytest.fixture(scope="module")
def rule_file(monitored, tmp_path_factory):
    (rule,) = monitored.of_type(PROMETHEUS_RULE)
    assert rule.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    path = tmp_path_factory.mktemp("rules") / "registry.rules.yaml"
    path.write_text(yaml.safe_dump(rule.inputs["spec"]))
    return path


def promtool(*args):
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def test_promtool_accepts_the_declared_rules(rule_file):
    code, said = promtool("check", "rules", str(rule_file))
    assert code == 0 and "SUCCESS: 4 rules found" in said, said


def test_the_alerts_fire_exactly_when_they_should_on_synthetic_series(monitored, rule_file, tmp_path):
    volume = 'namespace="docker-registry",persistentvolumeclaim="{claim}"'
    # The static texts as declared (the volume alert's summary is a template: spelled out below).
    declared = {rule["alert"]: rule["annotations"] for rule in yaml.safe_load(rule_file.read_text())["groups"][0]["rules"]}
    down = {"exp_labels": {"severity": "critical"}, "exp_annotations": declared["RegistryDown"]}
    full, roomy = volume.format(claim="registry-data"), volume.format(claim="registry-cache-docker-io-data")
    tests = {"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            {"series": f"kubelet_volume_stats_available_bytes{{{full}}}", "values": "5x30"},
            {"series": f"kubelet_volume_stats_capacity_bytes{{{full}}}", "values": "100x30"},
            {"series": f"kubelet_volume_stats_available_bytes{{{roomy}}}", "values": "50x30"},
            {"series": f"kubelet_volume_stats_capacity_bytes{{{roomy}}}", "values": "100x30"},
            {"series": 'up{namespace="docker-registry",service="registry-metrics",pod="registry-0"}',
             "values": "1x5 0x20"}],
         "alert_rule_test": [
             {"eval_time": "10m", "alertname": "RegistryVolumeNearlyFull", "exp_alerts": []},
             {"eval_time": "16m", "alertname": "RegistryVolumeNearlyFull", "exp_alerts": [
                 {"exp_labels": {"severity": "warning", "namespace": "docker-registry",
                                 "persistentvolumeclaim": "registry-data"},
                  "exp_annotations": {
                      "summary": "The registry's claim registry-data is over 90% full.",
                      "description": "Pushes fail with a 500 once it is full. Delete old tags and let garbage "
                                     "collection free their layers, or grow the claim (README: Growing the volume)."}}]},
             {"eval_time": "9m", "alertname": "RegistryDown", "exp_alerts": []},
             {"eval_time": "12m", "alertname": "RegistryDown", "exp_alerts": [down]},
         ]},
        # No target at all (the ServiceMonitor selects nothing): down as well.
        {"interval": "1m", "input_series": [{"series": 'up{namespace="other",service="x"}', "values": "1x10"}],
         "alert_rule_test": [{"eval_time": "6m", "alertname": "RegistryDown", "exp_alerts": [down]}]},
    ]}
    # promtool's clock starts at 0 (1970): the certificate's rule comes from the program run on
    # a day of 1970 (the harness moves the program's and the providers' clock), so that its
    # renewal window is a few hundred days after promtool's 0, evaluated once a day.
    day = 86400
    in_1970 = evaluate(MONITORED, clock=lambda: dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    (early_rule,) = in_1970.of_type(PROMETHEUS_RULE)
    early_file = tmp_path / "certificate.rules.yaml"
    early_file.write_text(yaml.safe_dump(early_rule.inputs["spec"]))
    early_expires = dt.datetime.fromisoformat(in_1970.outputs["servingCertificateExpires"])
    early_window = int(early_expires.timestamp()) - 30 * day
    certificate = {"rule_files": [str(early_file)], "evaluation_interval": "1d", "tests": [
        {"interval": "1d", "input_series": [], "alert_rule_test": [
            {"eval_time": f"{early_window // day - 1}d", "alertname": "RegistryCertificateExpiresSoon", "exp_alerts": []},
            {"eval_time": f"{early_window // day + 1}d", "alertname": "RegistryCertificateExpiresSoon",
             "exp_alerts": [{"exp_labels": {"severity": "warning"},
                             "exp_annotations": declared["RegistryCertificateExpiresSoon"]}]}]}]}
    for name, content in (("registry.test.yaml", tests), ("certificate.test.yaml", certificate)):
        test_file = tmp_path / name
        test_file.write_text(yaml.safe_dump(content))
        code, said = promtool("test", "rules", str(test_file))
        assert code == 0 and "SUCCESS" in said, said


def test_the_collector_is_no_outage_and_its_failure_is_an_alert(rule_file, tmp_path):
    """While the garbage collector runs (the init container of the registry's pod, after the
    weekly restart), the registry is away on purpose: RegistryDown waits for the collection to
    end, however long, and 5 minutes more. A collector that failed (its init container ran again:
    a restart in its status) is RegistryGarbageCollectionFailed, for as long as that pod lives."""
    declared = {rule["alert"]: rule["annotations"] for rule in yaml.safe_load(rule_file.read_text())["groups"][0]["rules"]}
    scraped = 'up{namespace="docker-registry",service="registry-metrics",pod="registry-5c9f-x1"}'
    collector = 'namespace="docker-registry",container="garbage-collect",pod="registry-5c9f-x2"'
    failed_pod = 'namespace="docker-registry",container="garbage-collect",pod="registry-5c9f-x3"'
    down = {"exp_labels": {"severity": "critical"}, "exp_annotations": declared["RegistryDown"]}
    tests = {"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": [
        # Up for 5 minutes; then the restart: no scrape for 25 minutes, the first 15 of them collecting.
        {"interval": "1m", "input_series": [
            {"series": scraped, "values": "1x5 0x25"},
            {"series": f"kube_pod_init_container_status_running{{{collector}}}", "values": "0x5 1x15 0x10"}],
         "alert_rule_test": [
             {"eval_time": "18m", "alertname": "RegistryDown", "exp_alerts": []},
             {"eval_time": "23m", "alertname": "RegistryDown", "exp_alerts": []},
             {"eval_time": "27m", "alertname": "RegistryDown", "exp_alerts": [down]},
             {"eval_time": "27m", "alertname": "RegistryGarbageCollectionFailed", "exp_alerts": []}]},
        {"interval": "1m", "input_series": [
            {"series": scraped, "values": "1x20"},
            {"series": f"kube_pod_init_container_status_restarts_total{{{failed_pod}}}", "values": "0x5 1x15"}],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "RegistryGarbageCollectionFailed", "exp_alerts": []},
             {"eval_time": "7m", "alertname": "RegistryGarbageCollectionFailed", "exp_alerts": [
                 {"exp_labels": {"severity": "warning", "namespace": "docker-registry", "container": "garbage-collect",
                                 "pod": "registry-5c9f-x3"},
                  "exp_annotations": {
                      "summary": "The registry's garbage collector failed when pod registry-5c9f-x3 started.",
                      "description": "The registry serves, uncollected: no space was freed. kubectl -n docker-registry "
                                     "logs registry-5c9f-x3 -c garbage-collect --previous says why (most often a "
                                     "manifest it cannot read). The alert ends with the next start whose collection "
                                     "succeeds."}}]},
             {"eval_time": "7m", "alertname": "RegistryDown", "exp_alerts": []}]},
    ]}
    test_file = tmp_path / "collector.test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    code, said = promtool("test", "rules", str(test_file))
    assert code == 0 and "SUCCESS" in said, said


def test_without_garbage_collection_there_is_no_collector_alert():
    (rule,) = evaluate({**MONITORED, "garbageCollection": "false"}).of_type(PROMETHEUS_RULE)
    rules = rule.inputs["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["RegistryVolumeNearlyFull", "RegistryDown", "RegistryCertificateExpiresSoon"]
    assert "garbage-collect" not in yaml.safe_dump(rules)


def test_the_real_registry_serves_its_metrics_on_the_debug_port_only(monitored, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(monitored.outputs["caCertificatePem"])
    with registry_pod(monitored, tmp_path / "pod", REGISTRY_IP, deployment="registry-deployment"):
        with urllib.request.urlopen(f"http://{REGISTRY_IP}:5001/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert "registry_http_in_flight_requests{handler=\"manifest\"}" in metrics
        tls_port = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca_file),
             "--resolve", f"{GUIDE_CONFIG['hostname']}:5000:{REGISTRY_IP}",
             f"https://{GUIDE_CONFIG['hostname']}:5000/metrics"], capture_output=True, text=True, timeout=20, check=False)
        assert tls_port.stdout == "404", tls_port
