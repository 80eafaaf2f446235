"""Pull-through caches (``mirrors``): what the program declares for each, under the mocks.

Each cache is the registry's Deployment with its own name, volume and proxy settings, the same
TLS and htpasswd Secrets, a Service on its own port of the registry's IP, and a NetworkPolicy
that lets it reach only its upstream and the cluster DNS.
"""

from __future__ import annotations

import json

import pytest

from harness import GUIDE_CONFIG, evaluate, is_secret_marker
from nodebed import declared_plan

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SHARED_IP = "metallb.universe.tf/allow-shared-ip"
PASSWORD = "s3cret-for-quay"
MIRRORS = [
    {"upstream": "docker.io"},
    {"upstream": "ghcr.io", "port": 5443},
    {"upstream": "quay.io", "username": "robot", "password": PASSWORD},
]
CONFIG = {**GUIDE_CONFIG, "mirrors": MIRRORS}
SLUGS = ("docker-io", "ghcr-io", "quay-io")
DNS_RULE = {
    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


@pytest.fixture(scope="module")
def cached():
    return evaluate(CONFIG, secret_keys=("mirrors",))


@pytest.fixture(scope="module")
def plain():
    return evaluate(GUIDE_CONFIG)


def pod(evaluation, name):
    return evaluation.named(name).inputs["spec"]["template"]["spec"]


def env_of(evaluation, name):
    return {item["name"]: item for item in pod(evaluation, name)["containers"][0]["env"]}


def volumes_of(evaluation, name):
    return {volume["name"]: volume for volume in pod(evaluation, name)["volumes"]}


def auto_name(evaluation, name):
    return evaluation.named(name).outputs["metadata"]["name"]


def test_the_stack_output_maps_each_upstream_to_its_cache(cached, plain):
    assert cached.outputs["mirrors"] == {
        "docker.io": "registry.cube.local:5001",
        "ghcr.io": "registry.cube.local:5443",
        "quay.io": "registry.cube.local:5002",
    }
    assert plain.outputs["mirrors"] == {}


def test_one_deployment_per_cache_pointing_at_its_upstream(cached):
    assert sorted(d.name for d in cached.of_type(DEPLOYMENT)) == sorted(
        ["registry-deployment", *(f"registry-cache-{slug}-deployment" for slug in SLUGS)]
    )
    urls = {slug: env_of(cached, f"registry-cache-{slug}-deployment")["REGISTRY_PROXY_REMOTEURL"]["value"]
            for slug in SLUGS}
    assert urls == {"docker-io": "https://registry-1.docker.io", "ghcr-io": "https://ghcr.io", "quay-io": "https://quay.io"}
    assert "REGISTRY_PROXY_REMOTEURL" not in env_of(cached, "registry-deployment")


def test_upstream_credentials_come_only_from_their_secret(cached):
    secret = cached.named("registry-cache-quay-io-upstream")
    assert secret.inputs["stringData"] == {"username": "robot", "password": PASSWORD}
    env = env_of(cached, "registry-cache-quay-io-deployment")
    for variable, key in (("REGISTRY_PROXY_USERNAME", "username"), ("REGISTRY_PROXY_PASSWORD", "password")):
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": auto_name(cached, secret.name), "key": key}
    for slug in ("docker-io", "ghcr-io"):
        names = set(env_of(cached, f"registry-cache-{slug}-deployment"))
        assert not {"REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD"} & names
    assert len([s for s in cached.of_type(SECRET) if s.name.endswith("-upstream")]) == 1
    for deployment in cached.of_type(DEPLOYMENT):
        assert PASSWORD not in json.dumps(deployment.wire_inputs), deployment.name


def test_the_upstream_password_is_secret_on_the_wire(cached):
    wire = cached.named("registry-cache-quay-io-upstream").wire_inputs["stringData"]
    assert is_secret_marker(wire) and wire["value"]["password"] == PASSWORD
    for resource in cached.resources:
        if resource.name != "registry-cache-quay-io-upstream":
            assert PASSWORD not in json.dumps(resource.wire_inputs), resource.name
    assert PASSWORD not in json.dumps(cached.outputs)


def test_each_cache_mounts_its_own_claim_and_the_registry_secrets(cached):
    registry_volumes = volumes_of(cached, "registry-deployment")
    tls, htpasswd = auto_name(cached, "registry-tls"), auto_name(cached, "registry-htpasswd")
    assert registry_volumes["certs"]["secret"]["secretName"] == tls
    claims = set()
    for slug in SLUGS:
        volumes = volumes_of(cached, f"registry-cache-{slug}-deployment")
        assert volumes["certs"]["secret"]["secretName"] == tls
        assert volumes["auth"]["secret"]["secretName"] == htpasswd
        claim = cached.named(f"registry-cache-{slug}-data")
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == auto_name(cached, claim.name)
        assert claim.inputs["spec"]["resources"]["requests"]["storage"] == "10Gi"
        assert claim.inputs["spec"]["storageClassName"] == "longhorn"
        claims.add(volumes["data"]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 3 and registry_volumes["data"]["persistentVolumeClaim"]["claimName"] not in claims


def test_a_cache_is_the_registry_deployment_plus_its_proxy_settings(cached):
    registry = cached.named("registry-deployment").inputs
    for slug in SLUGS:
        cache = cached.named(f"registry-cache-{slug}-deployment").inputs
        assert cache["spec"]["strategy"] == registry["spec"]["strategy"] == {"type": "Recreate"}
        extra = {k: v for k, v in cache["metadata"]["annotations"].items() if k not in registry["metadata"]["annotations"]}
        assert registry["metadata"]["annotations"].items() <= cache["metadata"]["annotations"].items()
        # The one reviewed checkov exception a cache adds: credentials in the environment (from a Secret).
        assert [v.split("=")[0] for v in extra.values()] == (["CKV_K8S_35"] if slug == "quay-io" else [])
        assert cache["spec"]["template"]["metadata"]["annotations"] == registry["spec"]["template"]["metadata"]["annotations"]
        cache_container = dict(cache["spec"]["template"]["spec"]["containers"][0])
        registry_container = dict(registry["spec"]["template"]["spec"]["containers"][0])
        cache_env, registry_env = cache_container.pop("env"), registry_container.pop("env")
        assert cache_container == registry_container  # image, probes, limits, security context, mounts
        # The registry's environment, then the cache's own (the registry's delete setting is its own).
        registry_env = [item for item in registry_env if item["name"] != "REGISTRY_STORAGE_DELETE_ENABLED"]
        assert cache_env[: len(registry_env)] == registry_env
        assert {item["name"] for item in cache_env[len(registry_env):]} <= {
            "REGISTRY_PROXY_REMOTEURL", "REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD",
            "REGISTRY_STORAGE_DELETE_ENABLED"}
        # Expiry deletes through the local store: every cache, the default ttl's included.
        assert {"name": "REGISTRY_STORAGE_DELETE_ENABLED", "value": "true"} in cache_env
        for key in ("securityContext", "automountServiceAccountToken", "nodeSelector"):
            assert cache["spec"]["template"]["spec"][key] == registry["spec"]["template"]["spec"][key]


def test_services_share_the_ip_each_on_its_port_selecting_its_own_pods(cached):
    services = {s.name: s.inputs for s in cached.of_type(SERVICE)}
    assert services["registry-service"]["spec"]["ports"][0]["port"] == 5000
    keys = {s["metadata"]["annotations"][SHARED_IP] for s in services.values()}
    assert len(keys) == 1 and keys != {""}
    assert {s["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"] for s in services.values()} == {"192.168.0.202"}
    selectors = []
    for slug, port in zip(SLUGS, (5001, 5443, 5002), strict=True):
        service = services[f"registry-cache-{slug}-service"]
        (service_port,) = service["spec"]["ports"]
        assert (service_port["port"], service_port["targetPort"], service["spec"]["type"]) == (port, "https", "LoadBalancer")
        labels = cached.named(f"registry-cache-{slug}-deployment").inputs["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"] == labels
        selectors.append(labels)
    registry_selector = services["registry-service"]["spec"]["selector"]
    for labels in selectors:
        assert not registry_selector.items() <= labels.items(), "the registry's Service must not select a cache"
    assert len({json.dumps(s, sort_keys=True) for s in selectors}) == 3


def test_a_cache_may_reach_only_its_upstream_port_and_the_cluster_dns(cached):
    registry_policy = cached.named("registry-network-policy").inputs["spec"]
    assert registry_policy["egress"] == [] and registry_policy["policyTypes"] == ["Ingress", "Egress"]
    for slug in SLUGS:
        policy = cached.named(f"registry-cache-{slug}-network-policy").inputs["spec"]
        labels = cached.named(f"registry-cache-{slug}-deployment").inputs["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"] == {"matchLabels": labels}
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        assert policy["ingress"] == [{"ports": [{"port": 5000, "protocol": "TCP"}]}]
        assert policy["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}, DNS_RULE]


def test_an_upstream_on_a_custom_port_is_reachable_on_that_port_only():
    evaluation = evaluate({**GUIDE_CONFIG, "mirrors": [{"upstream": "harbor.lab.test", "url": "https://harbor.lab.test:8443"}]})
    policy = evaluation.named("registry-cache-harbor-lab-test-network-policy").inputs["spec"]
    assert policy["egress"] == [{"ports": [{"port": 8443, "protocol": "TCP"}]}, DNS_RULE]
    env = env_of(evaluation, "registry-cache-harbor-lab-test-deployment")
    assert env["REGISTRY_PROXY_REMOTEURL"]["value"] == "https://harbor.lab.test:8443"


def test_without_auth_caches_mount_no_htpasswd():
    evaluation = evaluate({**GUIDE_CONFIG, "auth": "false", "mirrors": [{"upstream": "docker.io"}]})
    env = env_of(evaluation, "registry-cache-docker-io-deployment")
    assert "auth" not in volumes_of(evaluation, "registry-cache-docker-io-deployment")
    assert not [name for name in env if name.startswith("REGISTRY_AUTH")]


def test_k3s_restarts_only_once_the_caches_are_in_place():
    """Their Deployments and Services are among the registry's workloads, which node restarts await."""
    evaluation = evaluate({**CONFIG, "nodes": [{"name": "control01", "host": "192.168.0.101", "role": "server"}]},
                          secret_keys=("mirrors",))
    restart = evaluation.named("nodes-control01-restart")
    for slug in SLUGS:
        for kind in ("deployment", "service"):
            assert evaluation.named(f"registry-cache-{slug}-{kind}").urn in restart.dependencies, (slug, kind)


def comparable(evaluation):
    """Every declared input, by resource name (certificate material differs between runs)."""
    volatile = {"tls:index/privateKey:PrivateKey", "tls:index/selfSignedCert:SelfSignedCert",
                "tls:index/certRequest:CertRequest", "tls:index/locallySignedCert:LocallySignedCert",
                "random:index/randomPassword:RandomPassword"}
    result = {}
    for resource in evaluation.resources:
        if resource.type in volatile or resource.name in ("registry-tls", "registry-htpasswd"):
            result[resource.name] = resource.type
            continue
        inputs = json.loads(json.dumps(resource.inputs))
        if resource.type == DEPLOYMENT:
            inputs["spec"]["template"]["metadata"].pop("annotations", None)
            for volume in inputs["spec"]["template"]["spec"]["volumes"]:
                volume.get("secret", {}).pop("secretName", None)
        result[resource.name] = inputs
    return result


def test_without_mirrors_nothing_changes(plain):
    baseline = comparable(plain)
    assert not [name for name in baseline if "cache" in name]
    assert comparable(evaluate({**GUIDE_CONFIG, "mirrors": []})) == baseline


def test_adding_or_removing_a_cache_leaves_the_registrys_service_as_it_is(plain, cached):
    """Its MetalLB sharing key is there without caches too (see network.shared_ip_key)."""
    def registry_service(evaluation):
        return evaluation.named("registry-service").inputs

    assert registry_service(plain) == registry_service(cached)
    assert registry_service(plain)["metadata"]["annotations"][SHARED_IP] == "k3s-registry-docker-registry"


@pytest.mark.parametrize(("ttl", "meaning"), [("720h", "expires after 30 days"), ("0s", "kept until deleted by hand")])
def test_a_registry_3_cache_takes_its_ttl_and_0s_keeps_content(ttl, meaning):
    evaluation = evaluate({**GUIDE_CONFIG, "image": "registry:3.0.0", "mirrors": [{"upstream": "docker.io", "ttl": ttl}]})
    env = env_of(evaluation, "registry-cache-docker-io-deployment")
    assert env["REGISTRY_PROXY_TTL"]["value"] == ttl, meaning
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"]["value"] == "true"


# ------------------------------------------------------------------ anonymous caches

ANONYMOUS_NODES = [{"name": "control01", "host": "192.168.0.101", "role": "server"},
                   {"name": "cube01", "host": "fd00::11", "role": "agent"}]
ANONYMOUS_CONFIG = {**GUIDE_CONFIG, "nodes": ANONYMOUS_NODES, "clusterCidr": "10.52.0.0/16",
                    "mirrors": [{"upstream": "docker.io", "anonymous": True}, {"upstream": "ghcr.io"}]}


@pytest.fixture(scope="module")
def anonymous():
    return evaluate(ANONYMOUS_CONFIG)


def test_an_anonymous_cache_asks_for_no_password(anonymous):
    assert "auth" not in volumes_of(anonymous, "registry-cache-docker-io-deployment")
    assert not [name for name in env_of(anonymous, "registry-cache-docker-io-deployment") if name.startswith("REGISTRY_AUTH")]
    # The other cache, and the registry, still do.
    for name in ("registry-cache-ghcr-io-deployment", "registry-deployment"):
        assert volumes_of(anonymous, name)["auth"]["secret"]["secretName"] == auto_name(anonymous, "registry-htpasswd")


def test_only_the_nodes_reach_an_anonymous_cache_through_its_ip(anonymous):
    spec = anonymous.named("registry-cache-docker-io-service").inputs["spec"]
    assert spec["loadBalancerSourceRanges"] == ["192.168.0.101/32", "fd00::11/128"]
    assert spec["allocateLoadBalancerNodePorts"] is False, "a node port would bypass the source ranges"
    for name in ("registry-cache-ghcr-io-service", "registry-service"):
        spec = anonymous.named(name).inputs["spec"]
        assert "loadBalancerSourceRanges" not in spec and "allocateLoadBalancerNodePorts" not in spec, name
    # The IP is still shared: MetalLB shares it between Services of the same traffic policy.
    annotations = {s.inputs["metadata"]["annotations"][SHARED_IP] for s in anonymous.of_type(SERVICE)}
    assert len(annotations) == 1


def test_an_anonymous_caches_pod_admits_the_nodes_and_the_pod_network_only(anonymous):
    policy = anonymous.named("registry-cache-docker-io-network-policy").inputs["spec"]
    assert policy["ingress"] == [{
        "from": [{"ipBlock": {"cidr": "192.168.0.101/32"}}, {"ipBlock": {"cidr": "fd00::11/128"}},
                 {"ipBlock": {"cidr": "10.52.0.0/16"}}],
        "ports": [{"port": 5000, "protocol": "TCP"}],
    }]
    assert policy["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}, DNS_RULE]
    other = anonymous.named("registry-cache-ghcr-io-network-policy").inputs["spec"]
    assert other["ingress"] == [{"ports": [{"port": 5000, "protocol": "TCP"}]}]


def test_nodes_get_no_credentials_for_an_anonymous_cache(anonymous):
    for node in ("control01", "cube01"):
        plan = declared_plan(anonymous, node)
        assert plan.anonymous_caches == ("registry.cube.local:5001",), node
        assert plan.caches == (("docker.io", "registry.cube.local:5001"), ("ghcr.io", "registry.cube.local:5002"))
        caches = json.dumps([{"address": "registry.cube.local:5001", "anonymous": True, "upstream": "docker.io"},
                             {"address": "registry.cube.local:5002", "upstream": "ghcr.io"}])
        for script in ("k3s/install", "k3s/probe"):
            assert f"caches='{caches}'" in plan.scripts()[script], (node, script)


def test_caches_that_are_not_anonymous_leave_the_nodes_plans_as_they_were():
    """No new plan input for a stack without anonymous caches: its nodes' scripts stay the same."""
    config = {**CONFIG, "nodes": ANONYMOUS_NODES[:1]}
    plan = declared_plan(evaluate(config, secret_keys=("mirrors",)), "control01")
    assert "anonymous_caches" not in plan.to_props()
    caches = json.dumps([{"address": "registry.cube.local:5001", "upstream": "docker.io"},
                         {"address": "registry.cube.local:5443", "upstream": "ghcr.io"},
                         {"address": "registry.cube.local:5002", "upstream": "quay.io"}])
    assert f"caches='{caches}'" in plan.scripts()["k3s/install"]
