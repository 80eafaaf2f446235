"""Runs the Pulumi program under Pulumi's own mocks and captures everything it declares.

The mocks behave like the providers would with existing state: the TLS resources produce a
real key and certificate (made with ``cryptography`` from the declared inputs), Kubernetes
objects get their auto-names filled in, and the same inputs always produce the same outputs,
so two evaluations of one configuration can be compared like two ``pulumi up`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import hashlib
import ipaddress
import json
import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import Stack, wait_for_rpcs

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROGRAM = PROJECT_DIR / "__main__.py"
PROJECT = "k3s-registry"
SECRET_SIG = "4dabf18193072939515e22adb298388d"

# Keys and certificates survive across evaluations, like provider state between two `up`s.
_PROVIDER_STATE: dict[str, dict[str, Any]] = {}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    wire_inputs: dict[str, Any]
    dependencies: list[str]
    delete_before_replace: bool
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    """The resource's customTimeouts (create, update, delete), as the engine gets them."""
    hooks: dict[str, list[str]] = field(default_factory=dict)
    """hook kind (``beforeUpdate``, ``onError``...) -> the names of the hooks bound to it."""

    @property
    def parent_name(self) -> str:
        return self.parent.rsplit("::", 1)[-1] if self.parent else ""


@dataclass
class Evaluation:
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    hooks: dict[str, Any] = field(default_factory=dict)
    """name -> the ResourceHook or ErrorHook the program registered (its function is callable)."""

    def hook(self, resource: Resource, kind: str) -> Any:
        names = resource.hooks.get(kind, [])
        assert len(names) == 1, f"{resource.name} has {len(names)} {kind} hooks: {names}"
        return self.hooks[names[0]]

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> Resource:
        found = self.of_type(type_token)
        assert len(found) == 1, f"expected one {type_token}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)


