"""A minimal Docker registry token server (the auth scheme of Docker Hub, quay.io, ghcr.io).

Why: distribution in proxy mode sends its upstream credentials only to a *token* realm
(registry/proxy/proxyauth.go keys them by the realm URLs of the upstream's challenge); an
upstream with plain htpasswd (Basic) auth never gets them. Since 3.1 only to a realm on the
upstream's own host and port or, for host names, under the same registrable domain
(realmAllowed: auth.docker.io for registry-1.docker.io), never on an IP address of its own.
A stand-in for an authenticated public registry therefore issues tokens: it checks HTTP Basic
credentials and returns a JWT (ES256, the signing certificate in ``x5c``) granting the requested
scopes, which the upstream registry (``REGISTRY_AUTH=token``) verifies against the same certificate as its root bundle.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from .certs import CertPair


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(pair: CertPair, issuer: str, service: str, subject: str, scopes: list[str]) -> str:
    certificate = x509.load_pem_x509_certificate(pair.cert_pem)
    key = serialization.load_pem_private_key(pair.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = {"typ": "JWT", "alg": "ES256",
              "x5c": [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]}
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    claims = {"iss": issuer, "sub": subject, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
              "jti": secrets.token_hex(8), "access": access}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = utils.decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class TokenServer:
    """HTTPS on ``ip:port`` serving ``/token``; ``requests`` records who asked for what."""

    def __init__(self, ip: str, port: int, pair: CertPair, workdir: Path, *, username: str, password: str,
                 issuer: str = "stand-in-auth", service: str = "stand-in-registry", realm_host: str | None = None):
        """``realm_host``: the name the challenge's realm gives for ``ip`` (Docker Hub's is
        auth.docker.io beside registry-1.docker.io)."""
        self.issuer, self.service = issuer, service
        self.requests: list[tuple[str, list[str]]] = []
        expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                scopes = query.get("scope", [])
                authorized = self.headers.get("Authorization") == expected
                server.requests.append(("authorized" if authorized else "refused", scopes))
                if url.path != "/token" or not authorized:
                    self.send_response(401)
                    self.end_headers()
                    return
                token = _token(pair, issuer, service, username, scopes)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        (workdir / "token.crt").write_bytes(pair.cert_pem)
        (workdir / "token.key").write_bytes(pair.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "token.crt", workdir / "token.key")
        self.httpd = ThreadingHTTPServer((ip, port), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.realm = f"https://{realm_host or ip}:{port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_env(self, root_bundle_path: str) -> dict[str, str]:
        """What a registry needs to accept this server's tokens (the bundle at that path)."""
        return {"REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": self.realm,
                "REGISTRY_AUTH_TOKEN_SERVICE": self.service, "REGISTRY_AUTH_TOKEN_ISSUER": self.issuer,
                "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": root_bundle_path}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
