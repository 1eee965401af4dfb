"""Chip time per device, and library + ctypes overhead per command.

The station's own chip sequence (``pipeline.provision_device`` driving ``CryptoAuthChip``,
with an in-memory ledger and a SoftHSM signer standing in for the line server) on a fresh
emulated ATECC608A per device, in two cases:

- blank: a factory-fresh chip (config written and locked, GenKey, data lock, proof of
  possession, certificates written, rebuilt and locked);
- config-locked: a chip whose config zone already holds the profile's config, locked (a
  tray configured beforehand); the same sequence, minus configuring.

Figures, per case:

- commands per device: the chip commands that reached the chip (counted on the bus), by
  opcode;
- table time per device at M0: the sum of cryptoauthlib's execution-time table at clock
  divider M0 for exactly those commands (the chip's own time, what the datasheet allows);
  with its ratio to the 2,153 ms a blank chip took before issue 19;
- measured per device at M0 (median): wall time with the emulator holding each command
  busy for its table time (the library polls meanwhile), and its ratio to the table;
- measured per device, zero delay: the same with an emulator that answers at once: what
  the library, ctypes, the Python emulator and the pipeline's host work cost;
- host CPU per device: this process's CPU time (``time.process_time``) per device for each
  timing: the library's polling sleeps, ctypes, the Python emulator (what silicon would
  take off the station PC) and the pipeline, with the SoftHSM signature (~0.2 ms) in it.

The certificate is signed in SoftHSM between the proof of possession and the write; that
time is measured and left out of both measured figures (it is not chip time).

Then, per command at zero delay (library + ctypes + Python emulator): the mean wall time of
a few single operations, repeated ``--repeat`` times.

Run: .venv/bin/python bench/chip_timing.py [--devices N] [--case blank|config-locked|both]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from provisioner import pipeline
from provisioner.ca.ceremony import LoadedCa, init_ca, load_ca
from provisioner.ca.chain import chip_chain
from provisioner.ca.issuer import build_device_certificate, random_serial_number
from provisioner.chips.crc import crc16
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.bus import EmulatedBus
from provisioner.chips.emulator.jig import StationJig
from provisioner.chips.emulator.timing import execution_ms
from provisioner.chips.kitbridge import KitBridge
from provisioner.chips.library import cryptoauth, iface_cfg_class
from provisioner.db.models import Device, Step
from provisioner.errors import ChipError
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings

NAMES = {
    0x02: "Read",
    0x12: "Write",
    0x16: "Nonce",
    0x17: "Lock",
    0x1B: "Random",
    0x20: "UpdateExtra",
    0x30: "Info",
    0x40: "GenKey",
    0x41: "Sign",
    0x45: "Verify",
}
BEFORE_ISSUE_19_MS = 2153.0  # table time of a blank chip before issue 19 (docs/performance.md)
CASES = ("blank", "config-locked")


class CountingBus(EmulatedBus):
    """Counts the opcodes that reach the chip (to sum the datasheet table for them)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: Counter[int] = Counter()

    def send(self, packet: bytes) -> None:
        self.sent[packet[1]] += 1
        super().send(packet)


def open_chip(
    jig: StationJig, socket: int, zero_delay: bool, settings: Settings
) -> tuple[CryptoAuthChip, CountingBus]:
    cryptoauth()
    bus = CountingBus(jig, socket, zero_delay=zero_delay)
    bridge = KitBridge(bus)
    cfg = iface_cfg_class()()
    cfg.iface_type, cfg.devtype = 5, 3
    cfg.cfg.atcakit.dev_interface, cfg.cfg.atcakit.dev_identity = 1, 0xC0
    cfg.wake_delay, cfg.rx_retries = 1500, 20
    cryptoauth().hal_kit_attach_phy(ctypes.byref(cfg), ctypes.byref(bridge.phy))
    chip = CryptoAuthChip(
        f"bench/{socket}",
        cfg,
        settings.chip.profile(),
        keepalive=bridge,
        chain=partial(chip_chain, settings),
    )
    return chip, bus


Issue = Callable[[SigningRequest], bytes]


def issuer_for(ca: LoadedCa, settings: Settings) -> Issue:
    """Device certificates signed in the token, as the signer makes them (DER)."""

    def issue(request: SigningRequest) -> bytes:
        cert = build_device_certificate(
            request, ca, settings.profile, random_serial_number(), datetime.now(UTC)
        )
        return cert.public_bytes(serialization.Encoding.DER)

    return issue


class _Ledger:
    """The line server's records for one device, in memory (a :class:`StationLedger`)."""

    def __init__(self, device_id: int) -> None:
        self.dev = Device(id=device_id, batch_id=1, position=0)
        self.issued: IssuedCertificate | None = None

    def load(self, device_id: int) -> Device:
        return self.dev

    def identify(self, device_id: int, serial_hex: str, revision_hex: str, locator: str) -> Device:
        self.dev.chip_serial, self.dev.revision = serial_hex, revision_hex
        self.dev.step = Step.IDENTIFIED
        return self.dev

    def record_key(self, device_id: int, point: bytes) -> Device:
        self.dev.public_key, self.dev.step = point.hex(), Step.KEY_GENERATED
        return self.dev

    def challenge(self, device_id: int) -> bytes:
        return os.urandom(32)

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device:
        self.dev.step = Step.POP_VERIFIED
        return self.dev

    def certificate(self, device_id: int) -> IssuedCertificate:
        assert self.issued is not None
        return self.issued

    def record_written(self, device_id: int, fingerprint: str) -> Device:
        self.dev.step = Step.CERT_WRITTEN
        return self.dev

    def record_verified(self, device_id: int, read_back: bytes) -> Device:
        self.dev.step = Step.CERT_VERIFIED
        return self.dev


