"""The cluster side as declared: every input that matters, and how the objects are wired."""

import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import GUIDE_CONFIG, evaluate

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
NAMESPACE = "kubernetes:core/v1:Namespace"
KEY = "tls:index/privateKey:PrivateKey"
CA = "tls:index/selfSignedCert:SelfSignedCert"
CSR = "tls:index/certRequest:CertRequest"
CERT = "tls:index/locallySignedCert:LocallySignedCert"
PASSWORD = "random:index/randomPassword:RandomPassword"


@pytest.fixture(scope="module")
def guide():
    return evaluate(GUIDE_CONFIG)


def pod_spec(evaluation):
    return evaluation.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]


def container(evaluation):
    (only,) = pod_spec(evaluation)["containers"]
    return only


def test_every_object_is_a_child_of_the_registry_component(guide):
    component = guide.one("k3s-registry:index:Registry")
    cluster_side = [r for r in guide.resources if r.type.startswith(("kubernetes:", "tls:"))]
    cluster_side += guide.of_type(PASSWORD)
    assert {r.type for r in cluster_side} == {
        DEPLOYMENT, SERVICE, SECRET, CLAIM, NAMESPACE, KEY, CA, CSR, CERT, PASSWORD,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        # the maintenance restart (garbage collection is on by default), and its admission policy
        "kubernetes:batch/v1:CronJob", "kubernetes:core/v1:ServiceAccount", "kubernetes:rbac.authorization.k8s.io/v1:Role",
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy",
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding",
    }
    for resource in cluster_side:
        assert resource.parent == component.urn, resource.name
        assert resource.name.startswith(f"{component.name}-"), resource.name


def test_everything_lives_in_the_configured_namespace(guide):
    assert guide.one(NAMESPACE).inputs["metadata"]["name"] == "docker-registry"
    for resource in guide.of_type(DEPLOYMENT) + guide.of_type(SERVICE) + guide.of_type(SECRET) + guide.of_type(CLAIM):
        assert resource.inputs["metadata"]["namespace"] == "docker-registry", resource.name


