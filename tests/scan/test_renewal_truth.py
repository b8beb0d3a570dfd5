"""The pure parts of issue 13: ARI CertID and windows, lifetime policy, CRL and OCSP verification."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from keychest.scan import ari, lifetime, revocation
from keychest.scan.judge import cert_facts
from keychest.scan.revocation import Method, Status
from tests.scan.pki import NOW, MiniCA, der

UTC = dt.UTC
DAY = dt.timedelta(days=1)


# --- ARI -----------------------------------------------------------------------------------


def test_cert_id_matches_the_rfc_example() -> None:
    # RFC 9773 section 4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 00:87:65:43:21.
    key_identifier = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert ari.cert_id_from(key_identifier, 0x87654321) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.mark.parametrize(
    ("serial", "octets"),
    [(1, "01"), (0x7F, "7f"), (0x80, "0080"), (0x87654321, "0087654321"), (0x0102, "0102")],
)
def test_serial_der_bytes(serial: int, octets: str) -> None:
    assert ari.serial_der_bytes(serial).hex() == octets


def test_cert_id_of_a_real_certificate() -> None:
    ca = MiniCA()
    leaf, _ = ca.leaf(serial=0x87654321)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ari.cert_id(leaf) == ari.cert_id_from(ski, 0x87654321)
    assert ari.cert_id(ca.cert) is None  # no AKI


def test_public_directories_by_issuer() -> None:
    assert ari.public_directory("Let's Encrypt") == "https://acme-v02.api.letsencrypt.org/directory"
    assert ari.public_directory("Google Trust Services") is not None
    assert ari.public_directory("DigiCert Inc") is None
    assert ari.public_directory(None) is None


def _info(start: dt.datetime, end: dt.datetime, url: str | None = None) -> ari.RenewalInfo:
    return ari.RenewalInfo(start, end, url, NOW)


def test_renewal_info_parsing() -> None:
    body = b'{"suggestedWindow": {"start": "2026-12-02T00:00:00Z", "end": "2026-12-03T00:00:00Z"},'
    body += b' "explanationURL": "https://ca.example/why"}'
    info = ari.parse_renewal_info(body, NOW)
    assert info.window_start == dt.datetime(2026, 12, 2, tzinfo=UTC)
    assert info.explanation_url == "https://ca.example/why"
    assert info.as_dict()["window_end"] == "2026-12-03T00:00:00Z"
    backwards = b'{"suggestedWindow": {"start": "2026-12-03T00:00:00Z", "end": "2026-12-02T00:00:00Z"}}'
    naive = b'{"suggestedWindow": {"start": "2026-12-02T00:00:00", "end": "2026-12-03T00:00:00"}}'
    for bad in (b"garbage", b"[]", b'{"suggestedWindow": {"start": "x", "end": "y"}}', backwards, naive):
        with pytest.raises(ValueError):
            ari.parse_renewal_info(bad, NOW)


def test_retry_after_is_obeyed_within_bounds() -> None:
    assert ari.retry_after("3600", NOW) == dt.timedelta(hours=1)
    assert ari.retry_after(None, NOW) == ari.DEFAULT_RETRY
    assert ari.retry_after("0", NOW) == ari.MIN_RETRY
    assert ari.retry_after("99999999", NOW) == ari.MAX_RETRY
    assert ari.retry_after("Tue, 01 Dec 2026 14:00:00 GMT", NOW) == dt.timedelta(hours=2)
    assert ari.retry_after("soon", NOW) == ari.DEFAULT_RETRY


def test_ari_problems() -> None:
    hour = dt.timedelta(hours=1)
    assert ari.ari_problems(None, NOW) == []
    assert ari.ari_problems(_info(NOW + hour, NOW + 2 * hour), NOW) == []
    (due,) = ari.ari_problems(_info(NOW - hour, NOW + hour), NOW)
    assert (due.code, due.severity.name) == ("ari_renewal_due", "WARNING")
    (passed,) = ari.ari_problems(_info(NOW - 2 * hour, NOW - hour, "https://ca.example/incident"), NOW)
    assert (passed.code, passed.severity.name) == ("ari_window_passed", "CRITICAL")
    assert "https://ca.example/incident" in passed.message


# --- lifetime policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued", "days", "over"),
    [
        ("2026-03-14", 398, False),
        ("2026-03-14", 399, True),
        ("2026-03-15", 200, False),
        ("2026-03-15", 201, True),
        ("2027-03-15", 100, False),
        ("2027-03-15", 101, True),
        ("2029-03-14", 100, False),
        ("2029-03-15", 47, False),
        ("2029-03-15", 48, True),
    ],
)
def test_lifetime_policy(issued: str, days: int, over: bool) -> None:
    start = dt.datetime.fromisoformat(issued).replace(tzinfo=UTC)
    # notAfter is inclusive: a 200-day certificate ends one second before start + 200 days.
    leaf, _ = MiniCA().leaf(not_before=start, days=days)
    leaf_der = der(leaf)
    facts = cert_facts(leaf_der)
    facts = dataclasses.replace(facts, not_after=facts.not_after - dt.timedelta(seconds=1))
    problem = lifetime.lifetime_problem(facts)
    assert (problem is not None) == over
    if problem:
        assert problem.code == "lifetime_over_policy" and problem.severity.name == "WARNING"


# --- CRL -----------------------------------------------------------------------------------


def test_crl_good_and_revoked() -> None:
    ca = MiniCA()
    leaf, _ = ca.leaf()
    other, _ = ca.leaf()
    crl = ca.crl({other.serial_number: x509.ReasonFlags.key_compromise})
    assert revocation.crl_verdict(crl, leaf, ca.cert, NOW) == revocation.Revocation(Status.GOOD, Method.CRL)
    revoked = revocation.crl_verdict(crl, other, ca.cert, NOW)
    assert revoked.status is Status.REVOKED and revoked.reason == "keyCompromise"
    assert revoked.revoked_at == NOW - dt.timedelta(days=1)
    pem_crl = x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM)
    assert revocation.crl_verdict(pem_crl, other, ca.cert, NOW).status is Status.REVOKED


def test_crl_that_cannot_be_trusted_is_unknown_never_good_or_revoked() -> None:
    ca = MiniCA()
    leaf, _ = ca.leaf()
    impostor = MiniCA(common_name="keychest test CA")  # same name, other key
    other_ca = MiniCA(common_name="another CA")
    cases = {
        "garbage": b"\x30\x03garbage",
        "wrong signature": impostor.crl({leaf.serial_number: None}),
        "other issuer": other_ca.crl({leaf.serial_number: None}),
        "expired": ca.crl({leaf.serial_number: None}, this_update=NOW - 2 * DAY, next_update=NOW - DAY),
        "future": ca.crl({leaf.serial_number: None}, this_update=NOW + DAY, next_update=NOW + 2 * DAY),
        "signed by another key": ca.crl(
            {leaf.serial_number: None}, signer=ec.generate_private_key(ec.SECP256R1())
        ),
    }
    for what, data in cases.items():
        verdict = revocation.crl_verdict(data, leaf, ca.cert, NOW)
        assert verdict.status is Status.UNKNOWN, what
        assert verdict.error, what


# --- OCSP ----------------------------------------------------------------------------------


def test_ocsp_good_revoked_and_delegated() -> None:
    ca = MiniCA()
    leaf, _ = ca.leaf()
    good = revocation.ocsp_verdict(ca.ocsp_response(leaf), leaf, ca.cert, NOW)
    assert good == revocation.Revocation(Status.GOOD, Method.OCSP)
    revoked = revocation.ocsp_verdict(ca.ocsp_response(leaf, ocsp.OCSPCertStatus.REVOKED), leaf, ca.cert, NOW)
    assert revoked.status is Status.REVOKED and revoked.reason == "keyCompromise"
    delegated = ca.ocsp_response(leaf, ocsp.OCSPCertStatus.REVOKED, responder=ca.delegated_responder())
    assert revocation.ocsp_verdict(delegated, leaf, ca.cert, NOW).status is Status.REVOKED
    stapled = revocation.ocsp_verdict(ca.ocsp_response(leaf), leaf, ca.cert, NOW, Method.STAPLED)
    assert stapled.method is Method.STAPLED


def test_ocsp_that_cannot_be_trusted_is_unknown() -> None:
    ca = MiniCA()
    leaf, _ = ca.leaf()
    other_leaf, _ = ca.leaf()
    other_ca = MiniCA(common_name="another CA")
    revoked = ocsp.OCSPCertStatus.REVOKED
    refused = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    cases = {
        "garbage": b"garbage",
        "wrong signature": ca.ocsp_response(leaf, revoked, tamper=True),
        "responder not issued by the CA": ca.ocsp_response(
            leaf, revoked, responder=ca.delegated_responder(other_ca)
        ),
        "about another certificate": ca.ocsp_response(other_leaf, revoked),
        "expired": ca.ocsp_response(leaf, revoked, next_update=NOW - DAY, this_update=NOW - 2 * DAY),
        "unauthorized": refused.public_bytes(serialization.Encoding.DER),
        "other CA": other_ca.ocsp_response(other_ca.leaf()[0], revoked),
    }
    for what, data in cases.items():
        verdict = revocation.ocsp_verdict(data, leaf, ca.cert, NOW)
        assert verdict.status is Status.UNKNOWN, what
        assert verdict.error, what


def test_must_staple_and_revoked_problems() -> None:
    ca = MiniCA()
    stapling, _ = ca.leaf(must_staple=True)
    plain, _ = ca.leaf()
    assert revocation.must_staple(stapling) and not revocation.must_staple(plain)
    codes = [p.code for p in revocation.problems(None, stapling, stapled=False)]
    assert codes == ["must_staple_missing"]
    assert revocation.problems(None, stapling, stapled=True) == []
    revoked = revocation.Revocation(Status.REVOKED, Method.CRL, NOW, "keyCompromise")
    (problem,) = revocation.problems(revoked, plain, stapled=False)
    assert problem.code == "revoked" and problem.severity.name == "CRITICAL"
    assert revoked.as_dict() == {
        "status": "revoked",
        "method": "crl",
        "revoked_at": "2026-12-01T12:00:00Z",
        "reason": "keyCompromise",
        "error": None,
    }


def test_urls_from_the_certificate() -> None:
    leaf, _ = MiniCA().leaf(crl_url="http://crl.example/ca.crl", ocsp_url="http://ocsp.example/")
    assert revocation.crl_urls(leaf) == ["http://crl.example/ca.crl"]
    assert revocation.ocsp_urls(leaf) == ["http://ocsp.example/"]