def normalize(value: Any) -> Any:
    """Pulumi's wire format carries numbers as doubles: 5000 arrives as 5000.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if is_secret_marker(value):
        return normalize(value.get("value"))
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def _state_key(args: pulumi_mocks.MockResourceArgs) -> str:
    identity = json.dumps([args.typ, args.name, normalize(args.inputs)], sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()


def _private_key(inputs: dict[str, Any]) -> dict[str, Any]:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if inputs.get("algorithm") == "ECDSA":
        curve = {"P224": ec.SECP224R1(), "P256": ec.SECP256R1(), "P384": ec.SECP384R1(), "P521": ec.SECP521R1()}
        key = ec.generate_private_key(curve[inputs.get("ecdsaCurve", "P224")])
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    public = key.public_key()
    return {
        "privateKeyPem": pem.decode(),
        "publicKeyPem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        + "\n",
    }


_KEY_USAGE_FLAGS = {
    "digital_signature": "digital_signature",
    "key_encipherment": "key_encipherment",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
}
_EXTENDED_USAGES = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH}


def subject_name(subject: dict[str, Any]) -> x509.Name:
    oids = {"commonName": NameOID.COMMON_NAME, "organization": NameOID.ORGANIZATION_NAME,
            "serialNumber": NameOID.SERIAL_NUMBER}
    return x509.Name([x509.NameAttribute(oid, subject[key]) for key, oid in oids.items() if subject.get(key)])


def alternative_names(dns_names: list[str], ip_addresses: list[str]) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]


def _sign(subject_public_key, signer_key, subject: x509.Name, issuer: x509.Name, inputs: dict[str, Any],
          now: dt.datetime, names: list[x509.GeneralName]) -> x509.Certificate:
    """A certificate with exactly the extensions pulumi-tls derives from the same inputs."""
    uses = set(inputs.get("allowedUses", []))
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    for use in uses:
        if use in _KEY_USAGE_FLAGS:
            flags[_KEY_USAGE_FLAGS[use]] = True
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=int(inputs["validityPeriodHours"])))
        .add_extension(x509.KeyUsage(**flags), critical=True)
        .add_extension(
            x509.BasicConstraints(ca=bool(inputs.get("isCaCertificate")), path_length=None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
    )
    extended = [_EXTENDED_USAGES[use] for use in sorted(uses) if use in _EXTENDED_USAGES]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _certificate_outputs(certificate: x509.Certificate, inputs: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    end = certificate.not_valid_after_utc
    early = dt.timedelta(hours=int(inputs.get("earlyRenewalHours", 0) or 0))
    return {
        "certPem": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": certificate.not_valid_before_utc.isoformat(),
        "validityEndTime": end.isoformat(),
        "readyForRenewal": now >= end - early,
    }


def _certificate_request(inputs: dict[str, Any]) -> dict[str, Any]:
    key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
    names = alternative_names(inputs.get("dnsNames", []), inputs.get("ipAddresses", []))
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(inputs.get("subject", {})))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)), type(key)
    request = builder.sign(key, hashes.SHA256())
    return {"certRequestPem": request.public_bytes(serialization.Encoding.PEM).decode()}


def _random_password(inputs: dict[str, Any]) -> dict[str, Any]:
    import secrets
    import string

    alphabet = string.ascii_letters + string.digits
    result = "".join(secrets.choice(alphabet) for _ in range(int(inputs.get("length", 16))))
    # pulumi-random hashes with Go's bcrypt, whose hashes start with $2a$.
    bcrypt_hash = bcrypt.hashpw(result.encode(), bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()
    return {"result": result, "bcryptHash": bcrypt_hash}


NODE_SCRIPTS = "pulumi-python:dynamic/k3s-registry:NodeScripts"
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


class ProviderMocks(pulumi.runtime.Mocks):
    """Provider behaviour for every resource type the program declares."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime] = _utcnow,
        outputs_by_name: dict[str, dict[str, Any]] | None = None,
    ):
        self.clock = clock
        # Outputs a real provider returned (by resource name: a dynamic provider's update, a
        # command's stdout), as the state the next run sees.
        self.outputs_by_name = outputs_by_name or {}
        self.handlers = {
            "tls:index/privateKey:PrivateKey": lambda args: _private_key(normalize(args.inputs)),
            "tls:index/selfSignedCert:SelfSignedCert": self._self_signed,
            "tls:index/certRequest:CertRequest": lambda args: _certificate_request(normalize(args.inputs)),
            "tls:index/locallySignedCert:LocallySignedCert": self._locally_signed,
            "random:index/randomPassword:RandomPassword": lambda args: _random_password(normalize(args.inputs)),
        }

    def _locally_signed(self, args: pulumi_mocks.MockResourceArgs) -> dict[str, Any]:
        """Signs the request with the CA key, copying its subject and SANs as pulumi-tls does."""
        inputs = normalize(args.inputs)
        now = self.clock()
        request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        names: list[x509.GeneralName] = []
        with contextlib.suppress(x509.ExtensionNotFound):
            names = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        signer_key = serialization.load_pem_private_key(inputs["caPrivateKeyPem"].encode(), None)
        certificate = _sign(request.public_key(), signer_key, request.subject, ca.subject, inputs, now, list(names))
        return _certificate_outputs(certificate, inputs, now)

    def _self_signed(self, args: pulumi_mocks.MockResourceArgs) -> dict[str, Any]:
        inputs = normalize(args.inputs)
        now = self.clock()
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
        name = subject_name(inputs.get("subject", {}))
        names = alternative_names(inputs.get("dnsNames", []), inputs.get("ipAddresses", []))
        certificate = _sign(key.public_key(), key, name, name, inputs, now, names)
        return _certificate_outputs(certificate, inputs, now)

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        outputs = dict(normalize(args.inputs))
        if args.typ in self.handlers:
            key = _state_key(args)
            if key not in _PROVIDER_STATE:
                _PROVIDER_STATE[key] = self.handlers[args.typ](args)
            outputs.update(_PROVIDER_STATE[key])
        elif args.typ.startswith("kubernetes:"):
            metadata = dict(outputs.get("metadata") or {})
            if not metadata.get("name"):
                metadata["name"] = f"{args.name}-{hashlib.sha256(args.name.encode()).hexdigest()[:8]}"
            outputs["metadata"] = metadata
        elif args.typ == "command:remote:Command":
            outputs.update({"stdout": "", "stderr": ""})
        elif args.typ == NODE_SCRIPTS:
            # What the real provider's create returns (without the SSH): the state keeps no plan.
            from components.node.scripts_resource import outputs_of

            outputs = {"__provider": outputs["__provider"], **outputs_of(outputs, repairs={})}
        outputs.update(normalize(self.outputs_by_name.get(args.name, {})))
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi_mocks.MockCallArgs):
        raise AssertionError(f"the program made an unexpected provider call: {args.token}")


class CapturingMonitor(pulumi_mocks.MockMonitor):
    """Records what the program sent for each resource, including secret markers and options."""

    def __init__(self, mocks: ProviderMocks):
        super().__init__(mocks)
        self.requests: list[Any] = []

    def RegisterResource(self, request):
        self.requests.append(request)
        return super().RegisterResource(request)

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The engine's URN (pkg/resource/deploy/deployment.go, generateURN): the parent's whole
        qualified type, less the root stack's. Pulumi's mocks keep only the parent's last type,
        so there a component moved under a new parent would leave its children's URNs unchanged."""
        qualified = type_
        if parent:
            parent_type = parent.split("::")[2]
            if parent_type != ROOT_STACK_TYPE:
                qualified = f"{parent_type}${type_}"
        return "urn:pulumi:" + f"{pulumi.get_stack()}::{pulumi.get_project()}::{qualified}::{name}"


async def _settle(value: Any) -> tuple[Any, bool]:
    if isinstance(value, pulumi.Output):
        return normalize(await value.future()), bool(await value.is_secret())
    return normalize(value), False


