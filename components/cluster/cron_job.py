"""What the registry's scheduled jobs (retention, the maintenance restart) share: a CronJob that
runs one pod at a time, in the quiet hours only."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from .naming import job_pod_labels, object_labels

MISSED_RUN_DEADLINE_SECONDS = 3600


def job_service_account(
    name: str, component: str, namespace: pulumi.Input[str], parent: pulumi.Resource
) -> k8s.core.v1.ServiceAccount:
    """``<name>-<component>``, the job's own account, whose token is mounted into no pod by
    default: a job that is an API client says so in its pod spec."""
    return k8s.core.v1.ServiceAccount(
        f"{name}-{component}-service-account",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=f"{name}-{component}", namespace=namespace, labels=object_labels(name, component)
        ),
        automount_service_account_token=False,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def quiet_hours_cron_job(
    name: str,
    component: str,
    namespace: pulumi.Input[str],
    schedule: str,
    time_zone: str,
    pod_spec: k8s.core.v1.PodSpecArgs,
    deadline_seconds: int,
    annotations: dict[str, str],
    parent: pulumi.Resource,
) -> k8s.batch.v1.CronJob:
    """``<name>-<component>``: its pods labelled by job_pod_labels, ``annotations`` on the
    CronJob (the scanner's reviewed exceptions), each run stopped after ``deadline_seconds``."""
    job = f"{name}-{component}"
    return k8s.batch.v1.CronJob(
        f"{job}-cron-job",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=job, namespace=namespace, labels=object_labels(name, component), annotations=annotations
        ),
        spec=k8s.batch.v1.CronJobSpecArgs(
            schedule=schedule,
            time_zone=time_zone,
            # One run at a time; a run missed by more than an hour (the cluster was down) waits
            # for the next one rather than landing outside the quiet hours.
            concurrency_policy="Forbid",
            starting_deadline_seconds=MISSED_RUN_DEADLINE_SECONDS,
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=k8s.batch.v1.JobTemplateSpecArgs(
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=2,
                    active_deadline_seconds=deadline_seconds,
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=job_pod_labels(name, component)),
                        spec=pod_spec,
                    ),
                ),
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
