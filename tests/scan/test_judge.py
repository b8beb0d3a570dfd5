"""The judge, with made-up chains and a fixed `now`: no sockets, no clock."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.scan.judge import (
    CertFacts,
    Severity,
    State,
    TrustStore,
    cert_facts,
    chain_facts,
    days_left,
    expiry_severity,
    find_stale_deployments,
    hostname_matches,
    judge,
)

from .certs import CertFactory, ServerCert

UTC = dt.UTC


def facts_of(cert: ServerCert) -> tuple[CertFacts, ...]:
    return chain_facts(c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(cert.chain_pem))


@pytest.fixture(scope="module")
def trust(certs: CertFactory) -> TrustStore:
    return TrustStore([certs.ca_file], system=False)


def codes(verdict: object) -> set[str]:
    return {p.code for p in verdict.problems}  # type: ignore[attr-defined]


def test_facts_of_a_trustme_leaf(certs: CertFactory) -> None:
    served = certs.valid("www.example.test", "192.0.2.1")
    leaf = facts_of(served)[0]
    der = served.leaf.public_bytes(Encoding.DER)
    assert leaf.sha256 == hashlib.sha256(der).hexdigest()
    assert leaf.dns_names == ("www.example.test",)
    assert leaf.ip_addresses == ("192.0.2.1",)
    assert leaf.subject_alt_names == ("www.example.test", "192.0.2.1")
    assert (leaf.key_type, leaf.key_bits, leaf.key_curve) == ("EC", 256, "secp256r1")
    assert leaf.signature_algorithm == "ecdsa-with-SHA256"
    assert leaf.issuer_organization == "Keychest Test CA"
    assert not leaf.self_signed and not leaf.is_ca and not leaf.is_lets_encrypt
    assert leaf.not_after.tzinfo is not None
    assert leaf.pem.startswith("-----BEGIN CERTIFICATE-----")


def test_valid_certificate_is_ok(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.valid("www.example.test", days=90))
    verdict = judge(chain, hostname="www.example.test", now=certs.now(), trust_store=trust)
    assert verdict.state is State.OK
    assert verdict.trusted and verdict.hostname_ok and verdict.problems == ()
    assert verdict.days_left == 89
    assert verdict.path[0] == chain[0] and verdict.path[-1].is_ca


def test_expiry_thresholds(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.valid("a.test", days=5))
    now = certs.now()
    assert judge(chain, hostname="a.test", now=now, trust_store=trust, warn_days=30, crit_days=3).state is (
        State.WARNING
    )
    critical = judge(chain, hostname="a.test", now=now, trust_store=trust, warn_days=30, crit_days=7)
    assert critical.state is State.CRITICAL and codes(critical) == {"expires_soon"}
    assert judge(chain, hostname="a.test", now=now, trust_store=trust, warn_days=4, crit_days=2).state is (
        State.OK
    )


def test_expired_and_not_yet_valid(certs: CertFactory, trust: TrustStore) -> None:
    expired = judge(facts_of(certs.expired("a.test")), hostname="a.test", now=certs.now(), trust_store=trust)
    # Trust is about the path to an anchor; the dates are a separate finding.
    assert expired.trusted
    assert expired.state is State.CRITICAL and codes(expired) == {"expired"}
    # Expired 10 days and a few milliseconds ago: rounded down, that is -11.
    assert expired.days_left == -11

    chain = facts_of(certs.valid("a.test"))
    early = judge(
        chain, hostname="a.test", now=chain[0].not_before - dt.timedelta(hours=1), trust_store=trust
    )
    assert codes(early) == {"not_yet_valid"}


def test_wrong_name(certs: CertFactory, trust: TrustStore) -> None:
    verdict = judge(facts_of(certs.valid("a.test")), hostname="b.test", now=certs.now(), trust_store=trust)
    assert not verdict.hostname_ok and verdict.trusted
    assert codes(verdict) == {"hostname_mismatch"}


def test_self_signed(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.self_signed("a.test"))
    assert chain[0].self_signed
    verdict = judge(chain, hostname="a.test", now=certs.now(), trust_store=trust)
    assert not verdict.trusted and codes(verdict) == {"self_signed"}


def test_self_signed_trusted_through_ca_file(certs: CertFactory, tmp_path: object) -> None:
    served = certs.self_signed("pinned.test")
    path = tmp_path / "pinned.pem"  # type: ignore[operator]
    path.write_bytes(served.chain_pem)
    verdict = judge(
        facts_of(served),
        hostname="pinned.test",
        now=certs.now(),
        trust_store=TrustStore([path], system=False),
    )
    assert verdict.trusted and verdict.state is State.OK


def test_missing_intermediate(certs: CertFactory, trust: TrustStore) -> None:
    verdict = judge(
        facts_of(certs.missing_intermediate("a.test")), hostname="a.test", now=certs.now(), trust_store=trust
    )
    assert not verdict.trusted
    assert codes(verdict) == {"untrusted"}
    assert verdict.trust_error and "no intermediate" in verdict.trust_error


def test_intermediate_sent_is_trusted(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.with_intermediate("a.test"))
    assert len(chain) == 2
    verdict = judge(chain, hostname="a.test", now=certs.now(), trust_store=trust)
    assert verdict.state is State.OK and len(verdict.path) == 3


def test_untrusted_without_the_ca(certs: CertFactory) -> None:
    empty = TrustStore([], system=False)
    verdict = judge(facts_of(certs.valid("a.test")), hostname="a.test", now=certs.now(), trust_store=empty)
    assert not verdict.trusted and codes(verdict) == {"untrusted"}


def test_leaf_of_an_unknown_root_is_not_called_a_missing_intermediate(
    certs: CertFactory, trust: TrustStore
) -> None:
    # Issue 11 item 6: signed directly by a private root, not by an intermediate left out.
    verdict = judge(
        facts_of(certs.private_root_leaf("a.test")), hostname="a.test", now=certs.now(), trust_store=trust
    )
    assert not verdict.trusted and codes(verdict) == {"untrusted"}
    assert verdict.trust_error is not None
    assert "intermediate" not in verdict.trust_error
    assert "not a trusted CA" in verdict.trust_error and "--ca-file" in verdict.trust_error
    assert "--ca-file" in verdict.problems[0].message


def test_self_signed_suggests_pinning_with_ca_file(certs: CertFactory, trust: TrustStore) -> None:
    verdict = judge(
        facts_of(certs.self_signed("a.test")), hostname="a.test", now=certs.now(), trust_store=trust
    )
    assert "--ca-file" in verdict.problems[0].message


def test_sha1_signature_is_flagged(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.sha1_signed("a.test"))
    assert chain[0].signature_algorithm == "ecdsa-with-SHA1" and chain[0].signature_hash == "sha1"
    verdict = judge(chain, hostname="a.test", now=certs.now(), trust_store=trust)
    assert codes(verdict) == {"weak_signature"}
    assert verdict.state is State.CRITICAL


def test_rsa_1024_is_flagged(certs: CertFactory, trust: TrustStore) -> None:
    chain = facts_of(certs.rsa1024("a.test"))
    assert (chain[0].key_type, chain[0].key_bits) == ("RSA", 1024)
    verdict = judge(chain, hostname="a.test", now=certs.now(), trust_store=trust)
    assert codes(verdict) == {"weak_key"}


def test_lets_encrypt_issuer_is_recognised(certs: CertFactory) -> None:
    leaf = facts_of(certs.custom("a.test", issuer_organization="Let's Encrypt"))[0]
    assert leaf.is_lets_encrypt and leaf.issuer_name == "Let's Encrypt"


def test_system_trust_store_loads() -> None:
    assert TrustStore().sources, "the system CA bundle should be found"


def test_judge_needs_aware_now(certs: CertFactory, trust: TrustStore) -> None:
    with pytest.raises(ValueError):
        judge(
            facts_of(certs.valid("a.test")), hostname="a.test", now=dt.datetime(2030, 1, 1), trust_store=trust
        )


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        cert_facts(b"\x30\x03\x02\x01\x00")


@pytest.mark.parametrize(
    ("left", "days"),
    [
        (dt.timedelta(days=5), 5),
        (dt.timedelta(days=4, hours=23, minutes=59), 4),
        (dt.timedelta(hours=23), 0),
        (dt.timedelta(0), 0),
        (dt.timedelta(seconds=-1), -1),
        (dt.timedelta(days=-1), -1),
        (dt.timedelta(days=-1, seconds=-1), -2),
    ],
)
def test_days_left_rounds_down(left: dt.timedelta, days: int) -> None:
    now = dt.datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    assert days_left(now + left, now) == days


@pytest.mark.parametrize(
    ("host", "names", "ok"),
    [
        ("www.example.com", ["www.example.com"], True),
        ("WWW.Example.com.", ["www.example.com"], True),
        ("www.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("a.b.example.com", ["*.example.com"], False),
        ("www.example.com", ["*.com"], False),
        ("www.example.com", ["w*.example.com"], False),
        ("www.example.com", ["example.com", "mail.example.com"], False),
        ("www.example.com", [], False),
    ],
)
def test_hostname_matching(host: str, names: list[str], ok: bool) -> None:
    assert hostname_matches(host, names) is ok


def test_ip_hostname_matches_ip_san_only() -> None:
    assert hostname_matches("192.0.2.1", ["192.0.2.1"], []) is False
    assert hostname_matches("192.0.2.1", [], ["192.0.2.1"]) is True
    assert hostname_matches("2001:db8::1", [], ["2001:0db8:0:0:0:0:0:1"]) is True


def test_stale_deployment_is_the_older_certificate(certs: CertFactory) -> None:
    now = certs.now()
    old = facts_of(
        certs.issued("a.test", not_before=now - dt.timedelta(days=80), not_after=now + dt.timedelta(days=10))
    )[0]
    new = facts_of(
        certs.issued("a.test", not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89))
    )[0]
    stale = find_stale_deployments([("192.0.2.1", new), ("192.0.2.2", old), ("2001:db8::1", new)])
    assert [(s.ip, s.sha256, s.current_sha256) for s in stale] == [("192.0.2.2", old.sha256, new.sha256)]
    assert stale[0].problem().severity is Severity.WARNING
    assert find_stale_deployments([("192.0.2.1", new), ("192.0.2.2", new)]) == []
    assert find_stale_deployments([]) == []


def test_four_days_twenty_three_hours_is_four_days_everywhere(certs: CertFactory, trust: TrustStore) -> None:
    # Issue 11 item 7: one number (floor) and one severity, in the verdict, its message and the
    # helper other views use.
    chain = facts_of(certs.valid("a.test", days=90))
    now = chain[0].not_after - dt.timedelta(days=4, hours=23)
    verdict = judge(chain, hostname="a.test", now=now, trust_store=trust, warn_days=30, crit_days=5)
    assert verdict.days_left == 4
    assert verdict.state is State.CRITICAL
    assert [p.message for p in verdict.problems] == ["certificate expires in 4 days"]
    assert expiry_severity(chain[0].not_after, now, 30, 5) is Severity.CRITICAL
    assert expiry_severity(chain[0].not_after, now, 30, 4) is Severity.WARNING
    assert expiry_severity(chain[0].not_after, now, 4, 4) is None
    assert expiry_severity(chain[0].not_after, chain[0].not_after, 0, 0) is Severity.CRITICAL
