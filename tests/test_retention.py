"""The retention setting and the CronJob it declares (the resource graph under the mocks).

What the job does to a registry is tests/test_retention_real.py (regbot and distribution 2.8).
"""

import pytest

from components.cluster.retention import REGBOT_IMAGE, glob_to_lua_pattern
from components.config import ConfigError, parse_settings

from harness import evaluate
from pulumi_real import pins

BASE = {"hostname": "registry.cube.test", "loadBalancerIp": "192.168.0.202"}
CRON_JOB = "kubernetes:batch/v1:CronJob"
RETENTION_JOB = "registry-retention-cron-job"


@pytest.mark.parametrize(("glob", "pattern"), [
    ("latest", "^latest$"),
    ("v*", "^v.*$"),
    ("v[0-9]*.[0-9]*", "^v[0-9].*%.[0-9].*$"),
    ("build-?", "^build%-.$"),
    ("[!v]*", "^[^v].*$"),
    ("release_1.2", "^release%_1%.2$"),  # Lua: % before any non-alphanumeric is that character
])
def test_a_protect_glob_becomes_an_anchored_lua_pattern(glob, pattern):
    """How Lua then matches them against tags is the real test's (regbot's gopher-lua)."""
    assert glob_to_lua_pattern(glob) == pattern


def settings_with(retention):
    return parse_settings({**BASE, "retention": __import__("json").dumps(retention)})


def test_retention_is_off_by_default_and_declares_nothing():
    assert parse_settings(BASE).registry.retention is None
    assert not [job for job in evaluate(BASE).of_type(CRON_JOB) if "retention" in job.name]


def test_the_defaults_and_every_setting():
    retention = settings_with({"keepLast": 5}).registry.retention
    assert (retention.keep_last, retention.keep_days, retention.protect, retention.schedule, retention.time_zone,
            retention.dry_run) == (5, None, ("latest",), "0 3 * * *", "Etc/UTC", False)
    retention = settings_with({"keepDays": 30, "protect": ["v*", "stable"], "schedule": "15  2 * * 0",
                               "timeZone": "Europe/Berlin", "dryRun": True}).registry.retention
    assert (retention.keep_last, retention.keep_days, retention.protect, retention.schedule, retention.time_zone,
            retention.dry_run) == (None, 30, ("v*", "stable"), "15 2 * * 0", "Europe/Berlin", True)


@pytest.mark.parametrize(("retention", "message"), [
    ({}, "sets neither keepLast nor keepDays"),
    ("keep 10", "must be an object"),
    ({"keepLast": 0}, "keepLast: 0 is not a whole number of tags per repository from 1 to 100000"),
    ({"keepDays": "30"}, "keepDays: '30' is not a whole number of days"),
    ({"keepLast": True}, "keepLast: True is not a whole number"),
    ({"keepLast": 3, "keep": 3}, "keep: not a retention setting"),
    ({"keepLast": 3, "protect": "latest"}, "protect: must be a list of tag patterns"),
    ({"keepLast": 3, "protect": ["v1/*"]}, "protect: 'v1/*' is not a tag pattern"),
    ({"keepLast": 3, "protect": ["v[0-9"]}, "protect: 'v[0-9' is not a tag pattern"),
    ({"keepLast": 3, "schedule": "daily"}, "schedule: 'daily' is not a cron schedule"),
    ({"keepLast": 3, "schedule": "CRON_TZ=UTC 0 3 * * *"}, "put it in timeZone instead"),
    ({"keepLast": 3, "timeZone": "Mars/Olympus"}, "timeZone: 'Mars/Olympus' is not a time zone name"),
    ({"keepLast": 3, "dryRun": "yes"}, "dryRun: 'yes' is not a boolean"),
])
def test_a_bad_retention_names_the_key_and_the_fix(retention, message):
    with pytest.raises(ConfigError) as error:
        settings_with(retention)
    problems = error.value.problems
    assert any(problem.startswith("k3s-registry:retention: ") and message in problem for problem in problems), problems


def test_retention_needs_deletes_unless_it_only_lists():
    with pytest.raises(ConfigError, match="retention: deletes tags, but deleteEnabled is false"):
        parse_settings({**BASE, "deleteEnabled": "false", "retention": '{"keepLast": 3}'})
    assert parse_settings({**BASE, "deleteEnabled": "false", "retention": '{"keepLast": 3, "dryRun": true}'})


def test_the_registry_user_cannot_be_the_jobs():
    with pytest.raises(ConfigError, match="authUsername: 'retention' is the retention job's own registry user"):
        parse_settings({**BASE, "authUsername": "retention", "retention": '{"keepLast": 3}'})


def test_the_cron_job_runs_restricted_with_no_api_token_and_reaches_only_the_registry():
    declared = evaluate({**BASE, "port": "5443", "retention": {"keepLast": 3, "schedule": "0 4 * * 6",
                                                               "timeZone": "Europe/Berlin"}})
    job = declared.named(RETENTION_JOB).inputs
    assert (job["spec"]["schedule"], job["spec"]["timeZone"], job["spec"]["concurrencyPolicy"]) == (
        "0 4 * * 6", "Europe/Berlin", "Forbid")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert declared.named("registry-retention-service-account").inputs["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] >= 10000
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["hostAliases"] == [{"ip": "192.168.0.202", "hostnames": ["registry.cube.test"]}]
    assert container["args"] == ["once", "--config", "/etc/regbot/config.yml"]
    assert {item["name"]: item["value"] for item in container["env"]}["RETENTION_REGISTRY"] == "registry.cube.test:5443"
    policy = declared.named("registry-retention-network-policy").inputs["spec"]
    assert policy["ingress"] == [] and policy["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["ports"] for rule in policy["egress"]] == [[{"port": 5000, "protocol": "TCP"}],
                                                           [{"port": 5443, "protocol": "TCP"}]]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "192.168.0.202/32"}}]


def test_without_auth_the_job_has_no_credentials():
    declared = evaluate({**BASE, "auth": "false", "retention": {"keepDays": 14}})
    config = declared.one("kubernetes:core/v1:ConfigMap").inputs["data"]["config.yml"]
    assert "user:" not in config and "pass:" not in config
    assert not [s for s in declared.of_type("kubernetes:core/v1:Secret") if "retention" in s.name]


def test_the_image_is_the_release_the_tests_run():
    assert f"ghcr.io/regclient/regbot:v{pins()['regbot']}" == REGBOT_IMAGE
