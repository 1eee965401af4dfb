"""The CRL schedule (re-signing on time, at half-life, after a revocation it did not see
published, for a missing file) and the root's CRL (signed in the root token, or imported
for an offline root), with the real SoftHSM CA."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner.ca import crl_schedule, root_crl
from provisioner.ca.ceremony import LoadedCa, init_ca, load_ca
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Station, StationIdentity
from provisioner.errors import InvalidInputError
from provisioner.settings import CrlSettings, Settings
from workers import runtime
from workers.queues import HSM_QUEUE


@pytest.fixture
def ca_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Engine]]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var", crl=CrlSettings(refresh_s=600, next_update_days=2)
    )
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    yield settings, engine
    engine.dispose()


@pytest.fixture
def loaded_ca(ca_line: tuple[Settings, Engine]) -> Iterator[LoadedCa]:
    ca = load_ca(ca_line[0])
    yield ca
    ca.close()


def _crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(path.read_bytes())


def _number(path: Path) -> int:
    crl = _crl(path)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_schedule_publishes_what_is_due_and_nothing_else(
    ca_line: tuple[Settings, Engine], loaded_ca: LoadedCa
) -> None:
    settings, engine = ca_line
    inter = settings.ca_dir / "crl" / "intermediate-ca.crl"
    sched = crl_schedule.CrlSchedule(settings, engine, loaded_ca)
    first = crl_schedule.due(settings, engine)
    assert first.intermediates == {"intermediate-ca": "missing"} and first.root == "missing"
    assert sorted(p.name for p in sched.tick()) == ["intermediate-ca", "root"]
    assert _number(inter) == 1 and _number(root_crl.root_crl_path(settings)) == 1

    now = datetime.now(UTC)
    assert not crl_schedule.due(settings, engine, now + timedelta(seconds=30))
    assert sched.tick(now + timedelta(seconds=30)) == []
    # refresh_s (600 s) passed: signed again; the root's CRL (a year) is left alone.
    later = crl_schedule.due(settings, engine, now + timedelta(seconds=601))
    assert later.intermediates == {"intermediate-ca": "refresh"} and later.root is None
    assert [p.name for p in sched.tick(now + timedelta(seconds=601))] == ["intermediate-ca"]
    assert _number(inter) == 2

    # Half of the root CRL's year gone: the root's is re-signed in the root token.
    half_year = now + timedelta(days=settings.crl.root_next_update_days / 2, seconds=1)
    assert crl_schedule.due(settings, engine, half_year).root == "half of its validity passed"

    # A revocation recorded by a path that published nothing (a re-enrolled station's old
    # certificate) reaches the CRL at the next poll.
    with transaction(engine) as s:
        s.add(Station(id="line1"))
        cert = _station_cert(loaded_ca, 0xABC)
        s.add(
            StationIdentity(
                fingerprint_sha256="f" * 64,
                station_id="line1",
                serial_number="abc",
                certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                not_after=cert.not_valid_after_utc,
                revoked_at=datetime.now(UTC),
                revoked_by="admin:t",
            )
        )
    assert crl_schedule.due(settings, engine).intermediates == {
        "intermediate-ca": "1 revoked, 0 listed"
    }
    (published,) = sched.tick()
    assert published.entries == 1 and _crl(inter).get_revoked_certificate_by_serial_number(0xABC)
    with transaction(engine) as s:
        actors = {
            e.actor
            for e in s.exec(
                select(AuditEvent).where(col(AuditEvent.event_type) == "ca.crl_published")
            )
        }
    assert actors == {crl_schedule.ACTOR}


def test_schedule_re_signs_at_half_life_even_with_a_long_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var", crl=CrlSettings(refresh_s=30 * 86400, next_update_days=2)
    )
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    ca = load_ca(settings)
    try:
        sched = crl_schedule.CrlSchedule(settings, engine, ca)
        sched.tick()
        now = datetime.now(UTC)
        assert not crl_schedule.due(settings, engine, now + timedelta(hours=23))
        due = crl_schedule.due(settings, engine, now + timedelta(days=1, seconds=1))
        assert due.intermediates == {"intermediate-ca": "half of its validity passed"}
    finally:
        ca.close()
        engine.dispose()


def _station_cert(ca: LoadedCa, serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.intermediate_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "line1")]))
        .issuer_name(ca.intermediate_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def test_the_hsm_worker_runs_the_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The line's hsm worker child 0 starts the schedule with its own token connection: a
    CRL deleted from disk is back within a few polls (refresh_s 10 s: a poll a second)."""
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", crl=CrlSettings(refresh_s=10))
    init_ca(settings)
    rt = runtime._open_line(settings, frozenset({HSM_QUEUE}), 0)
    try:
        assert rt.crl_schedule is not None
        files = [settings.ca_dir / "crl" / n for n in ("intermediate-ca.crl", "root.crl")]
        deadline = time.monotonic() + 30
        while not all(f.exists() for f in files) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(f.exists() for f in files)
        first = _number(files[0])
        files[0].unlink()
        while not files[0].exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _number(files[0]) == first + 1
        # Signing the root's CRL (its own token, opened and closed in this process) left
        # the signer's factory-token login alone.
        key = rt.signer.ca.key
        sig = key.sign(b"still logged in", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, b"still logged in", ec.ECDSA(hashes.SHA256()))
    finally:
        rt.crl_schedule.stop()
        rt.checkpointer.stop()
        rt.signer.close()
        rt.db.dispose()
    other = runtime._open_line(settings, frozenset({HSM_QUEUE}), 1)
    try:
        assert other.crl_schedule is None  # one schedule per worker, not per child
    finally:
        other.checkpointer.stop()
        other.signer.close()
        other.db.dispose()


