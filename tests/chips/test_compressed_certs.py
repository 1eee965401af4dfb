"""Compressed certificates through the library's own atcacert writer and reader.

Every shipped profile must come back byte for byte from the chip; what the format cannot
hold is refused when the settings load; a chip holding someone else's certificate, or one
written under another definition, is refused with a reason, never misread.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.ca.chain import chip_chain
from provisioner.chips.certdef import NO_EXPIRY, compressibility_problem
from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.library import ZONE_DATA
from provisioner.errors import (
    CaNotInitialisedError,
    ChipAbsentError,
    ChipCommandError,
    ChipError,
    ChipStateError,
    ConfigError,
)
from provisioner.settings import Settings, load_settings
from tests.chips.conftest import SoftwareCa, issue_for, settings_with_ca

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = tomllib.loads((REPO / "deploy" / "provisioner.example.toml").read_text())

# Every profile we ship or document: the defaults, the example configuration, and the
# variants its comments describe.
SHIPPED: dict[str, dict[str, Any]] = {
    "defaults": {},
    "example-toml": {"profile": EXAMPLE["profile"], "chip": EXAMPLE["chip"]},
    "no-expiry": {"profile": {"validity_years": 0}},
    "with-ou": {"profile": {"organizational_unit": "Line 1", "validity_years": 10}},
    "with-crl": {
        "profile": {"crl_url": "http://127.0.0.1:8712/crl/{ca}.crl", "validity_years": 10}
    },
}


def _ready_chip(connector: Connector, socket: int = 0) -> CryptoAuthChip:
    """A blank chip configured, keyed and data-locked, as the pipeline leaves it."""
    connector.jig("line1").insert_blank(socket)
    chip = connector.open(f"emulated:line1/{socket}")
    chip.ensure_configured()
    chip.generate_key()
    chip.lock_data_zone()
    return chip


@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[Settings, SoftwareCa, CryptoAuthChip]]:
    settings, ca = settings_with_ca(tmp_path)
    chip = _ready_chip(Connector(settings))
    yield settings, ca, chip
    chip.close()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_round_trip_is_byte_exact_for_every_shipped_profile(tmp_path: Path, name: str) -> None:
    settings, ca = settings_with_ca(tmp_path, **SHIPPED[name])
    with _ready_chip(Connector(settings)) as chip:
        der = issue_for(chip, ca, settings)
        chip.write_certificate(der)
        assert chip.read_certificate() == der
        signer_der = ca.intermediate_cert.public_bytes(serialization.Encoding.DER)
        assert chip.read_signer_certificate() == signer_der
        layout = settings.chip.profile()
        assert all(chip.slot_locked(s) for s in layout.cert_slots)
        # Really compressed: the device certificate slot holds the 72-byte record whose
        # header names our template and chain, and the DER is several times that size.
        comp = chip.read_zone(ZONE_DATA, layout.device_cert_slot, 0, 72)
        assert comp[69] == (layout.device_template_id << 4) | layout.chain_id
        assert comp[70] >> 4 == 0  # serial number source: stored on the chip
        assert len(der) > 5 * 72
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(ca.intermediate_cert)
        serial_hex = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert serial_hex == chip.identity().serial_hex
        if settings.profile.validity_years == 0:
            assert cert.not_valid_after_utc == NO_EXPIRY


def test_locked_slots_refuse_rewrites_and_the_same_certificate_is_accepted_again(
    station: tuple[Settings, SoftwareCa, CryptoAuthChip],
) -> None:
    settings, ca, chip = station
    der = issue_for(chip, ca, settings)
    chip.write_certificate(der)
    with pytest.raises(ChipCommandError):
        chip.write_zone(ZONE_DATA, settings.chip.device_cert_slot, 0, b"\x00" * 32)
    chip.write_certificate(der)  # a resumed device: same certificate, nothing to do
    assert chip.read_certificate() == der
    other = issue_for(chip, ca, settings)  # same chip and key, another serial number
    assert other != der
    with pytest.raises(ChipStateError, match="already locked with another certificate"):
        chip.write_certificate(other)
    assert chip.read_certificate() == der


def test_chip_pulled_while_locking_resumes_to_the_same_certificate(
    station: tuple[Settings, SoftwareCa, CryptoAuthChip],
) -> None:
    settings, ca, chip = station
    der = issue_for(chip, ca, settings)
    jig = Connector(settings).jig("line1")
    path = jig.chip_path(0)
    assert path is not None
    FaultPlan(remove_during=0x17).save(path)  # pulled during the first slot Lock
    faulty = Connector(settings).open("emulated:line1/0")  # a new bus reads the plan
    with faulty, pytest.raises(ChipAbsentError):
        faulty.write_certificate(der)
    jig.insert(0, path)
    with Connector(settings).open("emulated:line1/0") as again:
        layout = settings.chip.profile()
        locked = [s for s in layout.cert_slots if again.slot_locked(s)]
        assert locked == [layout.cert_slots[0]], "the Lock ran inside the chip"
        again.write_certificate(der)
        assert all(again.slot_locked(s) for s in layout.cert_slots)
        assert again.read_certificate() == der


def test_a_chip_written_under_another_definition_is_refused(
    station: tuple[Settings, SoftwareCa, CryptoAuthChip], tmp_path: Path
) -> None:
    settings, ca, chip = station
    chip.write_certificate(issue_for(chip, ca, settings))
    other = Settings(var_dir=settings.var_dir, chip={"device_template_id": 9})
    reread = Connector(other).open("emulated:line1/0")
    with reread, pytest.raises(ChipStateError, match="another definition"):
        reread.read_certificate()


def test_a_profile_mismatch_between_station_and_signer_is_caught_before_locking(
    station: tuple[Settings, SoftwareCa, CryptoAuthChip],
) -> None:
    settings, ca, chip = station
    signer_side = Settings(
        var_dir=settings.var_dir, profile={"organization": "Another Organisation Name"}
    )
    der = issue_for(chip, ca, signer_side)  # the station still builds the old template
    with pytest.raises(ChipError):
        chip.write_certificate(der)
    assert not any(chip.slot_locked(s) for s in settings.chip.profile().cert_slots)


def test_has_certificate_sees_a_written_chip(
    station: tuple[Settings, SoftwareCa, CryptoAuthChip],
) -> None:
    settings, ca, chip = station
    assert not chip.has_certificate()
    chip.write_certificate(issue_for(chip, ca, settings))
    assert chip.has_certificate()


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"validity_years": 30}, "reaches 2050"),
        ({"validity_years": 40}, "less than or equal to 31"),
        ({"validity_years": -1}, "greater than or equal to 0"),
    ],
)
def test_profiles_the_format_cannot_hold_are_refused_at_load(
    tmp_path: Path, profile: dict[str, int], message: str
) -> None:
    config = tmp_path / "provisioner.toml"
    config.write_text(f"[profile]\nvalidity_years = {profile['validity_years']}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_chip_layouts_that_collide_are_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "provisioner.toml"
    config.write_text("[chip]\nserial_slot = 10\n")
    with pytest.raises(ConfigError, match="distinct"):
        load_settings(config)


def test_compressibility_rules() -> None:
    on_hour = datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert compressibility_problem(on_hour, on_hour.replace(year=2041)) is None
    assert compressibility_problem(on_hour, NO_EXPIRY) is None
    assert "on the hour" in str(compressibility_problem(on_hour.replace(minute=1), NO_EXPIRY))
    assert "whole years" in str(
        compressibility_problem(on_hour, on_hour.replace(year=2041, hour=11))
    )
    assert "2000-2127" in str(compressibility_problem(on_hour.replace(year=1999), NO_EXPIRY))
    assert "at most 127" in str(compressibility_problem(on_hour, on_hour.replace(year=2200)))


def test_an_intermediate_that_cannot_be_compressed_is_refused(tmp_path: Path) -> None:
    settings, ca = settings_with_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    odd = (
        x509.CertificateBuilder()
        .subject_name(ca.intermediate_cert.subject)
        .issuer_name(ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2026, 1, 1, 10, 17, tzinfo=UTC))  # not on the hour
        .not_valid_after(datetime(2036, 1, 1, 10, 17, tzinfo=UTC))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    (settings.ca_dir / "intermediate.pem").write_bytes(odd.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CaNotInitialisedError, match="on the hour"):
        chip_chain(settings)


def test_no_ca_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaNotInitialisedError, match="ca init"):
        chip_chain(Settings(var_dir=tmp_path))


def test_chips_in_threads_of_one_process_each_get_their_own_certificate(tmp_path: Path) -> None:
    """The library's atcacert reader/writer keep static buffers; without serialising them,
    concurrent reads from two chips corrupt each other (bench/chip_parallel.py found it)."""
    settings, ca = settings_with_ca(tmp_path)
    connector = Connector(settings)
    chips = [_ready_chip(connector, socket) for socket in range(4)]
    ders = [issue_for(chip, ca, settings) for chip in chips]
    errors: list[BaseException] = []

    def run(chip: CryptoAuthChip, der: bytes) -> None:
        try:
            chip.write_certificate(der)
            for _ in range(5):
                assert chip.read_certificate() == der
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(chips, ders, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for chip in chips:
        chip.close()
    assert not errors, errors
