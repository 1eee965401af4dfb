"""The preprovisioned batch mode in-process: real emulated Trust&GO / TrustFLEX parts read
through cryptoauthlib, the socket task and the line's records on a real database; only
Celery is left out (tests/preprovisioned/test_through_the_link.py puts the gateway between).

The part's own certificate, verified against the manufacturer root the line trusts (checked
here independently with ``cryptography``), is what is recorded, uploaded and listed in the
manifest; our CA issues nothing. A part whose chain does not verify, and a blank chip, are
refused with a clear error, recorded, and nothing is uploaded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import func, select

from provisioner import batches, pipeline
from provisioner.audit.verify import verify_log
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.chips.emulator.tray import broken_chain, trust_and_go, trustflex
from provisioner.db.engine import transaction
from provisioner.db.models import (
    AuditEvent,
    Batch,
    BatchState,
    Certificate,
    Device,
    FactoryCertificate,
    PartAction,
    RegistryUpload,
    Step,
)
from provisioner.errors import ChipStateError, DeviceStopped, InvalidInputError
from provisioner.ledger import DeviceLedger
from provisioner.ports import DeviceAlreadyExists, RegistryDevice
from provisioner.settings import Settings, StationSettings
from provisioner.station import emulated_manufacturer_root
from provisioner.uploads.manifest import batch_records, sign_entries, verify
from tests.preprovisioned.conftest import REGISTRY, events, records, socket_run, started_batch


class MemoryRegistry:
    """A registry that keeps what it is given (the upload's end of the test)."""

    def __init__(self) -> None:
        self.devices: dict[str, str] = {}

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        if device_id in self.devices:
            raise DeviceAlreadyExists(device_id)
        self.devices[device_id] = certificate_pem
        return RegistryDevice(device_id, str(len(self.devices)), (certificate_pem,))

    def get_device(self, device_id: str) -> RegistryDevice | None:
        pem = self.devices.get(device_id)
        return None if pem is None else RegistryDevice(device_id, "1", (pem,))

    def block_device(self, device_id: str) -> bool:
        return False


def _manifest_signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A software stand-in for the manifest key in the HSM (what signs is not under test
    here; that the entry of a part's own certificate verifies is)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "manifest test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _count(line: dict[str, Any], table: Any) -> int:
    with transaction(line["engine"]) as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def _verify(cert: x509.Certificate, key: Any) -> None:
    """Independent check with cryptography: ``cert``'s signature under ``key``."""
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


@pytest.mark.parametrize(
    ("part", "make", "kind", "address"),
    [
        ("trust-and-go", trust_and_go, "tngtls", 0x6A),
        ("trustflex", trustflex, "tflxtls", 0x6C),
    ],
)
def test_a_preprovisioned_part_goes_through_its_batch_end_to_end(
    line: dict[str, Any],
    manufacturer: EmulatedManufacturer,
    part: str,
    make: Any,
    kind: str,
    address: int,
) -> None:
    device_id = started_batch(line, part=part)
    chip = make(manufacturer)
    line["jig"].insert_chip(0, chip)
    issued_before = _count(line, Certificate)

    out = socket_run(line).run(device_id)
    assert (out.kind, out.detail) == ("done", ""), out

    dev = line["ledger"].load(device_id)
    assert dev.step == Step.CERT_VERIFIED and dev.chip_serial == chip.serial.hex().upper()
    with transaction(line["engine"]) as s:
        row = s.exec(select(FactoryCertificate)).one()
        upload = s.exec(select(RegistryUpload)).one()
        batch = s.exec(select(Batch)).one()
    assert row.device_id == device_id and row.kind == kind
    device_cert = x509.load_der_x509_certificate(row.der)
    signer_cert = x509.load_der_x509_certificate(row.signer_der)
    # The chain, checked here with cryptography alone: device by signer, signer by the
    # manufacturer's root key; the signer is the manufacturer's own certificate.
    _verify(signer_cert, manufacturer.root_key.public_key())
    _verify(device_cert, manufacturer.signer_key.public_key())
    assert row.signer_der == manufacturer.signer_der()
    assert row.fingerprint_sha256 == hashlib.sha256(row.der).hexdigest()
    point = device_cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert dev.public_key == point.hex()
    # The proof of possession was made by the part itself with that key, at its address.
    with Connector(line["settings"]).open("emulated:line1/0", address=address) as driver:
        assert b"\x04" + driver.public_key(0) == point

    # Nothing issued by our CA: no signer call, no certificate row, the quota untouched.
    assert line["no_signer"].calls == 0
    assert _count(line, Certificate) == issued_before == 0 and batch.issued == 0
    assert upload.fingerprint_sha256 == row.fingerprint_sha256

    # The upload sends the part's certificate as it is; the batch then finishes.
    registry = MemoryRegistry()
    done = pipeline.upload_device(
        device_id, registry, DeviceLedger(line["engine"], "worker:registry", registry=REGISTRY)
    )
    assert done.step == Step.DONE
    (pem,) = registry.devices.values()
    assert x509.load_pem_x509_certificate(pem.encode()) == device_cert
    with transaction(line["engine"]) as s:
        assert s.exec(select(Batch)).one().state is BatchState.FINISHED

    shown = batches.summary(line["engine"], batch.id or 0, live=False).as_json()
    assert (shown["mode"], shown["part"], shown["issued"]) == ("preprovisioned", part, 0)

    # Listed in the batch's manifest with its manufacturer's signer certificate.
    (entry,) = batch_records(line["engine"], line["settings"], batch.id or 0)
    assert entry.device_cert == device_cert and entry.signer_cert == signer_cert
    assert entry.serial_hex == dev.chip_serial
    key, signer = _manifest_signer()
    entries = sign_entries([entry], key, signer, {"organizationName": "test"})
    assert verify(entries, signer) == [(dev.chip_serial or "").lower()]

    # Every step audited, in order, on an intact trail.
    with transaction(line["engine"]) as s:
        trail = [
            e.event_type
            for e in s.exec(
                select(AuditEvent).where(AuditEvent.device_id == device_id).order_by(AuditEvent.seq)
            )
        ]
        assert verify_log(s, None).ok
    assert trail == [
        "device.identified",
        "device.factory_certificates",
        "device.pop_verified",
        "device.cert_verified",
        "device.uploaded",
    ]


@pytest.mark.parametrize("broken", ["device", "root"])
def test_a_part_whose_chain_does_not_verify_is_refused(
    line: dict[str, Any], manufacturer: EmulatedManufacturer, broken: str
) -> None:
    device_id = started_batch(line)
    line["jig"].insert_chip(0, broken_chain(manufacturer, broken=broken))

    out = socket_run(line).run(device_id)

    assert out.kind == "failed"
    expected = {
        "device": "device certificate is not signed by its signer certificate",
        "root": "not signed by the trusted manufacturer root",
    }[broken]
    assert expected in out.detail
    dev = line["ledger"].load(device_id)
    assert dev.action == PartAction.REJECT.value and expected in (dev.error or "")
    assert dev.step == Step.IDENTIFIED and dev.public_key is None
    assert events(line, "incident.untrusted_part") == 1 and events(line, "device.failed") == 1
    assert _count(line, FactoryCertificate) == 0 and _count(line, RegistryUpload) == 0
    assert _count(line, Certificate) == 0 and line["no_signer"].calls == 0


def test_the_line_verifies_again_what_a_station_records(
    line: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    """Stations are the least trusted: the line's own records refuse a chain that does not
    verify, a part's certificate for an issue batch, and acceptance before the proof."""
    device_id = started_batch(line)
    recs = records(line)
    recs.identify(device_id, "0123AABBCCDDEEFF01", "00006002", "emulated:line1/0")
    other = EmulatedManufacturer.create()
    forged = other.signer_der()
    with pytest.raises(Exception, match="not signed by the trusted manufacturer root"):
        recs.record_factory_certificates(device_id, "tngtls", forged, forged)
    with pytest.raises(Exception, match="after its proof of possession"):
        recs.accept_factory_certificate(device_id)
    assert line["ledger"].load(device_id).step == Step.IDENTIFIED
    assert _count(line, FactoryCertificate) == 0

    issue_device = started_batch(line, mode="issue", part=None)
    with pytest.raises(Exception, match="mode `issue`"):
        recs.record_factory_certificates(
            issue_device, "tngtls", manufacturer.signer_der(), manufacturer.signer_der()
        )


def test_a_blank_chip_in_a_preprovisioned_batch_is_refused(line: dict[str, Any]) -> None:
    device_id = started_batch(line)
    line["jig"].insert_blank(0)

    out = socket_run(line).run(device_id)

    assert out.kind == "failed"
    assert "not a trust-and-go part" in out.detail and "blank chip" in out.detail
    assert line["ledger"].load(device_id).action == PartAction.REJECT.value
    assert _count(line, FactoryCertificate) == 0 and _count(line, RegistryUpload) == 0


def test_a_trust_and_go_part_in_an_issue_batch_is_refused_naming_the_mode(
    line: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    device_id = started_batch(line, mode="issue", part=None)
    line["jig"].insert_chip(0, trust_and_go(manufacturer))
    with (
        Connector(line["settings"]).open("emulated:line1/0", address=0x6A) as chip,
        pytest.raises(ChipStateError, match=r"mode `issue`.*--mode preprovisioned"),
    ):
        pipeline.provision_device(device_id, chip, line["no_signer"], line["ledger"])
    assert line["no_signer"].calls == 0
    with transaction(line["engine"]) as s:
        assert s.get(Device, device_id).step == Step.IDENTIFIED  # type: ignore[union-attr]


def test_a_batch_mode_needs_its_part_and_an_issue_batch_none(line: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match="--part must be one of trust-and-go, trustflex"):
        started_batch(line, part=None)
    with pytest.raises(InvalidInputError, match="--part is for a batch in mode preprovisioned"):
        started_batch(line, mode="issue", part="trust-and-go")
    with pytest.raises(InvalidInputError, match="--mode must be one of"):
        started_batch(line, mode="tng", part="trust-and-go")


def test_a_stopped_part_resumes_where_it_stopped(
    line: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    """A part stopped at a step boundary (batch paused) resumes from its last recorded step:
    its certificates are recorded once, its proof made after the resume."""
    device_id = started_batch(line)
    line["jig"].insert_chip(0, trust_and_go(manufacturer))
    recs = records(line)
    with Connector(line["settings"]).open("emulated:line1/0", address=0x6A) as chip:
        with pytest.raises(DeviceStopped):
            pipeline.provision_preprovisioned(
                device_id, chip, recs, part="trust-and-go", proceed=lambda s: s < Step.POP_VERIFIED
            )
        assert recs.load(device_id).step == Step.KEY_GENERATED
        done = pipeline.provision_preprovisioned(device_id, chip, recs, part="trust-and-go")
    assert done.step == Step.CERT_VERIFIED
    assert events(line, "device.factory_certificates") == 1
    assert events(line, "device.pop_verified") == 1
    assert _count(line, FactoryCertificate) == 1 and _count(line, RegistryUpload) == 1


def test_an_auto_fed_station_gets_parts_from_the_emulated_lines_manufacturer(
    line: dict[str, Any],
) -> None:
    """An auto-fed emulated station puts a new part of the batch's kind in the socket (not a
    blank chip), made by the emulated line's one manufacturer; the line takes it only once
    that manufacturer's root is the trusted one."""
    settings: Settings = line["settings"].model_copy(
        update={"stations": {"line1": StationSettings(sockets=1, feed="auto")}}
    )
    auto = {**line, "settings": settings}
    device_id = started_batch(auto, part="trustflex")
    out = socket_run(auto).run(device_id)  # the fixture's root is another manufacturer's
    assert out.kind == "failed" and "manufacturer" in out.detail.lower(), out
    assert events(auto, "incident.untrusted_part") == 1

    emulated = emulated_manufacturer_root(settings)
    assert emulated == settings.chips_dir / "manufacturer" / "root.pem"
    assert oct(emulated.parent.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in emulated.parent.iterdir())
    settings.manufacturer_root_file.write_bytes(emulated.read_bytes())
    device_id = started_batch(auto, part="trustflex")
    out = socket_run(auto).run(device_id)
    assert (out.kind, out.detail) == ("done", ""), out
    serial = line["ledger"].load(device_id).chip_serial
    chip = EmulatedChip.load(line["jig"].pool_path(serial))
    assert chip.config[16] == 0x6C and chip.config_locked and chip.data_locked
    with transaction(line["engine"]) as s:
        assert s.exec(select(func.count()).select_from(Certificate)).one() == 0
    assert line["no_signer"].calls == 0