def evaluate(
    config: dict[str, Any],
    *,
    secret_keys: tuple[str, ...] = (),
    clock=_utcnow,
    stack: str = "dev",
    outputs_by_name: dict[str, dict[str, Any]] | None = None,
) -> Evaluation:
    """Runs __main__.py with this config (keys without namespace) and returns what it declared.

    Config values that are not strings are passed as JSON, as the Pulumi CLI does.
    ``outputs_by_name`` gives resources (by name) the outputs a real provider returned.
    """
    raw = {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    return run_function(
        _run_main, raw_config=raw, secret_keys=tuple(f"{PROJECT}:{k}" for k in secret_keys),
        clock=clock, stack=stack, outputs_by_name=outputs_by_name,
    )


def evaluate_raw(raw_config: dict[str, str], *, secret_keys: tuple[str, ...] = (), stack: str = "dev") -> Evaluation:
    """Runs __main__.py with exactly the config the CLI hands a program: full keys, string values."""
    return run_function(_run_main, raw_config=raw_config, secret_keys=secret_keys, stack=stack)


def _run_main() -> None:
    runpy.run_path(str(PROGRAM), run_name="__main__")


def run_function(
    program: Callable[[], None],
    config: dict[str, Any] | None = None,
    *,
    raw_config: dict[str, str] | None = None,
    secret_keys: tuple[str, ...] = (),
    clock=_utcnow,
    stack: str = "dev",
    outputs_by_name: dict[str, dict[str, Any]] | None = None,
) -> Evaluation:
    """Runs ``program`` (any function declaring resources) under the mocks.

    ``config`` has keys without namespace (non-strings passed as JSON); ``raw_config`` full keys
    and strings, exactly as the CLI passes them; ``secret_keys`` are full keys either way.
    ``clock`` is both the program's clock (certificate rotation) and the providers' (issue
    dates), so a test can move the whole world to another day.
    """
    from components.cluster import rotation

    raw = dict(raw_config or {})
    raw.update({f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (config or {}).items()})
    secrets = tuple(key if ":" in key else f"{PROJECT}:{key}" for key in secret_keys)
    program_clock, rotation.utcnow = rotation.utcnow, clock
    try:
        return contextvars.Context().run(_evaluate, program, raw, secrets, clock, stack, outputs_by_name)
    finally:
        rotation.utcnow = program_clock


def _evaluate(program, raw: dict[str, str], secret_keys, clock, stack: str, outputs_by_name) -> Evaluation:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        mocks = ProviderMocks(clock, outputs_by_name)
        monitor = CapturingMonitor(mocks)
        pulumi.runtime.set_all_config(raw, list(secret_keys))
        pulumi_settings.ROOT.set(None)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
        # The engine's side of resource hooks is a callback server the mocks do not start; the
        # hooks are recorded instead, so that tests can see where they are bound and call them.
        recorder = HookRecorder()
        pulumi_settings.SETTINGS.callbacks = recorder
        root = pulumi_settings.get_root_resource()
        try:
            program()
            loop.run_until_complete(wait_for_rpcs())
        except Exception as error:
            # Let the runtime finish what it had started, or the next evaluation waits on it.
            with contextlib.suppress(Exception):
                loop.run_until_complete(wait_for_rpcs())
            declared = [r.type for r in monitor.requests if r.type != "pulumi:pulumi:Stack"]
            raise ProgramFailed(str(error), declared) from error
        evaluation = Evaluation(hooks=recorder.hooks)
        assert isinstance(root, Stack), root
        for name, value in root.outputs.items():
            resolved, secret = loop.run_until_complete(_settle(value))
            evaluation.outputs[name] = resolved
            if secret:
                evaluation.secret_outputs.add(name)
        for request in monitor.requests:
            urn = monitor.make_urn(request.parent, request.type, request.name)
            registration = monitor.resources.get(urn)
            evaluation.resources.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    urn=urn,
                    parent=request.parent,
                    inputs=normalize(pulumi.runtime.rpc.deserialize_properties(request.object)),
                    outputs=normalize(dict(registration.state)) if registration else {},
                    wire_inputs=json_format.MessageToDict(request.object),
                    dependencies=list(request.dependencies),
                    delete_before_replace=request.deleteBeforeReplace,
                    custom_timeouts=json_format.MessageToDict(request.customTimeouts),
                    hooks={kind: list(names) for kind, names in json_format.MessageToDict(request.hooks).items()},
                )
            )
        return evaluation
    finally:
        loop.close()


class HookRecorder:
    """Stands where the SDK's callback server would (runtime.settings.SETTINGS.callbacks)."""

    def __init__(self) -> None:
        self.hooks: dict[str, Any] = {}

    def register_resource_hook(self, hook: Any) -> None:
        self.hooks[hook.name] = hook

    def register_error_hook(self, hook: Any) -> None:
        self.hooks[hook.name] = hook


class ProgramFailed(Exception):
    """The program raised; ``declared`` lists the resource types it had declared until then."""

    def __init__(self, message: str, declared: list[str]):
        super().__init__(message)
        self.declared = declared


def is_secret_marker(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


GUIDE_CONFIG: dict[str, Any] = {
    "hostname": "registry.cube.local",
    "loadBalancerIp": "192.168.0.202",
    "port": "5000",
    "namespace": "docker-registry",
    "storageClass": "longhorn",
    "storageSize": "15Gi",
    "nodeSelector": {"node-type": "worker"},
    "certDnsNames": ["*.cube.local"],
}
