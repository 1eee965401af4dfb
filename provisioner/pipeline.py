"""The path of one device, top to bottom.

Station side, :func:`provision_device`::

    read serial + revision -> configure (blank chip) + generate key in the key slot
    + lock the data zone
    -> read public key -> proof of possession (the chip signs a challenge the line gave
    out) -> HSM signs the certificate (the signer records it) -> the station checks it
    against the CA chain it pins (``check``) -> write it to the chip
    -> read back and compare -> queue the registry upload

Station side, :func:`provision_preprovisioned` (a batch in mode ``preprovisioned``: a part
its manufacturer already provisioned, e.g. Trust&GO)::

    read serial + revision -> read the device and signer certificates through the library's
    TNG definitions -> verify the chain against the manufacturer root the line trusts ->
    the key in the key slot must be the certificate's -> record (the line verifies the
    chain again) -> proof of possession over a line challenge -> the line accepts the
    certificate as it is and queues its upload (our CA issues nothing)

Registry side, :func:`upload_device`::

    create the device in the registry -> on ALREADY_EXISTS compare certificates -> done

Every step is recorded by the station's ledger (:class:`StationLedger`: the line server's
records, reached through the broker from a station PC) together with its audit event,
*after* it completed. A task that crashed is simply run again: steps already
recorded are skipped (after checking the chip still agrees with the record), so nothing is
generated, issued or written twice.

Between steps the caller's ``proceed(step)`` is asked whether the device may start working
towards ``step`` (its batch may have been paused or cancelled meanwhile); a no stops the
device right there with :class:`~provisioner.errors.DeviceStopped`, which is not a failure.
A step that has started always finishes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_certificate, load_pem_x509_certificate

from provisioner.ca.issuer import verify_proof_of_possession
from provisioner.ca.manufacturer_chain import parse_root, root_point, verify_chain
from provisioner.db.models import Device, Step, UploadState
from provisioner.errors import ChipError, ChipStateError, DeviceStopped, WrongChipError
from provisioner.ledger import DeviceLedger, registry_device_id
from provisioner.metrics import record
from provisioner.metrics.record import StepMeter
from provisioner.ports import (
    CertificateSigner,
    ChipIdentity,
    DeviceAlreadyExists,
    IssuedCertificate,
    RegistryBackend,
    SecureElement,
    SigningRequest,
)

if TYPE_CHECKING:
    from provisioner.chips.tng import FactoryCertificates


def always(_: Step) -> bool:
    return True


CertificateCheck = Callable[[IssuedCertificate, bytes, str], None]
"""Checks a certificate before it is written: (certificate, the chip's public point just
read, the chip's serial); raises (ForgedCertificateError) to keep it off the chip. The socket
task checks against the CA chain its station pins (:mod:`provisioner.ca.pinned`)."""


class StationLedger(Protocol):
    """Where a station records each step: :class:`~provisioner.ledger.DeviceLedger` on the
    line server, or the line server itself through the broker
    (:class:`~provisioner.link.remote.RemoteRecords`) from a station PC. Either way the
    line server checks what is recorded (the key against the proof of possession, the
    written certificate against the issued one, the read-back byte for byte) before it
    writes."""

    def load(self, device_id: int) -> Device: ...

    def identify(
        self, device_id: int, serial_hex: str, revision_hex: str, locator: str
    ) -> Device: ...

    def record_key(self, device_id: int, point: bytes) -> Device: ...

    def challenge(self, device_id: int) -> bytes: ...

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device: ...

    def certificate(self, device_id: int) -> IssuedCertificate: ...

    def record_written(self, device_id: int, fingerprint: str) -> Device: ...

    def record_verified(self, device_id: int, read_back: bytes) -> Device: ...


def provision_device(
    device_id: int,
    chip: SecureElement,
    signer: CertificateSigner,
    ledger: StationLedger,
    *,
    proceed: Callable[[Step], bool] = always,
    check: CertificateCheck | None = None,
) -> Device:
    """Run (or resume) the station part of one device's provisioning on ``chip``.

    ``check`` sees every certificate before it is written (a new one or a resumed device's);
    the socket task always passes its pinned-chain check, tests of other steps may not.
    Each step's attempt is counted and timed (:class:`~provisioner.metrics.record.StepMeter`)
    by the station this process serves."""
    meter = StepMeter()
    try:
        return _provision(device_id, chip, signer, ledger, proceed, meter, check)
    except BaseException as exc:
        meter.failed(exc)
        raise


def _next(step: Step) -> Step:
    return min((s for s in Step if s > step), default=Step.DONE)


class _Identifiable(Protocol):
    @property
    def locator(self) -> str: ...

    def identity(self) -> ChipIdentity: ...


class _IdentityLedger(Protocol):
    def identify(
        self, device_id: int, serial_hex: str, revision_hex: str, locator: str
    ) -> Device: ...


def _identify(
    device_id: int,
    dev: Device,
    chip: _Identifiable,
    ledger: _IdentityLedger,
    meter: StepMeter,
    boundary: Callable[[Step], None],
) -> tuple[Device, ChipIdentity]:
    """Step 1 of both flows: read serial and revision; record them for a new device (if
    its batch lets it start), and for a resumed one insist that it is still the same chip."""
    if dev.step == Step.PENDING:
        boundary(Step.IDENTIFIED)
    meter.start(_next(dev.step))
    ident = chip.identity()
    if dev.step == Step.PENDING:
        dev = ledger.identify(device_id, ident.serial_hex, ident.revision.hex(), chip.locator)
        meter.ok()
    elif dev.chip_serial != ident.serial_hex:
        raise WrongChipError(
            f"{chip.locator} holds chip {ident.serial_hex}, but device {device_id} is chip "
            f"{dev.chip_serial}: insert that chip to resume it"
        )
    return dev, ident


def _provision(
    device_id: int,
    chip: SecureElement,
    signer: CertificateSigner,
    ledger: StationLedger,
    proceed: Callable[[Step], bool],
    meter: StepMeter,
    check: CertificateCheck | None,
) -> Device:
    def boundary(step: Step) -> None:
        if not proceed(step):
            raise DeviceStopped(f"device {device_id} stopped before {step.name}")

    dev = ledger.load(device_id)
    if dev.step >= Step.CERT_VERIFIED:
        return dev

    # 1. Identify the chip; a resumed device must still be the same chip.
    dev, ident = _identify(device_id, dev, chip, ledger, meter, boundary)
    serial = ident.serial_hex

    # 2. Configure a blank chip, generate the device key inside it, lock the data zone
    # (signing and reading data slots both work on a locked data zone on every silicon rule).
    said: bytes | None = None  # the public key as the chip gave it in this run
    if dev.step < Step.KEY_GENERATED:
        boundary(Step.KEY_GENERATED)
        meter.start(Step.KEY_GENERATED)
        try:
            chip.ensure_configured()
        except ChipStateError as exc:
            raise ChipStateError(
                f"{exc} (this batch is in mode `issue`, for blank chips; pre-provisioned "
                "parts such as Trust&GO go in a batch created with --mode preprovisioned)"
            ) from exc
        if not chip.data_locked():
            point = b"\x04" + chip.generate_key()
            chip.lock_data_zone()
        elif chip.has_certificate():
            raise ChipStateError(
                f"chip {ident.serial_hex} in {chip.locator} is already locked with a "
                "certificate: provisioned elsewhere, remove it from the line"
            )
        else:  # our previous attempt locked it after GenKey but crashed before recording
            point = b"\x04" + chip.public_key()
        dev = ledger.record_key(device_id, point)
        said = point
        meter.ok()

    # 3. The chip's public key must be the one recorded: read back for a resumed device;
    # in a run that just had it from GenKey (or read it to adopt it) asking again proves
    # nothing more, and the certificate's read-back (step 6) rebuilds it from the chip.
    meter.start(_next(dev.step))
    point = said if said is not None else b"\x04" + chip.public_key()
    if dev.public_key != point.hex():
        raise ChipStateError(
            f"chip {serial} reports a different public key than recorded for device "
            f"{device_id}: the key slot was changed outside the pipeline"
        )

    # 4+5. Proof of possession over a challenge the line gives out, then the HSM signs (the
    # signer records CERT_ISSUED itself, atomically with the certificate, so asking again
    # returns the same certificate).
    if dev.step < Step.CERT_ISSUED:
        boundary(Step.POP_VERIFIED)
        challenge = ledger.challenge(device_id)
        raw_sig = chip.sign_digest(hashlib.sha256(challenge).digest())
        verify_proof_of_possession(point, challenge, raw_sig)
        if dev.step < Step.POP_VERIFIED:
            dev = ledger.record_pop(device_id, challenge, raw_sig)
            meter.ok()
        boundary(Step.CERT_ISSUED)
        meter.start(Step.CERT_ISSUED)
        cert = signer.sign(
            SigningRequest(
                device_id=device_id,
                batch_id=dev.batch_id,
                chip_serial_hex=serial,
                public_key=point,
                pop_challenge=challenge,
                pop_signature=raw_sig,
            )
        )
        meter.ok()
    else:
        cert = ledger.certificate(device_id)

    # 6. Check the certificate against the pinned CA chain, then write it to the chip.
    written_now = False
    if dev.step < Step.CERT_WRITTEN:
        boundary(Step.CERT_WRITTEN)
        meter.start(Step.CERT_WRITTEN)
        if check is not None:
            check(cert, point, serial)
        chip.write_certificate(cert.der)
        written_now = True
        dev = ledger.record_written(device_id, cert.fingerprint_sha256)
        meter.ok()

    # 7. Read back and compare byte for byte (here, and again by the line server), then the
    # upload is queued with the step (store and forward). write_certificate returns only
    # once the chip rebuilt exactly this certificate and its slots were locked with the CRC
    # of that content: in the run that wrote it, that rebuild is the read-back (a second
    # one would read the same locked bytes); a resumed device is read back here.
    boundary(Step.CERT_VERIFIED)
    meter.start(Step.CERT_VERIFIED)
    read_back = cert.der if written_now else chip.read_certificate()
    if read_back != cert.der:
        raise ChipError(f"chip {serial}: the certificate read back differs from the one written")
    dev = ledger.record_verified(device_id, read_back)
    meter.ok()
    return dev


class FactoryPart(Protocol):
    """A pre-provisioned part as the station drives it
    (:class:`~provisioner.chips.device.CryptoAuthChip`)."""

    @property
    def locator(self) -> str: ...

    def identity(self) -> ChipIdentity: ...

    def config_locked(self) -> bool: ...

    def data_locked(self) -> bool: ...

    def public_key(self, slot: int | None = None) -> bytes: ...

    def sign_digest(self, digest: bytes, slot: int | None = None) -> bytes: ...

    def read_factory_certificates(self, root_public_key: bytes) -> FactoryCertificates: ...


class FactoryLedger(Protocol):
    """What the pre-provisioned flow records (the line re-verifies each record)."""

    def load(self, device_id: int) -> Device: ...

    def identify(
        self, device_id: int, serial_hex: str, revision_hex: str, locator: str
    ) -> Device: ...

    def manufacturer_root(self) -> bytes:
        """The trusted manufacturer root certificate (PEM), as the line holds it."""
        ...

    def record_factory_certificates(
        self, device_id: int, kind: str, device_der: bytes, signer_der: bytes
    ) -> Device: ...

    def challenge(self, device_id: int) -> bytes: ...

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device: ...

    def accept_factory_certificate(self, device_id: int) -> Device: ...


def provision_preprovisioned(
    device_id: int,
    chip: FactoryPart,
    ledger: FactoryLedger,
    *,
    part: str,
    proceed: Callable[[Step], bool] = always,
) -> Device:
    """Run (or resume) the station part of a pre-provisioned part's device on ``chip``
    (``part``: its kind, for messages). No signer is involved: the certificate is the
    manufacturer's. Counted and timed like :func:`provision_device`."""
    meter = StepMeter()
    try:
        return _preprovisioned(device_id, chip, ledger, part, proceed, meter)
    except BaseException as exc:
        meter.failed(exc)
        raise


def _preprovisioned(
    device_id: int,
    chip: FactoryPart,
    ledger: FactoryLedger,
    part: str,
    proceed: Callable[[Step], bool],
    meter: StepMeter,
) -> Device:
    def boundary(step: Step) -> None:
        if not proceed(step):
            raise DeviceStopped(f"device {device_id} stopped before {step.name}")

    dev = ledger.load(device_id)
    if dev.step >= Step.CERT_VERIFIED:
        return dev

    # 1. Identify the part; a resumed device must still be the same part.
    dev, ident = _identify(device_id, dev, chip, ledger, meter, boundary)
    serial = ident.serial_hex

    # 2. A pre-provisioned part is locked; a blank chip does not belong in this batch.
    if not (chip.config_locked() and chip.data_locked()):
        raise ChipStateError(
            f"chip {serial} in {chip.locator} is not locked: a blank chip, not a pre-provisioned "
            f"{part} part (this batch is in mode `preprovisioned`; blank chips go in an "
            "`issue` batch)"
        )

    # 3. Its certificates, through the library, verified against the line's manufacturer
    # root (here to refuse early; the line verifies again before it records).
    root = parse_root(ledger.manufacturer_root(), "the line's manufacturer root")
    certs = chip.read_factory_certificates(root_point(root))
    verified = verify_chain(certs.device_der, certs.signer_der, root)
    point = b"\x04" + chip.public_key(certs.key_slot)
    if point != verified.public_point:
        raise ChipStateError(
            f"chip {serial}: the key in slot {certs.key_slot} is not its certificate's key"
        )
    if dev.step < Step.KEY_GENERATED:
        boundary(Step.KEY_GENERATED)
        meter.start(Step.KEY_GENERATED)
        dev = ledger.record_factory_certificates(
            device_id, certs.kind, certs.device_der, certs.signer_der
        )
        meter.ok()
    elif dev.public_key != point.hex():
        raise ChipStateError(
            f"chip {serial} reports a different key than recorded for device {device_id}"
        )

    # 4. Proof of possession of the certificate's key over a challenge the line gave out.
    if dev.step < Step.POP_VERIFIED:
        boundary(Step.POP_VERIFIED)
        meter.start(Step.POP_VERIFIED)
        challenge = ledger.challenge(device_id)
        raw_sig = chip.sign_digest(hashlib.sha256(challenge).digest(), certs.key_slot)
        verify_proof_of_possession(point, challenge, raw_sig)
        dev = ledger.record_pop(device_id, challenge, raw_sig)
        meter.ok()

    # 5. The line accepts the certificate as it is and queues its upload.
    boundary(Step.CERT_VERIFIED)
    meter.start(Step.CERT_VERIFIED)
    dev = ledger.accept_factory_certificate(device_id)
    meter.ok()
    return dev


def upload_device(device_id: int, backend: RegistryBackend, ledger: DeviceLedger) -> Device:
    """Put one device's certificate in the registry, exactly once.

    ALREADY_EXISTS is not an error by itself: a previous attempt may have succeeded before a
    crash. The registry's copy is compared; the same certificate is success, a different one
    is a conflict that is recorded and never overwritten. Counted as the step ``done``
    (without a station: the uploader serves them all) and as an upload by result.
    """
    dev = ledger.load(device_id)
    if dev.step >= Step.DONE:
        return dev
    meter = StepMeter(station="")
    meter.start(Step.DONE)
    try:
        state = _upload(device_id, dev, backend, ledger)
    except BaseException as exc:
        meter.failed(exc)
        raise
    if state is UploadState.DONE:
        meter.ok()
        record.upload("done")
    else:
        meter.failed("UploadConflict")
        record.upload("conflict")
    return ledger.load(device_id)


def _upload(
    device_id: int, dev: Device, backend: RegistryBackend, ledger: DeviceLedger
) -> UploadState:
    """Create the device in the registry (or find it there); how the upload ended."""
    cert = ledger.certificate(device_id)
    pem = load_der_x509_certificate(cert.der).public_bytes(serialization.Encoding.PEM).decode()
    reg_id = registry_device_id(dev.chip_serial or "")
    try:
        created = backend.create_device(reg_id, pem)
        num_id: str | None = created.num_id
    except DeviceAlreadyExists:
        existing = backend.get_device(reg_id)
        if existing is None or not _same_certificate(existing.certificate_pems, cert.der):
            ledger.finish_upload(
                device_id,
                state=UploadState.CONFLICT,
                num_id=None,
                error=f"registry already holds {reg_id} with a different certificate",
            )
            return UploadState.CONFLICT
        num_id = existing.num_id
    ledger.finish_upload(device_id, state=UploadState.DONE, num_id=num_id, error=None)
    return UploadState.DONE


def _same_certificate(pems: tuple[str, ...], der: bytes) -> bool:
    for pem in pems:
        try:
            if (
                load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
                == der
            ):
                return True
        except ValueError:
            continue
    return False
