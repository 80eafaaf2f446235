"""The registry's HTTP API as the OCI distribution spec defines a push, for what skopeo cannot
push: a manifest by digest only (no tag), an artifact whose config and layers are no image's
(a signature, an SBOM), a referrer with a ``subject`` and the index of OCI's referrers tag
schema. Basic auth and the CA, as a client that logged in sends them.

A blob goes up in one request (POST then PUT with ``digest``, the spec's monolithic upload); a
manifest by ``PUT /v2/<name>/manifests/<reference>`` with its own media type.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data), **extra}


class RegistryApi:
    def __init__(self, base_url: str, ca_pem: str, credentials: str, server_hostname: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.context = ssl.create_default_context(cadata=ca_pem)
        self.authorization = "Basic " + base64.b64encode(credentials.encode()).decode()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith("https://") else self.base_url + path
        request = urllib.request.Request(url, data=body, method=method,
                                         headers={"Authorization": self.authorization, **(headers or {})})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, (status, body)
        location = urljoin(self.base_url + "/", headers["Location"])
        separator = "&" if "?" in location else "?"
        status, _, body = self.request("PUT", f"{location}{separator}digest={digest}", data,
                                       {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
        return digest

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest by tag or digest; its digest."""
        status, headers, answer = self.request("PUT", f"/v2/{repo}/manifests/{reference}", body,
                                               {"Content-Type": media_type})
        assert status == 201, (status, answer)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert headers.get("Docker-Content-Digest") == digest, headers
        return digest

    def get_manifest(self, repo: str, reference: str) -> tuple[int, bytes]:
        status, _, body = self.request("GET", f"/v2/{repo}/manifests/{reference}",
                                       headers={"Accept": f"{MEDIA_INDEX}, {MEDIA_MANIFEST}"})
        return status, body

    def push_artifact(self, repo: str, artifact_type: str, payload: bytes, subject: Mapping[str, Any],
                      reference: str | None = None) -> dict[str, Any]:
        """An OCI 1.1 artifact about ``subject`` (a signature, an SBOM): the empty config, one
        layer, ``artifactType`` and ``subject``, pushed by its digest unless a ``reference`` is
        given. Its descriptor, with its artifactType, as a referrers list holds it."""
        self.put_blob(repo, EMPTY_JSON)
        self.put_blob(repo, payload)
        body = canonical({
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "artifactType": artifact_type,
            "config": descriptor(MEDIA_EMPTY, EMPTY_JSON),
            "layers": [descriptor(artifact_type, payload)],
            "subject": dict(subject),
        })
        digest = self.put_manifest(repo, reference or "sha256:" + hashlib.sha256(body).hexdigest(), body, MEDIA_MANIFEST)
        return {**descriptor(MEDIA_MANIFEST, body), "artifactType": artifact_type, "digest": digest}

    def push_referrers_tag(self, repo: str, subject_digest: str, referrers: list[Mapping[str, Any]]) -> str:
        """The referrers tag schema of distribution-spec 1.1 (what oras and cosign fall back to on
        a registry without the referrers API): an index listing the referrers, tagged
        ``sha256-<hex>`` after its subject."""
        body = canonical({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": list(referrers)})
        self.put_manifest(repo, subject_digest.replace(":", "-"), body, MEDIA_INDEX)
        return subject_digest.replace(":", "-")
