"""Tag retention: a CronJob that deletes the tags ``retention`` does not keep.

The client is regbot, from regclient (github.com/regclient/regclient, cmd/regbot), maintained
and made for this: a registry client scripted in Lua, with a ``--dry-run`` that logs every
delete and skips it. The job deletes tags only (regclient's TagDelete sends distribution 3's
DELETE of a tag first, scheme/reg/tag.go): a manifest another tag, an index or a referrer still
needs is never deleted by digest; what nothing kept reaches, the collector removes
(garbage_collection.py). The rules, for indexes, attestations and referrers too, are
retention.lua.

The job has its own registry user and password (RETENTION_USERNAME, in its own Secret; the
htpasswd file lists it next to the registry's user): revoking or rotating it touches nothing
else, and the registry's own password never reaches the job. htpasswd grants a user all or
nothing, so that user can push too; what limits the job is the rest: no Kubernetes API token,
a NetworkPolicy that lets it reach the registry's port only, a read-only root, no capabilities.
"""

from __future__ import annotations

import re
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import yaml

from ..settings import RETENTION_USERNAME, RegistrySettings, RetentionSettings
from .cron_job import job_service_account, quiet_hours_cron_job
from .deployment import container_security_context
from .naming import CONTAINER_PORT, RUN_AS_ID, job_pod_labels, object_labels, pod_labels
from .network import host_networks

REGBOT_IMAGE = "ghcr.io/regclient/regbot:v0.11.5"
"""regbot's scratch image at the release scripts/toolchain builds for the tests (toolchain/pins)."""
REGBOT_USER_ID = RUN_AS_ID
"""Not the image's appuser (1000): a UID no host account has, as the registry's. regbot needs
nothing of that user (no home: skipDockerConfig), only to run /regbot, which the image keeps
executable for all."""
COMPONENT = "retention"
CONFIG_MOUNT_PATH = "/etc/regbot"
CONFIG_FILE = "config.yml"
PASSWORD_KEY = "password"
PASSWORD_MOUNT_PATH = "/var/run/secrets/retention"
SCANNER_EXCEPTIONS = {
    "checkov.io/skip1": ("CKV_K8S_43=regbot's release tag, pinned: the tests run that release built from source"
                         " (toolchain/pins); no digest of the published image can be checked here"),
    "checkov.io/skip2": ("CKV_K8S_15=IfNotPresent on purpose: the job runs in the quiet hours, when an edge"
                         " cluster may be offline; the image is a pinned release tag"),
}
SCRIPT_NAME = "retention"
SCRIPT = (Path(__file__).parent / "retention.lua").read_text()
JOB_DEADLINE_SECONDS = 1800


def glob_to_lua_pattern(glob: str) -> str:
    """A protect glob as the anchored Lua pattern retention.lua matches tags with:
    ``*`` any run of characters, ``?`` one, ``[...]`` one of (``[!...]`` none of)."""
    out = ["^"]
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = glob.index("]", index)
            body = glob[index + 1:end]
            negate = body.startswith("!")
            members = re.sub(r"([^A-Za-z0-9-])", r"%\1", body[1:] if negate else body)
            out.append("[" + ("^" if negate else "") + members + "]")
            index = end
        elif char.isalnum():
            out.append(char)
        else:
            out.append("%" + char)  # Lua's escape for a magic character: . - and the rest
        index += 1
    out.append("$")
    return "".join(out)


def job_environment(settings: RegistrySettings, retention: RetentionSettings) -> dict[str, str]:
    """What retention.lua reads (see its header)."""
    return {
        "RETENTION_REGISTRY": settings.address,
        "RETENTION_KEEP_LAST": "" if retention.keep_last is None else str(retention.keep_last),
        "RETENTION_KEEP_DAYS": "" if retention.keep_days is None else str(retention.keep_days),
        "RETENTION_PROTECT": "\n".join(glob_to_lua_pattern(glob) for glob in retention.protect),
    }


def regbot_config(registry_address: str, ca_pem: str, authenticated: bool) -> str:
    """regbot's configuration (cmd/regbot/config.go): the registry, trusted by its CA only,
    the user and the password (a template regbot fills from the mounted Secret's file, so this
    file holds no secret), and the script."""
    credentials: dict[str, str] = {"registry": registry_address, "tls": "enabled", "regcert": ca_pem}
    if authenticated:
        password_file = f"{PASSWORD_MOUNT_PATH}/{PASSWORD_KEY}"
        credentials |= {"user": RETENTION_USERNAME, "pass": "{{ file \"" + password_file + "\" }}"}
    config = {
        "version": 1,
        "creds": [credentials],
        # No ~/.docker/config.json in the image: never look for one.
        "defaults": {"skipDockerConfig": True, "parallel": 1, "timeout": f"{JOB_DEADLINE_SECONDS - 60}s"},
        "scripts": [{"name": SCRIPT_NAME, "script": SCRIPT}],
    }
    return yaml.safe_dump(config, sort_keys=False)