def test_offline_root_imports_its_crl(
    ca_line: tuple[Settings, Engine], loaded_ca: LoadedCa, tmp_path: Path
) -> None:
    settings, engine = ca_line
    first = root_crl.publish_root(settings, engine, "admin:t")
    kept = tmp_path / "root-1.crl"
    shutil.copy(first.path, kept)
    second = root_crl.publish_root(settings, engine, "admin:t")
    assert second.number == first.number + 1
    signed_elsewhere = tmp_path / "root-2.crl"
    shutil.copy(second.path, signed_elsewhere)

    # The root kept offline: no root PIN on this machine.
    settings.root_pin_file.rename(tmp_path / "root.pin")
    with pytest.raises(root_crl.OfflineRootError, match="--import-root"):
        root_crl.publish_root(settings, engine, "admin:t")
    assert crl_schedule.CrlSchedule(settings, engine, loaded_ca).tick(
        datetime.now(UTC) + timedelta(days=200)
    )  # the intermediates' CRLs still go out; the root's is left to the operator
    assert _number(root_crl.root_crl_path(settings)) == second.number

    with pytest.raises(InvalidInputError, match="not above the installed one"):
        root_crl.import_root(settings, engine, kept, "admin:t")
    forged = _forged(settings, number=99)
    with pytest.raises(InvalidInputError, match="does not verify with the root key"):
        root_crl.import_root(settings, engine, forged, "admin:t")
    root_crl.root_crl_path(settings).unlink()
    done = root_crl.import_root(settings, engine, signed_elsewhere, "admin:t")
    assert done.number == second.number
    assert root_crl.root_crl_path(settings).read_bytes() == signed_elsewhere.read_bytes()
    with transaction(engine) as s:
        assert s.exec(
            select(AuditEvent).where(col(AuditEvent.event_type) == "ca.root_crl_imported")
        ).first()


def _forged(settings: Settings, number: int) -> Path:
    """A CRL in the root's name signed by some other key."""
    root = x509.load_pem_x509_certificate((settings.ca_dir / "root.pem").read_bytes())
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now)
        .next_update(now + timedelta(days=30))
        .add_extension(x509.CRLNumber(number), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    out = settings.var / "forged.crl"
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out
