"""Certificate renewal: decided by the date in an ordinary `pulumi up`, with no trust gap."""

import datetime as dt
import ssl

import pytest
from cryptography import x509

from components.cluster.rotation import EPOCH, next_renewal, rotation_number

from harness import evaluate
from pod import start_registry_pod

UTC = dt.UTC
HOSTNAME = "registry.cube.test"
REGISTRY_IP = "127.0.0.205"
NODES = [{"name": "cube01", "host": "127.0.0.11", "role": "agent"}]
CONFIG = {"hostname": HOSTNAME, "loadBalancerIp": REGISTRY_IP, "nodes": NODES}
DAY = dt.timedelta(days=1)
JUNE = dt.datetime(2027, 6, 1, 12, tzinfo=UTC)


def at(moment):
    return lambda: moment


# ------------------------------------------------------------------ the decision

def test_a_period_is_validity_minus_renewal_window():
    start = EPOCH + dt.timedelta(days=335 * 4)
    assert rotation_number(start - dt.timedelta(seconds=1), 365, 30) == 3
    assert rotation_number(start, 365, 30) == 4
    assert rotation_number(start + 334 * DAY, 365, 30) == 4
    assert rotation_number(start + 335 * DAY, 365, 30) == 5


def test_renewal_always_comes_at_least_the_window_before_expiry():
    """Whenever `up` issues a certificate, the next period starts before it is `window` from expiry."""
    moment = EPOCH
    for _ in range(2000):
        moment += dt.timedelta(hours=7, minutes=13)
        expiry = moment + 90 * DAY
        assert next_renewal(moment, 90, 20) <= expiry - 20 * DAY


# ------------------------------------------------------------------ what `up` declares

@pytest.fixture(scope="module")
def june():
    return evaluate(CONFIG, clock=at(JUNE))


@pytest.fixture(scope="module")
def renewed():
    return evaluate(CONFIG, clock=at(next_renewal(JUNE, 365, 30) + DAY))


def inputs_by_name(evaluation):
    return {r.name: r.inputs for r in evaluation.resources}


def test_between_renewals_every_up_declares_the_same_inputs(june):
    later = evaluate(CONFIG, clock=at(next_renewal(JUNE, 365, 30) - dt.timedelta(minutes=1)))
    assert inputs_by_name(later) == inputs_by_name(june)


def test_a_new_period_renews_the_serving_certificate_and_rolls_the_pod_only(june, renewed):
    before, after = inputs_by_name(june), inputs_by_name(renewed)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["registry-cert", "registry-csr", "registry-deployment", "registry-tls"]


def test_the_renewed_certificate_has_the_same_names_and_issuer(june, renewed):
    def certificate(evaluation):
        return x509.load_pem_x509_certificate(
            evaluation.one("tls:index/locallySignedCert:LocallySignedCert").outputs["certPem"].encode()
        )

    old, new = certificate(june), certificate(renewed)
    assert old.serial_number != new.serial_number
    assert old.issuer == new.issuer
    san = x509.SubjectAlternativeName
    assert old.extensions.get_extension_for_class(san).value == new.extensions.get_extension_for_class(san).value
    assert new.not_valid_before_utc > old.not_valid_before_utc


# ------------------------------------------------------------------ on the real registry

def handshake(ca_pem):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem)
    import socket

    with (
        socket.create_connection((REGISTRY_IP, 5000), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOSTNAME) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def test_a_client_trusting_only_the_ca_accepts_the_old_and_the_new_certificate(tmp_path):
    """Certificates must be valid today for a real handshake: the old one is a period old."""
    now = dt.datetime.now(UTC)
    # Its own CA lifetime gives it a CA issued by the first evaluation below, not in 2027.
    config = {**CONFIG, "caValidityDays": "3000"}
    previous_period = evaluate(config, clock=at(now - 335 * DAY))
    this_period = evaluate(config, clock=at(now))
    ca_pem = previous_period.outputs["caCertificatePem"]
    assert this_period.outputs["caCertificatePem"] == ca_pem
    served = []
    for name, evaluation in (("old", previous_period), ("new", this_period)):
        registry = start_registry_pod(evaluation, tmp_path / name, REGISTRY_IP)
        try:
            served.append(handshake(ca_pem))
        finally:
            registry.stop()
    assert served[0] != served[1], "the pod must serve the renewed certificate"
