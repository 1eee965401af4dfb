"""Revocation everywhere in the chain: the root's CRL, the intermediates' CRLs over every
kind of certificate (line devices, field identities, stations), batch revocation and the
distribution points, checked by ``openssl verify -crl_check_all`` with the real SoftHSM CA
made by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner import batches
from provisioner.api.app import create_app
from provisioner.audit.verify import verify_log
from provisioner.ca import revocation
from provisioner.ca.ceremony import load_ca
from provisioner.ca.store import fingerprint
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import (
    AuditEvent,
    FieldDevice,
    FieldEnrollmentToken,
    IdentityCertificate,
    RegistryBlock,
    Revocation,
    StationIdentity,
)
from provisioner.db.models import (
    Station as StationRow,
)
from provisioner.errors import NotFoundError
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import IssuedCertificate
from provisioner.settings import Settings
from tests.conftest import Station
from tests.core.test_issuance_policy import _ready_device
from tests.e2e.test_end_to_end import cli


def _pem(cert: x509.Certificate | bytes, path: Path) -> Path:
    c = x509.load_der_x509_certificate(cert) if isinstance(cert, bytes) else cert
    path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return path


def _crl_pem(der_file: Path, out: Path) -> Path:
    crl = x509.load_der_x509_crl(der_file.read_bytes())
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out


def _issue(settings: Settings, engine: Engine, count: int) -> tuple[int, list[IssuedCertificate]]:
    """``count`` device certificates from the SoftHSM CA, in one batch (left running)."""
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=count, actor="t")
    ids = batches.mark_started(engine, batch_id, actor="t")
    ledger = DeviceLedger(engine, "station:line1", "line1")
    reqs = [_ready_device(ledger, d, 60 + 10 * batch_id + i) for i, d in enumerate(ids)]
    os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf)
    svc = IssuanceService.open(engine, settings)
    try:
        return batch_id, [svc.sign(r) for r in reqs]
    finally:
        svc.close()


@pytest.fixture
def line(station: Station) -> tuple[Station, Engine]:
    """A CA made by `provisioner ca init` (which publishes the first CRLs)."""
    done = cli(station, "ca", "init")
    assert "published" in done.stdout, done.stdout
    engine = make_engine(station.settings.db_url)
    create_schema(engine)
    return station, engine


def _verify(
    settings: Settings, tmp: Path, leaf: Path, crls: list[Path] | None = None
) -> subprocess.CompletedProcess[str]:
    ca = settings.ca_dir
    crl_dir = ca / "crl"
    crls = crls or [crl_dir / "root.crl", crl_dir / "intermediate-ca.crl"]
    args = ["openssl", "verify", "-crl_check_all", "-CAfile", str(ca / "root.pem")]
    args += ["-untrusted", str(ca / "intermediate.pem")]
    for i, crl in enumerate(crls):
        args += ["-CRLfile", str(_crl_pem(crl, tmp / f"crl{i}.pem"))]
    return subprocess.run([*args, str(leaf)], capture_output=True, text=True)


def test_crl_check_all_accepts_a_good_device_and_rejects_a_revoked_one(
    line: tuple[Station, Engine], tmp_path: Path
) -> None:
    station, engine = line
    settings = station.settings
    crl_dir = settings.ca_dir / "crl"
    assert sorted(p.name for p in crl_dir.glob("*.crl")) == ["intermediate-ca.crl", "root.crl"]
    _, (good, bad) = _issue(settings, engine, 2)
    good_pem, bad_pem = _pem(good.der, tmp_path / "good.pem"), _pem(bad.der, tmp_path / "bad.pem")

    # Device certificates point at the issuing intermediate's CRL and at the OCSP
    # responder, on this line's API, by default.
    cert = x509.load_der_x509_certificate(good.der)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in cdp for n in (p.full_name or [])] == [
        f"{settings.api_url}/crl/intermediate-ca.crl"
    ]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, f"{settings.api_url}/ocsp")
    ]

    before = _verify(settings, tmp_path, good_pem)
    assert before.returncode == 0 and f"{good_pem}: OK" in before.stdout, before

    chip = (
        x509.load_der_x509_certificate(bad.der)
        .subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
        .value
    )
    done = cli(station, "ca", "revoke", str(chip), "--reason", "key_compromise", "--json")
    assert json.loads(done.stdout)["crls"][0]["entries"] == 1

    ok = _verify(settings, tmp_path, good_pem)
    assert ok.returncode == 0 and f"{good_pem}: OK" in ok.stdout, ok
    denied = _verify(settings, tmp_path, bad_pem)
    assert denied.returncode != 0 and "certificate revoked" in denied.stdout + denied.stderr

    # Without the root's CRL the whole-chain check cannot pass: it is what makes it work.
    no_root = _verify(settings, tmp_path, good_pem, [crl_dir / "intermediate-ca.crl"])
    assert no_root.returncode != 0
    assert "unable to get certificate CRL" in no_root.stdout + no_root.stderr

    # The API serves the root's CRL where the intermediates' are.
    client = TestClient(create_app(settings))
    served = client.get("/crl/root.crl")
    assert served.status_code == 200 and served.headers["content-type"] == "application/pkix-crl"
    root_crl = x509.load_der_x509_crl(served.content)
    root = x509.load_pem_x509_certificate((settings.ca_dir / "root.pem").read_bytes())
    assert root_crl.issuer == root.subject and len(root_crl) == 0
    assert root_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    next_update = root_crl.next_update_utc
    assert next_update is not None
    assert next_update - root_crl.last_update_utc == timedelta(
        days=settings.crl.root_next_update_days
    )


def _identity_certificate(settings: Settings, serial: int) -> x509.Certificate:
    """A certificate issued by the SoftHSM intermediate, as a field identity would be."""
    ca = load_ca(settings)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        inter = ca.intermediate_cert
        ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{serial}")]))
            .issuer_name(inter.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(ca.key, hashes.SHA256())
        )
    finally:
        ca.close()


def test_revoked_identity_and_station_certificates_are_in_the_crl(
    line: tuple[Station, Engine], tmp_path: Path
) -> None:
    station, engine = line
    settings = station.settings
    ident = _identity_certificate(settings, 0x5EED0001)
    live = _identity_certificate(settings, 0x5EED0002)
    st_cert = _identity_certificate(settings, 0x5EED0003)
    inter_fp = fingerprint(
        x509.load_pem_x509_certificate((settings.ca_dir / "intermediate.pem").read_bytes())
    )
    revoked_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with transaction(engine) as s:
        tok = FieldEnrollmentToken(
            registry_name="projects/p/locations/l/registries/r",
            token_hash="a" * 64,
            created_by="admin:t",
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        s.add(tok)
        s.flush()
        assert tok.id is not None
        dev = FieldDevice(
            device_id="dev-1",
            registry_name=tok.registry_name,
            token_hash="b" * 64,
            enrollment_token_id=tok.id,
        )
        s.add(dev)
        s.flush()
        assert dev.id is not None
        for cert, when in ((ident, revoked_at), (live, None)):
            s.add(
                IdentityCertificate(
                    field_device_id=dev.id,
                    serial_number=format(cert.serial_number, "x"),
                    fingerprint_sha256=fingerprint(cert),
                    der=cert.public_bytes(serialization.Encoding.DER),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    issuer_fingerprint_sha256=inter_fp,
                    key_source="csr",
                    revoked_at=when,
                    reason="key_compromise" if when else None,
                    revoked_by="admin:t" if when else None,
                )
            )
        s.add(StationRow(id="line1"))
        s.add(
            StationIdentity(
                fingerprint_sha256=fingerprint(st_cert),
                station_id="line1",
                serial_number=format(st_cert.serial_number, "x"),
                certificate_pem=st_cert.public_bytes(serialization.Encoding.PEM).decode(),
                not_after=st_cert.not_valid_after_utc,
                revoked_at=revoked_at,
                revoked_by="admin:t",
            )
        )
    published = json.loads(cli(station, "ca", "crl", "--json").stdout)
    assert {p["ca"]: p["entries"] for p in published} == {"intermediate-ca": 2, "root": 0}
    crl = x509.load_der_x509_crl((settings.ca_dir / "crl" / "intermediate-ca.crl").read_bytes())
    got = {e.serial_number: e for e in crl}
    assert set(got) == {0x5EED0001, 0x5EED0003}
    reason = got[0x5EED0001].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert got[0x5EED0001].revocation_date_utc == revoked_at
    assert not list(got[0x5EED0003].extensions)  # "unspecified": no reason code

    denied = _verify(settings, tmp_path, _pem(ident, tmp_path / "ident.pem"))
    assert denied.returncode != 0 and "certificate revoked" in denied.stdout + denied.stderr
    ok = _verify(settings, tmp_path, _pem(live, tmp_path / "live.pem"))
    assert ok.returncode == 0, ok


def test_batch_revocation_revokes_blocks_audits_and_publishes_once(
    line: tuple[Station, Engine], tmp_path: Path
) -> None:
    station, engine = line
    settings = station.settings
    batch_id, certs = _issue(settings, engine, 3)
    _, (other,) = _issue(settings, engine, 1)  # another batch: untouched
    revocation.revoke(engine, format(certs[0].serial_number, "x"), "superseded", "admin:t")

    running = cli(station, "ca", "revoke", "--batch", str(batch_id), check=False)
    assert running.returncode != 0 and "batch cancel" in running.stderr
    neither = cli(station, "ca", "revoke", check=False)
    assert neither.returncode != 0 and "--batch" in neither.stderr
    with pytest.raises(NotFoundError, match="no batch 999"):
        revocation.revoke_batch(engine, 999, "unspecified", "admin:t")

    batches.cancel(engine, batch_id, actor="t")
    number_before = (
        x509.load_der_x509_crl((settings.ca_dir / "crl" / "intermediate-ca.crl").read_bytes())
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
    )
    done = cli(
        station, "ca", "revoke", "--batch", str(batch_id), "--reason", "key_compromise", "--json"
    )
    out = json.loads(done.stdout)
    assert [r["already_revoked"] for r in out["revoked"]] == [True, False, False]
    assert [r["reason"] for r in out["revoked"]] == [
        "superseded",
        "key_compromise",
        "key_compromise",
    ]
    # Redis is not running here: each block is recorded for the registry worker's sync.
    assert all("Redis is down" in r["registry_block"]["detail"] for r in out["revoked"])
    (crl_info,) = out["crls"]
    assert crl_info["crl_number"] == number_before + 1 and crl_info["entries"] == 3

    with transaction(engine) as s:
        revoked = {r.serial_number for r in s.exec(select(Revocation)).all()}
        blocks = s.exec(select(RegistryBlock)).all()
        kinds = [e.event_type for e in s.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))]
        assert verify_log(s, None).ok
    assert revoked == {format(c.serial_number, "x") for c in certs}
    assert len(blocks) == 3
    assert kinds.count("ca.certificate_revoked") == 3 and kinds.count("ca.batch_revoked") == 1
    assert kinds.count("registry.block_requested") == 3

    for i, c in enumerate(certs):
        leaf = _pem(c.der, tmp_path / f"b{i}.pem")
        checked = _verify(settings, tmp_path, leaf)
        assert "certificate revoked" in checked.stdout + checked.stderr
    assert _verify(settings, tmp_path, _pem(other.der, tmp_path / "other.pem")).returncode == 0

    again = revocation.revoke_batch(engine, batch_id, "unspecified", "admin:t")
    assert [r.already for r in again] == [True, True, True]
