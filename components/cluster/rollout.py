"""How `up` waits for the cluster's objects: for what, and how long (``rolloutTimeout``).

pulumi-kubernetes awaits a Deployment until its pods are ready and a LoadBalancer Service until
it has an address (pkg/await), 10 minutes unless told otherwise; the engine hands it a
resource's custom create and update timeouts, after which the update fails naming the object
and what it was still waiting for.

For a Deployment with the Recreate strategy its built-in wait is wrong: while the old pod goes,
the Deployment's revision is still the old ReplicaSet's, which is scaled to 0, and the awaiter
takes "0 of 0 ready" for done ("Replicas scaled to 0", deployment.go checkReplicaSetStatus);
the update then succeeds before the new pod exists, even when it can never be scheduled (seen
against a real API server, tests/test_cluster_real.py). ``pulumi.com/waitFor`` replaces that
wait (metadata/overrides.go ReadyCondition) with conditions on the Deployment's own status,
each checked only once ``status.observedGeneration`` has caught up with the update
(condition/jsonpath.go): the one pod of the current template is up to date and available.
"""

from __future__ import annotations

import json

import pulumi

from ..settings import RegistrySettings

WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
# replicas is 1 (see deployment.create_deployment).
DEPLOYMENT_READY = json.dumps(["jsonpath={.status.updatedReplicas}=1", "jsonpath={.status.availableReplicas}=1"])


def rollout_timeouts(settings: RegistrySettings) -> pulumi.CustomTimeouts:
    limit = f"{settings.rollout_timeout_seconds}s"
    return pulumi.CustomTimeouts(create=limit, update=limit)
