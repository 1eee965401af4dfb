"""Emulated pre-provisioned parts (Trust&GO TNGTLS-like, TrustFLEX-like) read through the
library's own TNG definitions.

The references are independent of the emulator: ``cryptography`` verifies every
signature and computes key identifiers; the library's own ``tng_atcacert_root_public_key``
gives Microchip's root key (which our emulated root must not be); the chip's key is read
with GenKey (public key mode) and exercised with Sign through the library.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from ctypes import POINTER, c_uint8
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator import tray
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.chips.library import ZONE_DATA, ZONE_OTP
from provisioner.chips.tng import PART_ADDRESSES
from provisioner.errors import ChipAbsentError, ChipCommandError, ChipStateError
from provisioner.settings import Settings
from tests.chips.conftest import declared

KINDS = {"tngtls": ("trust-and-go", b"x6tjuZMy"), "tflxtls": ("trustflex", b"MKMwyhP1")}


@pytest.fixture(scope="module")
def manufacturer() -> EmulatedManufacturer:
    return EmulatedManufacturer.create()


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(Settings(var_dir=tmp_path))


def _open(connector: Connector, chip: EmulatedChip, address: int) -> CryptoAuthChip:
    """Put ``chip`` in socket 0 of line1 (saved and loaded afresh: a power-up) and open it
    at ``address``."""
    connector.jig("line1").insert_chip(0, chip)
    return connector.open("emulated:line1/0", address=address)


@pytest.fixture(params=sorted(KINDS))
def part(
    request: pytest.FixtureRequest, manufacturer: EmulatedManufacturer, connector: Connector
) -> Iterator[tuple[str, tray.Part, CryptoAuthChip]]:
    kind = request.param
    made = tray.pre_provisioned(manufacturer, kind)
    with _open(connector, made.chip, PART_ADDRESSES[KINDS[kind][0]]) as chip:
        yield kind, made, chip


def _verify(issuer_key: ec.EllipticCurvePublicKey, der: bytes) -> None:
    cert = x509.load_der_x509_certificate(der)
    issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 5280 method 1: SHA-1 of the subject public key (the uncompressed point)."""
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha1(point).digest()


def test_both_parts_read_back_the_certificates_the_manufacturer_made(
    part: tuple[str, tray.Part, CryptoAuthChip], manufacturer: EmulatedManufacturer
) -> None:
    kind, made, chip = part
    got = chip.read_factory_certificates(manufacturer.root_public_key())
    assert got.kind == kind and got.key_slot == 0
    assert got.device_der == made.device_der
    assert got.signer_der == manufacturer.signer_cert.public_bytes(serialization.Encoding.DER)


def test_chain_verifies_device_by_signer_and_signer_by_root(
    part: tuple[str, tray.Part, CryptoAuthChip], manufacturer: EmulatedManufacturer
) -> None:
    _, _, chip = part
    got = chip.read_factory_certificates(manufacturer.root_public_key())
    signer = x509.load_der_x509_certificate(got.signer_der)
    _verify(manufacturer.root_cert.public_key(), got.signer_der)  # type: ignore[arg-type]
    _verify(signer.public_key(), got.device_der)  # type: ignore[arg-type]
    # Key identifiers tie the chain (the names are the library templates'): the signer's
    # AKI is our root's key ID, the device's AKI the signer's.
    root_id = _key_id(manufacturer.root_key.public_key())
    aki = signer.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_id
    assert _key_id(signer.public_key()) in got.device_der  # type: ignore[arg-type]


def test_device_certificate_holds_the_chips_key_and_serial(
    part: tuple[str, tray.Part, CryptoAuthChip], manufacturer: EmulatedManufacturer
) -> None:
    _, _, chip = part
    got = chip.read_factory_certificates(manufacturer.root_public_key())
    cert = x509.load_der_x509_certificate(got.device_der)
    point = cert.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert point[1:] == chip.public_key(got.key_slot)  # GenKey public-key mode, slot 0
    serial = chip.identity().serial.hex().upper()
    assert cert.subject.rfc4514_string().startswith(f"CN=sn{serial},")


def test_proof_of_possession_with_the_device_key(
    part: tuple[str, tray.Part, CryptoAuthChip], manufacturer: EmulatedManufacturer
) -> None:
    _, _, chip = part
    got = chip.read_factory_certificates(manufacturer.root_public_key())
    key = x509.load_der_x509_certificate(got.device_der).public_key()
    challenge = os.urandom(32)
    digest = hashlib.sha256(challenge).digest()
    raw = chip.sign_digest(digest, slot=got.key_slot)
    signature = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))  # type: ignore[union-attr]
    with pytest.raises(InvalidSignature):  # another challenge: the signature is bound to it
        key.verify(  # type: ignore[union-attr]
            signature, hashlib.sha256(b"x").digest(), ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )


def test_parts_are_locked_as_shipped(part: tuple[str, tray.Part, CryptoAuthChip]) -> None:
    kind, _, chip = part
    assert chip.config_locked() and chip.data_locked()
    assert chip.locked_slots() == {10, 11, 12}
    assert chip.read_zone(ZONE_OTP, 0, 0, 8) == KINDS[kind][1]
    config = chip.read_config()
    assert config[16] == PART_ADDRESSES[KINDS[kind][0]]
    assert int.from_bytes(config[96:98], "little") == 0x0053  # slot 0: P-256 private key
    with pytest.raises(ChipCommandError):  # a locked certificate slot takes no write
        chip.write_zone(ZONE_DATA, 10, 0, bytes(32))
    with pytest.raises(ChipCommandError):  # slot 5 (clear-text data) cannot be written
        chip.write_zone(ZONE_DATA, 5, 0, bytes(32))
    with pytest.raises(ChipCommandError):  # the device key is permanent (no GenKey)
        chip.genkey(0)
    with pytest.raises(ChipCommandError):  # OTP is read-only once the data zone is locked
        chip.write_zone(ZONE_OTP, 0, 0, bytes(32))
    assert len(chip.genkey(2)) == 64  # a secondary key may be regenerated


