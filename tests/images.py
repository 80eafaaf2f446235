"""Images the registry tests push and what they read back: incompressible layers (so the volume's
size shows which are stored), the volume's size, a repository's tags, the declared credentials."""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from harness import Evaluation

LAYER_BYTES = 512 * 1024


def unique_layer(name: str) -> bytes:
    """Incompressible bytes, so the volume's size shows which layers are stored."""
    seed = hashlib.sha256(name.encode()).digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(LAYER_BYTES // 32))


def tags_of(registry_ip: str, repo: str, ca_pem: str, credentials: str) -> set[str]:
    context = ssl.create_default_context(cadata=ca_pem)
    request = urllib.request.Request(f"https://{registry_ip}:5000/v2/{repo}/tags/list",
                                     headers={"Authorization": "Basic " + b64encode(credentials.encode()).decode()})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return set(json.load(response)["tags"] or [])
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return set()
        raise


def volume_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def credentials_of(evaluation: Evaluation) -> str:
    return f"{evaluation.outputs['registryUsername']}:{evaluation.outputs['registryPassword']}"
