"""The station's chip sequence (issue 19): which commands it sends, and that the checks the
shorter sequence relies on still catch what they are there for.

Counted on the emulator's bus while ``pipeline.provision_device`` drives the chip, with the
ledger and signer of bench/chip_timing.py (in memory; certificates from a software CA).
Counts, not times: the table time follows from them deterministically.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bench.chip_timing import (
    CountingBus,
    Issue,
    configure_and_lock,
    open_chip,
    provision,
    table_ms,
)
from provisioner.ca.issuer import build_device_certificate, random_serial_number
from provisioner.chips.crc import crc16
from provisioner.chips.emulator.jig import StationJig
from provisioner.errors import ChipError, ChipStateError
from provisioner.ports import SigningRequest
from provisioner.settings import Settings
from tests.chips.conftest import SoftwareCa, settings_with_ca

READ, WRITE, LOCK, GENKEY, SIGN, NONCE, RANDOM, INFO = (
    0x02,
    0x12,
    0x17,
    0x40,
    0x41,
    0x16,
    0x1B,
    0x30,
)
BLANK = Counter({READ: 30, WRITE: 15, LOCK: 6, GENKEY: 2, SIGN: 1, NONCE: 1, RANDOM: 1, INFO: 1})
CONFIG_LOCKED = Counter(
    {READ: 30, WRITE: 10, LOCK: 5, GENKEY: 2, SIGN: 1, NONCE: 1, RANDOM: 1, INFO: 1}
)


def _issuer(ca: SoftwareCa, settings: Settings) -> Issue:
    def issue(request: SigningRequest) -> bytes:
        cert = build_device_certificate(
            request,
            ca,  # type: ignore[arg-type]
            settings.profile,
            random_serial_number(),
            datetime.now(UTC),
        )
        return cert.public_bytes(serialization.Encoding.DER)

    return issue


def _sent(tmp_path: Path, case: str) -> Counter[int]:
    settings, ca = settings_with_ca(tmp_path)
    jig = StationJig(settings.chips_dir, "bench", 1)
    jig.insert_blank(0)
    if case == "config-locked":
        configure_and_lock(jig, 0, settings)
    chip, bus = open_chip(jig, 0, True, settings)
    with chip:
        provision(chip, _issuer(ca, settings))
    return bus.sent


@pytest.mark.parametrize(("case", "expected"), [("blank", BLANK), ("config-locked", CONFIG_LOCKED)])
def test_the_sequence_sends_these_commands_per_case(
    tmp_path: Path, case: str, expected: Counter[int]
) -> None:
    """Blank: serial block + Info; 3 config reads, 5 config writes (32-byte blocks only
    where the library's own writer uses them, blocks 1 and 3; words in blocks 0 and 2),
    config Lock with the CRC; GenKey, data Lock; Random + Nonce + Sign (PoP); 10 certificate
    block writes; both certificates rebuilt (13 reads + GenKey); the serial slot's
    unwritten 12 blocks read; 4 slot Locks with the CRC of what was written. Before issue
    19: 93 and 77 commands."""
    sent = _sent(tmp_path, case)
    assert sent == expected
    assert table_ms(sent) <= 1614  # >= 25 % below the 2,153 ms of a blank chip before


class _CorruptingBus(CountingBus):
    """A chip whose memory takes the first Write to zone ``target_zone`` (at Param2
    ``target_address``; None: anywhere) with its last data byte changed: a write that did
    not take, though it answers OK."""

    target_zone = 0
    target_address: int | None = None
    corrupted = 0

    def send(self, packet: bytes) -> None:
        if (
            not self.corrupted
            and packet[1] == WRITE
            and (packet[2] & 0x03) == self.target_zone
            and self.target_address in (None, int.from_bytes(packet[3:5], "little"))
        ):
            body = bytearray(packet[:-2])
            body[-1] ^= 0x5A
            packet = bytes(body) + crc16(bytes(body))
            self.corrupted += 1
        super().send(packet)


def test_a_serial_slot_that_does_not_hold_what_was_written_is_not_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last byte of the serial slot's first block is no part of the certificate (the
    rebuild reads past it), so only the Lock with the CRC of what was written sees it:
    the chip refuses, the device fails, the slot stays unlocked. (Before issue 19 the
    slot's CRC came from reading it, and the corrupted slot was locked.)"""
    settings, ca = settings_with_ca(tmp_path)
    serial_slot = settings.chip.profile().serial_slot
    monkeypatch.setattr(_CorruptingBus, "target_zone", 2)
    monkeypatch.setattr(_CorruptingBus, "target_address", serial_slot << 3)  # its block 0
    monkeypatch.setattr("bench.chip_timing.CountingBus", _CorruptingBus)
    jig = StationJig(settings.chips_dir, "bench", 1)
    jig.insert_blank(0)
    chip, bus = open_chip(jig, 0, True, settings)
    with chip, pytest.raises(ChipError, match=f"slot {serial_slot} does not hold"):
        provision(chip, _issuer(ca, settings))
    assert isinstance(bus, _CorruptingBus) and bus.corrupted == 1
    monkeypatch.undo()  # a sound chip from here on
    chip, _ = open_chip(jig, 0, True, settings)
    with chip:
        assert serial_slot not in chip.locked_slots()
        assert chip.profile.device_cert_slot not in chip.locked_slots()


def test_a_config_write_that_did_not_take_is_refused_by_the_config_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read-back of the config zone: the Lock carries the CRC of the profile's config
    and the chip refuses it if any byte differs, even one the profile's compatibility
    check ignores; the chip stays unlocked, so a retry can configure it. (Before issue 19
    the CRC came from reading the zone back, and such a config was locked.)"""
    settings, _ = settings_with_ca(tmp_path)
    monkeypatch.setattr(_CorruptingBus, "target_zone", 0)  # the first config write
    monkeypatch.setattr("bench.chip_timing.CountingBus", _CorruptingBus)
    jig = StationJig(settings.chips_dir, "bench", 1)
    jig.insert_blank(0)
    chip, bus = open_chip(jig, 0, True, settings)
    with chip, pytest.raises(ChipStateError, match="config did not take"):
        chip.identity()
        chip.ensure_configured()
    assert isinstance(bus, _CorruptingBus) and bus.corrupted == 1
    monkeypatch.undo()  # a sound chip from here on
    chip, _ = open_chip(jig, 0, True, settings)
    with chip:
        assert not chip.config_locked()
        chip.ensure_configured()  # the retry writes the word again and locks
        assert chip.config_locked()
        assert chip.read_config()[16:84] == chip.profile.config_template()[16:84]