def test_tngtls_device_certificate_carries_the_eui48_of_slot_5(
    manufacturer: EmulatedManufacturer, connector: Connector
) -> None:
    """TNGTLS: the MAC address is stored in slot 5 as ASCII hex and appears in the
    device certificate's SAN (Microchip, ATECC608A-TNGTLS "Certificate Storage")."""
    made = tray.pre_provisioned(manufacturer, "tngtls")
    with _open(connector, made.chip, 0x6A) as chip:
        eui = chip.read_zone(ZONE_DATA, 5, 0, 12)
        got = chip.read_factory_certificates(manufacturer.root_public_key())
    assert bytes.fromhex(eui.decode())[0] & 0x03 == 0x02  # locally administered, unicast
    assert b"eui48_" + eui in got.device_der


def test_part_answers_only_at_its_address(
    manufacturer: EmulatedManufacturer, connector: Connector
) -> None:
    made = tray.trust_and_go(manufacturer)
    with _open(connector, made, 0xC0) as chip, pytest.raises(ChipAbsentError):
        chip.identity()
    with connector.open("emulated:line1/0@0x6A") as chip:
        assert chip.identity().serial == bytes(made.serial)


def test_part_pulled_before_the_read_is_absent_not_refused(
    manufacturer: EmulatedManufacturer, connector: Connector
) -> None:
    with _open(connector, tray.trust_and_go(manufacturer), 0x6A) as chip:
        connector.jig("line1").remove(0)
        with pytest.raises(ChipAbsentError):
            chip.read_factory_certificates(manufacturer.root_public_key())


def test_emulated_root_is_not_microchips(manufacturer: EmulatedManufacturer) -> None:
    lib_root = (c_uint8 * 64)()
    fn = declared("tng_atcacert_root_public_key", [POINTER(c_uint8)])
    assert fn(lib_root) == 0
    assert bytes(lib_root) != manufacturer.root_public_key()
    root = x509.load_pem_x509_certificate(manufacturer.root_pem())
    assert root.subject == root.issuer
    assert "Microchip" not in root.subject.rfc4514_string()
    assert root.subject.rfc4514_string() == (
        "O=provisioner emulator,CN=Emulated Manufacturer Root CA (test)"
    )


def test_signer_read_with_microchips_root_names_microchips_key(
    manufacturer: EmulatedManufacturer, connector: Connector
) -> None:
    """The AKI comes from the root key the reader passes: read with Microchip's root key
    (as tng_atcacert_read_signer_cert would) the signer no longer verifies under it."""
    lib_root = (c_uint8 * 64)()
    declared("tng_atcacert_root_public_key", [POINTER(c_uint8)])(lib_root)
    with _open(connector, tray.trust_and_go(manufacturer), 0x6A) as chip:
        got = chip.read_factory_certificates(bytes(lib_root))
    assert got.signer_der != manufacturer.signer_cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(InvalidSignature):
        _verify(manufacturer.root_cert.public_key(), got.signer_der)  # type: ignore[arg-type]


@pytest.mark.parametrize("broken", ["device", "root"])
def test_broken_chain_part_does_not_verify(
    manufacturer: EmulatedManufacturer, connector: Connector, broken: str
) -> None:
    made = tray.broken_chain(manufacturer, broken=broken)
    with _open(connector, made, 0x6A) as chip:
        got = chip.read_factory_certificates(manufacturer.root_public_key())
    signer = x509.load_der_x509_certificate(got.signer_der)
    root_key = manufacturer.root_cert.public_key()
    if broken == "device":  # the signer is genuine; the device certificate is forged
        _verify(root_key, got.signer_der)  # type: ignore[arg-type]
        with pytest.raises(InvalidSignature):
            _verify(signer.public_key(), got.device_der)  # type: ignore[arg-type]
    else:  # another manufacturer's signer: not under our root
        with pytest.raises(InvalidSignature):
            _verify(root_key, got.signer_der)  # type: ignore[arg-type]


@pytest.mark.parametrize("otp_code", [b"", b"NOTATNG!", b"x6tjuZMy"])
def test_chip_without_factory_certificates_is_refused(
    manufacturer: EmulatedManufacturer, connector: Connector, otp_code: bytes
) -> None:
    """A locked part whose OTP names no TNG definition (blank or foreign code), or names
    TNGTLS but holds no compressed certificate: refused with ChipStateError, never a
    certificate read from empty slots."""
    from provisioner.chips.crc import crc16

    blank = EmulatedChip.blank()
    with tray.bench(blank) as driver:
        driver.write_config(tray.part_config("tngtls", blank.config))
        driver.lock_config(int.from_bytes(crc16(driver.read_config()), "little"))
        if otp_code:
            driver.write_zone(ZONE_OTP, 0, 0, otp_code + bytes(56))
        driver.genkey(0)
        driver.lock_data_zone()
    with _open(connector, blank, 0x6A) as chip, pytest.raises(ChipStateError) as err:
        chip.read_factory_certificates(manufacturer.root_public_key())
    assert "no factory (TNG) certificate" in str(err.value)