def regbot_arguments(retention: RetentionSettings) -> list[str]:
    return ["once", "--config", f"{CONFIG_MOUNT_PATH}/{CONFIG_FILE}", *(["--dry-run"] if retention.dry_run else [])]


def create_retention(
    name: str,
    settings: RegistrySettings,
    retention: RetentionSettings,
    namespace: pulumi.Input[str],
    trust_anchor_pem: pulumi.Input[str],
    password: pulumi.Input[str] | None,
    parent: pulumi.Resource,
) -> k8s.batch.v1.CronJob:
    """The CronJob, its configuration, its password Secret (``password``: the retention user's,
    None without auth), its ServiceAccount and its NetworkPolicy."""
    job = f"{name}-{COMPONENT}"
    opts = pulumi.ResourceOptions(parent=parent)
    labels = object_labels(name, COMPONENT)
    account = job_service_account(name, COMPONENT, namespace, parent)
    config = k8s.core.v1.ConfigMap(
        f"{job}-config",
        metadata=k8s.meta.v1.ObjectMetaArgs(namespace=namespace, labels=labels),
        data={
            CONFIG_FILE: pulumi.Output.from_input(trust_anchor_pem).apply(
                lambda ca_pem: regbot_config(settings.address, ca_pem, password is not None)
            )
        },
        opts=opts,
    )
    env = [k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in job_environment(settings, retention).items()]
    mounts = [k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONFIG_MOUNT_PATH, read_only=True)]
    volumes = [k8s.core.v1.VolumeArgs(
        name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config.metadata.name)
    )]
    if password is not None:
        secret = k8s.core.v1.Secret(
            f"{job}-credentials",
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=namespace, labels=labels),
            type="Opaque",
            string_data={PASSWORD_KEY: pulumi.Output.secret(password)},
            opts=opts,
        )
        mounts.append(k8s.core.v1.VolumeMountArgs(name="credentials", mount_path=PASSWORD_MOUNT_PATH, read_only=True))
        volumes.append(k8s.core.v1.VolumeArgs(
            name="credentials",
            secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=secret.metadata.name, default_mode=0o440),
        ))
    _create_network_policy(name, settings, namespace, parent)
    pod_spec = k8s.core.v1.PodSpecArgs(
        service_account_name=account.metadata.name,
        automount_service_account_token=False,
        restart_policy="Never",
        # The registry's name as its certificate says, at the address MetalLB gives it: the
        # cluster DNS does not know the name (the nodes have it in /etc/hosts).
        host_aliases=[k8s.core.v1.HostAliasArgs(ip=settings.load_balancer_ip, hostnames=[settings.hostname])],
        node_selector=dict(settings.node_selector) or None,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True,
            run_as_user=REGBOT_USER_ID,
            run_as_group=REGBOT_USER_ID,
            fs_group=REGBOT_USER_ID,  # the Secret's file is root's, of this group, mode 0440
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        containers=[k8s.core.v1.ContainerArgs(
            name=COMPONENT,
            image=REGBOT_IMAGE,
            image_pull_policy="IfNotPresent",
            args=regbot_arguments(retention),
            env=env,
            volume_mounts=mounts,
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "10m", "memory": "32Mi"}, limits={"cpu": "500m", "memory": "256Mi"}
            ),
            security_context=container_security_context(),
        )],
        volumes=volumes,
    )
    return quiet_hours_cron_job(
        name, COMPONENT, namespace, retention.schedule, retention.time_zone, pod_spec,
        deadline_seconds=JOB_DEADLINE_SECONDS, annotations=SCANNER_EXCEPTIONS, parent=parent,
    )


def _create_network_policy(
    name: str, settings: RegistrySettings, namespace: pulumi.Input[str], parent: pulumi.Resource
) -> k8s.networking.v1.NetworkPolicy:
    """The job reaches the registry and nothing else; nothing reaches it. The registry's
    address is MetalLB's, which kube-proxy turns into the registry pod's: both are admitted,
    since a policy may see the connection either side of that translation."""
    return k8s.networking.v1.NetworkPolicy(
        f"{name}-{COMPONENT}-network-policy",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=f"{name}-{COMPONENT}", namespace=namespace, labels=object_labels(name, COMPONENT)
        ),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=job_pod_labels(name, COMPONENT)),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=[
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[k8s.networking.v1.NetworkPolicyPeerArgs(
                        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pod_labels(name))
                    )],
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=CONTAINER_PORT, protocol="TCP")],
                ),
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[k8s.networking.v1.NetworkPolicyPeerArgs(
                        ip_block=k8s.networking.v1.IPBlockArgs(cidr=host_networks([settings.load_balancer_ip])[0])
                    )],
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=settings.port, protocol="TCP")],
                ),
            ],
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
