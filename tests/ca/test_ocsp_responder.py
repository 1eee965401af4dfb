"""The OCSP responder in-process: its delegated certificate and key in SoftHSM, renewal,
rotated intermediates, nonce lengths, the cache's lifetime, and a token it cannot open."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hsm.keys import key_attributes
from provisioner import batches
from provisioner.ca.ceremony import factory_pin, init_ca, load_ca, open_module, rotate, store_of
from provisioner.ca.ocsp import OcspAnswer, OcspResponder
from provisioner.ca.ocsp_responder_cert import RENEW_BEFORE, VALIDITY, ensure_responder
from provisioner.ca.store import fingerprint
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import (
    AuditEvent,
    FieldDevice,
    FieldEnrollmentToken,
    IdentityCertificate,
)
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.settings import Settings
from tests.core.test_issuance_policy import _ready_device


@pytest.fixture
def setup(ca_settings: Settings) -> Iterator[tuple[Settings, Engine, OcspResponder]]:
    init_ca(ca_settings)
    engine = make_engine(ca_settings.db_url)
    create_schema(engine)
    responder = OcspResponder(ca_settings, engine)
    yield ca_settings, engine, responder
    responder.close()


def _request(
    issuer: x509.Certificate,
    serial: int,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    name_hash = hashes.Hash(algorithm)
    name_hash.update(issuer.subject.public_bytes())
    key_hash = hashes.Hash(algorithm)
    key_hash.update(
        issuer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    b = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash.finalize(), serial, algorithm
    )
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def _verified(answer: OcspAnswer, issuer: x509.Certificate) -> ocsp.OCSPResponse:
    """The response, its signature checked with the responder certificate it carries,
    which must be issued by ``issuer`` for OCSP signing."""
    resp = ocsp.load_der_ocsp_response(answer.der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    (responder,) = resp.certificates
    responder.verify_directly_issued_by(issuer)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    pub = responder.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    return resp


def test_the_responder_key_lives_in_the_token_and_its_certificate_is_audited(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, engine, responder = setup
    inter = store_of(settings).intermediate()
    answer = responder.respond(_request(inter, 42))
    assert answer.outcome == "unknown"
    resp = _verified(answer, inter)
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    (cert,) = resp.certificates
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck).critical is False
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert VALIDITY <= life <= VALIDITY + timedelta(minutes=10)
    with open_module(settings) as mod:
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings))
        try:
            attrs = key_attributes(ts, "ocsp-intermediate-ca")
        finally:
            ts.close()
    assert attrs["sensitive"] and not attrs["extractable"] and attrs["never_extractable"]
    with Session(engine) as s:
        events = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "ca.ocsp_responder_issued")
        ).all()
    assert len(events) == 1
    assert events[0].actor == "ocsp-responder"
    assert format(cert.serial_number, "x") in str(events[0].payload)
    # a second request reuses the key and the certificate: nothing more issued
    responder.respond(_request(inter, 43, nonce=os.urandom(16)))
    with Session(engine) as s:
        again = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "ca.ocsp_responder_issued")
        ).all()
    assert len(again) == 1


def test_renewed_with_the_same_key_when_near_expiry(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, engine, _ = setup
    inter = store_of(settings).intermediate()
    ca = load_ca(settings)
    try:
        first = ensure_responder(settings, engine, ca.pool, ca.name, inter, "admin:t")
        assert first.issued and first.key_created
        expiry = first.certificate.not_valid_after_utc
        kept = ensure_responder(
            settings, engine, ca.pool, ca.name, inter, "admin:t",
            now=expiry - RENEW_BEFORE - timedelta(hours=1),
        )  # fmt: skip
        assert not kept.issued and kept.certificate == first.certificate
        renewed = ensure_responder(
            settings, engine, ca.pool, ca.name, inter, "admin:t",
            now=expiry - RENEW_BEFORE + timedelta(hours=1),
        )  # fmt: skip
    finally:
        ca.close()
    assert renewed.issued and not renewed.key_created
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert renewed.certificate.public_key() == first.certificate.public_key()
    assert renewed.certificate.not_valid_after_utc > expiry
    stored = settings.ca_dir / "ocsp" / "intermediate-ca.pem"
    assert x509.load_pem_x509_certificate(stored.read_bytes()) == renewed.certificate


def test_a_rotated_intermediate_keeps_answering_with_its_own_responder(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, engine, responder = setup
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
    (dev,) = batches.mark_started(engine, batch_id, actor="t")
    req = _ready_device(DeviceLedger(engine, "station:line1", "line1"), dev, 5)
    svc = IssuanceService.open(engine, settings)
    try:
        cert = svc.sign(req)
    finally:
        svc.close()
    old = store_of(settings).intermediate()
    rotate(settings)
    new = store_of(settings).intermediate()
    answer = responder.respond(_request(old, cert.serial_number))
    assert answer.outcome == "good"
    resp = _verified(answer, old)
    assert resp.certificates[0].subject.rfc4514_string().startswith("CN=OCSP intermediate-ca,")
    # the same serial under the new intermediate is not one of its certificates
    other = responder.respond(_request(new, cert.serial_number, algorithm=hashes.SHA256()))
    assert other.outcome == "unknown"
    assert (
        "CN=OCSP intermediate-ca-2"
        in _verified(other, new).certificates[0].subject.rfc4514_string()
    )


def test_nonce_lengths_and_the_cache_lifetime(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, _, responder = setup
    inter = store_of(settings).intermediate()
    now = datetime.now(UTC)
    plain = responder.respond(_request(inter, 7), now=now)
    assert not plain.pre_produced and not plain.nonce
    again = responder.respond(_request(inter, 7), now=now + responder.validity / 3)
    assert again.pre_produced and again.der == plain.der
    # a 64-octet nonce may be ignored (RFC 8954): the pre-produced answer, no nonce in it
    long = responder.respond(_request(inter, 7, nonce=os.urandom(64)), now=now)
    assert long.der == plain.der
    # 32 octets: echoed in a fresh signature
    nonce = os.urandom(32)
    fresh = responder.respond(_request(inter, 7, nonce=nonce), now=now)
    assert fresh.nonce and fresh.der != plain.der
    ext = _verified(fresh, inter).extensions.get_extension_for_class(x509.OCSPNonce)
    assert ext.value.nonce == nonce
    # over 128 octets: refused
    huge = responder.respond(_request(inter, 7, nonce=os.urandom(129)), now=now)
    assert huge.outcome == "malformed_request"
    # past half its validity the pre-produced answer is signed again
    later = responder.respond(_request(inter, 7), now=now + responder.validity / 2)
    assert not later.pre_produced and later.der != plain.der
    resp = _verified(later, inter)
    assert resp.next_update_utc is not None
    assert resp.next_update_utc - resp.this_update_utc == responder.validity


def test_a_token_it_cannot_open_answers_try_later_then_recovers(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, _, responder = setup
    inter = store_of(settings).intermediate()
    pin = settings.pin_file
    hidden = pin.with_name(pin.name + ".away")
    pin.rename(hidden)
    try:
        answer = responder.respond(_request(inter, 9))
    finally:
        hidden.rename(pin)
    assert answer.outcome == "try_later"
    parsed = ocsp.load_der_ocsp_response(answer.der)
    assert parsed.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    assert responder.respond(_request(inter, 9)).outcome == "unknown"


def test_a_token_connection_lost_under_it_is_reopened(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    """C_Finalize + C_Initialize under the responder (what a restarted HSM service or a
    reloaded module does to every session of the process): the next signature reconnects
    and logs in again instead of failing for good."""
    settings, _, responder = setup
    inter = store_of(settings).intermediate()
    assert responder.respond(_request(inter, 11, nonce=os.urandom(16))).outcome == "unknown"
    with open_module(settings) as mod:
        mod.reinitialize()  # every session of this process is gone
    answers = [responder.respond(_request(inter, 11, nonce=os.urandom(16))) for _ in range(3)]
    assert [a.outcome for a in answers] == ["unknown"] * 3
    _verified(answers[-1], inter)


def test_identity_certificates_of_field_devices_are_answered(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    """Devices enrolled in the field (rows as the fleet service writes them): a live identity
    certificate is good, a superseded one revoked with its reason and time."""
    settings, engine, responder = setup
    inter = store_of(settings).intermediate()
    now = datetime.now(UTC).replace(microsecond=0)
    with transaction(engine) as s:
        token = FieldEnrollmentToken(
            registry_name="projects/p/locations/l/registries/r",
            token_hash="a" * 64,
            created_by="admin:t",
            expires_at=now + timedelta(days=1),
        )
        s.add(token)
        s.flush()
        assert token.id is not None
        dev = FieldDevice(
            device_id="fd-1",
            registry_name=token.registry_name,
            token_hash="b" * 64,
            enrollment_token_id=token.id,
        )
        s.add(dev)
        s.flush()
        assert dev.id is not None
        for serial, revoked in ((0x5EED01, None), (0x5EED02, now - timedelta(hours=1))):
            s.add(
                IdentityCertificate(
                    field_device_id=dev.id,
                    serial_number=format(serial, "x"),
                    fingerprint_sha256=format(serial, "064x"),
                    der=b"\x30\x00",
                    not_before=now - timedelta(days=1),
                    not_after=now + timedelta(days=364),
                    issuer_fingerprint_sha256=fingerprint(inter),
                    key_source="csr",
                    revoked_at=revoked,
                    reason="superseded" if revoked else None,
                )
            )
    good = _verified(responder.respond(_request(inter, 0x5EED01)), inter)
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    old = _verified(responder.respond(_request(inter, 0x5EED02)), inter)
    assert old.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert old.revocation_reason == x509.ReasonFlags.superseded
    assert old.revocation_time_utc == now - timedelta(hours=1)


def test_the_responder_renews_its_certificate_by_itself(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    settings, engine, responder = setup
    inter = store_of(settings).intermediate()
    (first,) = _verified(responder.respond(_request(inter, 21)), inter).certificates
    later = first.not_valid_after_utc - RENEW_BEFORE + timedelta(hours=1)
    answer = responder.respond(_request(inter, 21), now=later)
    assert not answer.pre_produced  # signed anew (the cached one is long past its half-life)
    (second,) = _verified(answer, inter).certificates
    assert second.serial_number != first.serial_number
    assert second.public_key() == first.public_key()  # same key in the token
    assert second.not_valid_after_utc > first.not_valid_after_utc
    with Session(engine) as s:
        issued = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "ca.ocsp_responder_issued")
        ).all()
    assert len(issued) == 2


def test_status_reads_never_wait_for_the_lines_writers(
    setup: tuple[Settings, Engine, OcspResponder],
) -> None:
    """On SQLite the line's transactions begin IMMEDIATE (the write lock). The responder's
    status read must go through while one is open, and must not take that lock itself:
    an unauthenticated OCSP flood would otherwise queue every write of the line."""
    settings, engine, responder = setup
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL reads never wait for writers")
    issuer = store_of(settings).intermediate()
    responder.respond(_request(issuer, 0x1234, nonce=os.urandom(16)))  # token open, cert made
    import time

    with transaction(engine) as s:  # a writer of the line holds the write lock meanwhile
        s.exec(select(AuditEvent)).first()
        start = time.monotonic()
        answer = responder.respond(_request(issuer, 0x1234))
        waited = time.monotonic() - start
    single = _verified(answer, issuer).responses
    assert next(iter(single)).certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert waited < 5.0, f"the status read waited {waited:.1f} s for the writer"
    from sqlalchemy.exc import OperationalError

    from provisioner.db.engine import reader_of

    with pytest.raises(OperationalError, match="readonly"), Session(reader_of(engine)) as s:
        s.connection().exec_driver_sql("DELETE FROM crl_number")