class _Signer:
    """The signer's part (it records the certificate it issues), timed: its time is not
    chip time."""

    def __init__(self, issue: Issue, ledger: _Ledger) -> None:
        self.issue, self.ledger = issue, ledger
        self.seconds = 0.0

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        t0 = time.perf_counter()
        der = self.issue(request)
        self.seconds += time.perf_counter() - t0
        self.ledger.issued = IssuedCertificate(der, 0, hashlib.sha256(der).hexdigest())
        return self.ledger.issued


def provision(chip: CryptoAuthChip, issue: Issue) -> float:
    """One device through the station's pipeline; returns the seconds spent outside the
    chip (the HSM signature)."""
    ledger = _Ledger(1)
    signer = _Signer(issue, ledger)
    dev = pipeline.provision_device(1, chip, signer, ledger)
    if dev.step != Step.CERT_VERIFIED:
        raise ChipError(f"bench device ended at {dev.step.name}")
    return signer.seconds


def configure_and_lock(jig: StationJig, socket: int, settings: Settings) -> None:
    """Give the chip in ``socket`` the profile's config and lock it (a tray configured
    beforehand), through the driver's plain write/read/lock calls: not counted."""
    chip, _ = open_chip(jig, socket, zero_delay=True, settings=settings)
    with chip:
        chip.write_config(chip.profile.config_template())
        chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))


def per_device(
    jig: StationJig,
    zero_delay: bool,
    n: int,
    ca: LoadedCa,
    settings: Settings,
    case: str = "blank",
) -> tuple[list[float], Counter[int]]:
    times, sent = [], Counter[int]()
    for _ in range(n):
        jig.insert_blank(0)
        if case == "config-locked":
            configure_and_lock(jig, 0, settings)
        chip, bus = open_chip(jig, 0, zero_delay, settings)
        t0 = time.perf_counter()
        off_chip = provision(chip, issuer_for(ca, settings))
        times.append(time.perf_counter() - t0 - off_chip)
        chip.close()
        sent = bus.sent
    return times, sent


def per_command(jig: StationJig, n: int, settings: Settings) -> dict[str, float]:
    jig.insert_blank(1)
    chip, _ = open_chip(jig, 1, zero_delay=True, settings=settings)
    chip.ensure_configured()
    chip.generate_key()
    chip.lock_data_zone()
    digest = hashlib.sha256(b"m").digest()
    ops: dict[str, Callable[[], object]] = {
        "Info": chip.identity,  # Read serial (1 Read) + Info
        "Random": chip.random,
        "GenKey (public)": chip.public_key,
        "Sign (Nonce + Sign)": lambda: chip.sign_digest(digest),
        "Read 32 bytes": lambda: chip.read_zone(2, 8, 0, 32),
    }
    out = {}
    for name, fn in ops.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n * 1000
    chip.close()
    return out


def table_ms(sent: Counter[int]) -> float:
    """The library's execution-time table at M0, summed over the commands sent."""
    return sum(execution_ms(op) * k for op, k in sent.items())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--devices", type=int, default=5, help="chips per case and timing (5)")
    ap.add_argument("--repeat", type=int, default=200, help="repeats per single command (200)")
    ap.add_argument(
        "--case",
        choices=(*CASES, "both"),
        default="both",
        help="blank chips, chips with the profile's config already locked, or both (both)",
    )
    args = ap.parse_args()
    cases = CASES if args.case == "both" else (args.case,)
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(var_dir=Path(d))
        init_ca(settings)  # a SoftHSM CA in the temporary directory
        ca = load_ca(settings)
        jig = StationJig(settings.chips_dir, "bench", 2)
        tables: dict[str, float] = {}
        for case in cases:
            c0 = time.process_time()
            m0, sent = per_device(jig, False, args.devices, ca, settings, case)
            c1 = time.process_time()
            zero, _ = per_device(jig, True, args.devices, ca, settings, case)
            c2 = time.process_time()
            cpu_m0, cpu_zero = (c1 - c0) / args.devices, (c2 - c1) / args.devices
            table = tables[case] = table_ms(sent)
            measured = statistics.median(m0) * 1000
            print(f"[{case}]")
            print(
                f"commands per device: {sum(sent.values())} "
                + ", ".join(f"{NAMES.get(op, hex(op))} {k}" for op, k in sorted(sent.items()))
            )
            print(
                f"table time per device at M0:        {table:8.1f} ms  "
                f"({table / BEFORE_ISSUE_19_MS:.2f}x the {BEFORE_ISSUE_19_MS:.0f} ms of a "
                f"blank chip before issue 19: {1 - table / BEFORE_ISSUE_19_MS:.1%} below it)"
            )
            print(
                f"measured per device at M0 (median): {measured:8.1f} ms  "
                f"(ratio {measured / table:.2f}x the table)"
            )
            print(f"measured per device, zero delay:    {statistics.median(zero) * 1000:8.1f} ms")
            print(
                f"host CPU per device (this process):  {cpu_m0 * 1000:8.1f} ms at M0, "
                f"{cpu_zero * 1000:.1f} ms at zero delay"
            )
        if len(tables) == 2:
            print(
                f"config-locked / blank table time: {tables['config-locked'] / tables['blank']:.2f}"
            )
        print("per command at zero delay (library + ctypes + Python emulator):")
        for name, ms in per_command(jig, args.repeat, settings).items():
            print(f"  {name:22s} {ms:7.3f} ms")
        ca.close()


if __name__ == "__main__":
    main()
