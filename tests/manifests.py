"""Kubernetes objects the program declared, as the provider would send them to the API server."""

from typing import Any

from harness import Evaluation

PROVIDER_ONLY_KEYS = {"urn", "id"}


def kubernetes_manifests(evaluation: Evaluation) -> list[dict[str, Any]]:
    """Every Kubernetes object, with auto-names filled in (checkov and the API need a name)."""
    documents = []
    for resource in evaluation.resources:
        if not resource.type.startswith("kubernetes:"):
            continue
        document = {k: v for k, v in resource.inputs.items() if k not in PROVIDER_ONLY_KEYS}
        document["metadata"] = resource.outputs["metadata"]
        documents.append(document)
    return documents