def test_the_namespace_enforces_the_restricted_pod_security_standard(guide):
    labels = guide.one(NAMESPACE).inputs["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_keys_are_rsa_4096_by_default_and_ecdsa_p256_on_request(guide):
    assert [key.inputs for key in guide.of_type(KEY)] == [{"algorithm": "RSA", "rsaBits": 4096}] * 2
    ecdsa = evaluate({**GUIDE_CONFIG, "keyAlgorithm": "ECDSA"})
    assert [key.inputs for key in ecdsa.of_type(KEY)] == [{"algorithm": "ECDSA", "ecdsaCurve": "P256"}] * 2
    pem = ecdsa.one(CERT).outputs["certPem"]
    assert isinstance(x509.load_pem_x509_certificate(pem.encode()).public_key(), ec.EllipticCurvePublicKey)


def test_certificate_names_the_hostname_and_the_served_ip(guide):
    request = guide.one(CSR).inputs
    assert request["subject"]["commonName"] == "registry.cube.local"
    assert request["dnsNames"] == ["registry.cube.local", "*.cube.local"]
    assert request["ipAddresses"] == ["192.168.0.202"]
    assert request["privateKeyPem"] == guide.named("registry-key").outputs["privateKeyPem"]
    inputs = guide.one(CERT).inputs
    assert inputs["validityPeriodHours"] == 365 * 24
    assert "server_auth" in inputs["allowedUses"]
    assert inputs["certRequestPem"] == guide.one(CSR).outputs["certRequestPem"]


def test_the_serving_certificate_is_signed_by_a_long_lived_ca(guide):
    ca = guide.one(CA).inputs
    assert ca["isCaCertificate"] is True and "cert_signing" in ca["allowedUses"]
    assert ca["validityPeriodHours"] == 3650 * 24
    assert ca["privateKeyPem"] == guide.named("registry-ca-key").outputs["privateKeyPem"]
    signed = guide.one(CERT).inputs
    assert signed["caCertPem"] == guide.one(CA).outputs["certPem"]
    assert signed["caPrivateKeyPem"] == guide.named("registry-ca-key").outputs["privateKeyPem"]
    assert guide.named("registry-ca-key").outputs != guide.named("registry-key").outputs


def test_issued_certificate_matches_the_service_address(guide):
    certificate = x509.load_pem_x509_certificate(guide.one(CERT).outputs["certPem"].encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service_ip = guide.one(SERVICE).inputs["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"]
    assert ipaddress.ip_address(service_ip) in names.get_values_for_type(x509.IPAddress)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "registry.cube.local"
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 4096


def test_validity_follows_config():
    evaluation = evaluate({**GUIDE_CONFIG, "certValidityDays": "90", "caValidityDays": "1000"})
    assert evaluation.one(CERT).inputs["validityPeriodHours"] == 90 * 24
    assert evaluation.one(CA).inputs["validityPeriodHours"] == 1000 * 24


def test_secret_is_a_tls_secret_of_the_serving_certificate_and_key(guide):
    secret = guide.named("registry-tls")
    assert secret.inputs["type"] == "kubernetes.io/tls"
    assert secret.inputs["stringData"] == {
        "tls.crt": guide.one(CERT).outputs["certPem"],
        "tls.key": guide.named("registry-key").outputs["privateKeyPem"],
    }
    ca_key = guide.named("registry-ca-key").outputs["privateKeyPem"]
    assert ca_key.splitlines()[1] not in str(secret.inputs), "the CA key never leaves Pulumi's state"


def test_the_private_key_reaches_the_secret_only_as_a_secret(guide):
    from harness import is_secret_marker

    string_data = guide.named("registry-tls").wire_inputs["stringData"]
    assert is_secret_marker(string_data) or is_secret_marker(string_data.get("tls.key"))


def test_claim_is_read_write_once_with_configured_class_and_size(guide):
    spec = guide.one(CLAIM).inputs["spec"]
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["storageClassName"] == "longhorn"
    assert spec["resources"] == {"requests": {"storage": "15Gi"}}


def test_claim_without_storage_class_uses_the_cluster_default():
    evaluation = evaluate({k: v for k, v in GUIDE_CONFIG.items() if k != "storageClass"})
    assert "storageClassName" not in evaluation.one(CLAIM).inputs["spec"]


def test_deployment_is_one_replica_recreated_on_change(guide):
    spec = guide.one(DEPLOYMENT).inputs["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert pod_spec(guide)["nodeSelector"] == {"node-type": "worker"}


def test_no_node_selector_unless_configured():
    evaluation = evaluate({k: v for k, v in GUIDE_CONFIG.items() if k != "nodeSelector"})
    assert "nodeSelector" not in pod_spec(evaluation)


def test_volumes_are_the_secret_and_claim_actually_declared(guide):
    volumes = {volume["name"]: volume for volume in pod_spec(guide)["volumes"]}
    assert volumes["certs"]["secret"]["secretName"] == guide.named("registry-tls").outputs["metadata"]["name"]
    assert volumes["auth"]["secret"]["secretName"] == guide.named("registry-htpasswd").outputs["metadata"]["name"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == guide.one(CLAIM).outputs["metadata"]["name"]
    mounts = {mount["name"]: mount for mount in container(guide)["volumeMounts"]}
    assert mounts["certs"]["readOnly"] is True
    assert mounts["data"]["mountPath"] == "/var/lib/registry"
    assert set(mounts) <= set(volumes)


def test_registry_reads_certificate_and_key_from_the_mounted_secret(guide):
    env = {item["name"]: item["value"] for item in container(guide)["env"]}
    certs_path = next(m["mountPath"] for m in container(guide)["volumeMounts"] if m["name"] == "certs")
    assert env["REGISTRY_HTTP_TLS_CERTIFICATE"] == f"{certs_path}/tls.crt"
    assert env["REGISTRY_HTTP_TLS_KEY"] == f"{certs_path}/tls.key"
    assert env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] == "/var/lib/registry"


def test_clients_with_the_credentials_may_delete_unless_deleting_is_off(guide):
    env = {item["name"]: item["value"] for item in container(guide)["env"]}
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    kept = evaluate({**GUIDE_CONFIG, "deleteEnabled": "false"})
    (kept_container,) = kept.named("registry-deployment").inputs["spec"]["template"]["spec"]["containers"]
    kept_env = {item["name"]: item["value"] for item in kept_container["env"]}
    # Said, not left out: the registry:3 image's own config.yml turns deletes on.
    assert kept_env["REGISTRY_STORAGE_DELETE_ENABLED"] == "false"


def test_what_the_registry_3_images_config_opens_is_closed_unless_asked_for(guide):
    """The image's config.yml logs at debug level and opens a debug server with metrics on :5001;
    its Dockerfile exports no traces. The pod says each, so any build of the image does the same."""
    env = {item["name"]: item["value"] for item in container(guide)["env"]}
    assert (env["REGISTRY_HTTP_DEBUG_ADDR"], env["REGISTRY_LOG_LEVEL"], env["OTEL_TRACES_EXPORTER"]) == ("", "info", "none")
    monitored = evaluate({**GUIDE_CONFIG, "monitoring": "true"})
    (monitored_container,) = monitored.named("registry-deployment").inputs["spec"]["template"]["spec"]["containers"]
    monitored_env = [(item["name"], item["value"]) for item in monitored_container["env"]]
    debug = [value for name, value in monitored_env if name == "REGISTRY_HTTP_DEBUG_ADDR"]
    assert debug == [":5001"], "one debug address: the metrics port"
    for cache in evaluate({**GUIDE_CONFIG, "mirrors": [{"upstream": "docker.io"}]}).of_type(DEPLOYMENT):
        (cache_container,) = cache.inputs["spec"]["template"]["spec"]["containers"]
        cache_env = {item["name"]: item["value"] for item in cache_container["env"]}
        assert cache_env["REGISTRY_HTTP_DEBUG_ADDR"] == "" and cache_env["OTEL_TRACES_EXPORTER"] == "none", cache.name


def test_probes_use_https_on_the_registry_port(guide):
    port_names = {port["name"] for port in container(guide)["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        http_get = container(guide)[probe]["httpGet"]
        assert http_get["scheme"] == "HTTPS" and http_get["port"] in port_names and http_get["path"] == "/"


def test_resources_have_requests_and_limits(guide):
    resources = container(guide)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"cpu", "memory"}


def test_pod_runs_restricted(guide):
    pod_security = pod_spec(guide)["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(guide)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    assert pod_spec(guide)["automountServiceAccountToken"] is False


def test_pod_template_carries_the_certificate_hash_so_a_new_certificate_rolls_the_pod(guide):
    annotations = guide.one(DEPLOYMENT).inputs["spec"]["template"]["metadata"]["annotations"]
    pem = guide.one(CERT).outputs["certPem"]
    assert annotations["k3s-registry.dev/certificate-sha256"] == hashlib.sha256(pem.encode()).hexdigest()


def test_image_is_the_pinned_default_or_the_configured_one(guide):
    assert container(guide)["image"] == "registry:3.1.1"
    other = evaluate({**GUIDE_CONFIG, "image": "mirror.cube.local:5000/registry:3.1.1"})
    assert container(other)["image"] == "mirror.cube.local:5000/registry:3.1.1"


def test_service_selects_the_pods_and_asks_metallb_for_the_ip(guide):
    service = guide.one(SERVICE).inputs
    template_labels = guide.one(DEPLOYMENT).inputs["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == template_labels
    assert guide.one(DEPLOYMENT).inputs["spec"]["selector"]["matchLabels"] == template_labels
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {"metallb.universe.tf/loadBalancerIPs": "192.168.0.202",
                                                  "metallb.universe.tf/allow-shared-ip": "k3s-registry-docker-registry"}
    assert "loadBalancerIP" not in service["spec"]


def test_network_policy_opens_only_the_registry_port_and_no_egress(guide):
    policy = guide.named("registry-network-policy").inputs
    template_labels = guide.one(DEPLOYMENT).inputs["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == "docker-registry"
    assert policy["spec"]["podSelector"] == {"matchLabels": template_labels}
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": container(guide)["ports"][0]["containerPort"], "protocol": "TCP"}]}]
    assert policy["spec"].get("egress", []) == []


def test_service_port_is_configured_and_targets_the_container_port(guide):
    other = evaluate({**GUIDE_CONFIG, "port": "443"})
    (port,) = other.one(SERVICE).inputs["spec"]["ports"]
    (container_port,) = container(other)["ports"]
    assert port["port"] == 443
    assert port["targetPort"] == container_port["name"] and container_port["containerPort"] == 5000
    assert other.outputs["registryAddress"] == "registry.cube.local", "on 443 an image reference carries no port"


def test_stack_outputs_give_address_ca_namespace_and_ip_but_never_the_key(guide):
    assert guide.outputs["registryAddress"] == "registry.cube.local:5000"
    assert guide.outputs["caCertificatePem"] == guide.one(CA).outputs["certPem"]
    assert guide.outputs["namespace"] == "docker-registry"
    assert guide.outputs["loadBalancerIp"] == "192.168.0.202"
    serving = guide.named("registry-cert")
    assert guide.outputs["servingCertificateExpires"] == serving.outputs["validityEndTime"]
    assert not any("PRIVATE KEY" in str(value) for value in guide.outputs.values())


def test_two_instances_of_the_component_do_not_collide():
    import pulumi

    from components.config import parse_settings

    from harness import run_function

    settings = parse_settings({"hostname": "registry.cube.local", "loadBalancerIp": "192.168.0.202"})

    def program():
        from components.cluster.registry import Registry

        Registry("blue", settings.registry)
        Registry("green", settings.registry, pulumi.ResourceOptions())

    evaluation = run_function(program)
    declared = [r for r in evaluation.resources if r.type != "pulumi:pulumi:Stack"]
    names = [r.name for r in declared]
    assert len(names) == len(set(names))
    assert {name.split("-")[0] for name in names} == {"blue", "green"}


def test_same_config_declares_identical_inputs_twice():
    config = {**GUIDE_CONFIG, "nodes": [{"name": "cube01", "host": "127.0.0.11", "role": "agent"}]}
    first, second = evaluate(config), evaluate(config)
    assert {r.urn: r.inputs for r in first.resources} == {r.urn: r.inputs for r in second.resources}
    assert len(first.resources) == len(second.resources)
    assert first.outputs == second.outputs


def test_each_deployment_and_service_is_awaited_for_rollout_timeout_and_the_deployment_on_its_own_status():
    from components.cluster.rollout import DEPLOYMENT_READY, WAIT_FOR_ANNOTATION

    evaluation = evaluate({**GUIDE_CONFIG, "rolloutTimeout": "45",
                           "mirrors": [{"upstream": "docker.io", "url": "https://registry-1.docker.io"}]})
    awaited = [*evaluation.of_type("kubernetes:apps/v1:Deployment"), *evaluation.of_type("kubernetes:core/v1:Service")]
    assert len(awaited) == 4
    for resource in awaited:
        assert resource.custom_timeouts == {"create": "45s", "update": "45s"}, resource.name
    for deployment in evaluation.of_type("kubernetes:apps/v1:Deployment"):
        assert deployment.inputs["metadata"]["annotations"][WAIT_FOR_ANNOTATION] == DEPLOYMENT_READY
        assert deployment.inputs["spec"]["replicas"] == 1  # what DEPLOYMENT_READY counts


def _bound(claim):
    """The claim as the cluster holds it once bound: the capacity of its volume."""
    size = claim.inputs["spec"]["resources"]["requests"]["storage"]
    return {**claim.outputs, "status": {"phase": "Bound", "capacity": {"storage": size}}}


def _claims(config):
    return {claim.name: claim for claim in evaluate(config).of_type("kubernetes:core/v1:PersistentVolumeClaim")}


@pytest.mark.parametrize(("claim_name", "setting", "config_of"), [
    ("registry-data", "storageSize", lambda size: {"storageSize": size}),
    ("registry-cache-docker-io-data", "mirrors[0].storageSize",
     lambda size: {"mirrors": [{"upstream": "docker.io", "url": "https://registry-1.docker.io", "storageSize": size}]}),
])
def test_a_smaller_size_stops_before_the_api_naming_the_setting_and_the_size_the_claim_holds(claim_name, setting, config_of):
    import pulumi

    mirror = {"mirrors": [{"upstream": "docker.io", "url": "https://registry-1.docker.io"}]}
    before = evaluate({**GUIDE_CONFIG, **mirror, **config_of("20Gi")})
    claim = before.named(claim_name)
    hook = before.hook(claim, "beforeUpdate")
    assert hook.opts.on_dry_run, "the check must run in preview too"

    def update_to(size):
        new = _claims({**GUIDE_CONFIG, **mirror, **config_of(size)})[claim_name]
        return hook(pulumi.ResourceHookArgs(urn=claim.urn, id=claim_name, name=claim_name, type=claim.type,
                                            new_inputs=new.inputs, old_inputs=claim.inputs, old_outputs=_bound(claim)))

    with pytest.raises(ValueError) as refused:
        update_to("19Gi")
    namespace = claim.inputs["metadata"]["namespace"]
    assert str(refused.value).startswith(
        f"{setting} is 19Gi, but the claim {namespace}/{claim.inputs['metadata']['name']} holds 20Gi, "
        "and Kubernetes never shrinks a claim. Set " + setting + " back to 20Gi")
    # The same size written otherwise, and a larger one, go on to the cluster.
    assert update_to("20480Mi") is None
    assert update_to("21474836480") is None
    assert update_to("25Gi") is None


def test_every_image_the_program_deploys_is_in_the_readmes_platform_table():
    """Each image must run on amd64, arm64 and arm/v7 (Pi racks and mini-PCs): the README's table
    says so for each, read from its publisher's build; a new image needs its row."""
    from harness import PROJECT_DIR

    def images_in(value) -> set[str]:
        """Every container's image in a declared object, wherever its pod spec sits."""
        if isinstance(value, list):
            return set().union(*map(images_in, value)) if value else set()
        if not isinstance(value, dict):
            return set()
        own = {c["image"] for key in ("containers", "initContainers") for c in value.get(key, [])}
        return own.union(*map(images_in, value.values()))

    everything = evaluate({**GUIDE_CONFIG, "retention": {"keepLast": 3}, "mirrors": [{"upstream": "docker.io"}]})
    images = set().union(*(images_in(resource.inputs) for resource in everything.resources))
    assert len(images) == 3, images
    readme = (PROJECT_DIR / "README.md").read_text()
    for image in images:
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{image}` |")]
        platforms = row.split(" | ")[2]
        assert {"amd64", "arm64", "arm/v7"} <= {p.split(" ")[0] for p in platforms.split(", ")}, row
