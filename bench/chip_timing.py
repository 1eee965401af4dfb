"""Chip time per device, and library + ctypes overhead per command.

1. Provisioning sequence per device (configure + lock, GenKey, lock data, public key, a
   proof-of-possession Sign, the device and signer certificates written compressed with
   the library's atcacert writer, read back byte for byte, certificate slots locked) with
   the emulator timed at clock divider M0: measured wall time versus the sum of the
   library's execution-time table for the commands actually sent. The certificate is
   signed in SoftHSM between the Sign and the write; that time is not chip time and is
   left out.
2. The same commands with a zero-delay emulator: what the library, ctypes and the Python
   emulator cost per command on this machine.

Run: .venv/bin/python bench/chip_timing.py [--devices N]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from provisioner.ca.ceremony import LoadedCa, init_ca, load_ca
from provisioner.ca.chain import chip_chain
from provisioner.ca.issuer import build_device_certificate, random_serial_number
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.bus import EmulatedBus
from provisioner.chips.emulator.jig import StationJig
from provisioner.chips.emulator.timing import execution_ms
from provisioner.chips.kitbridge import KitBridge
from provisioner.chips.library import cryptoauth, iface_cfg_class
from provisioner.ports import SigningRequest
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
    import ctypes

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


def provision(chip: CryptoAuthChip, issue: Issue) -> float:
    """One device; returns the seconds spent outside the chip (the HSM signature)."""
    ident = chip.identity()
    chip.ensure_configured()
    chip.generate_key()
    chip.lock_data_zone()
    point = b"\x04" + chip.public_key()
    challenge = b"bench challenge"
    signature = chip.sign_digest(hashlib.sha256(challenge).digest())
    t0 = time.perf_counter()
    der = issue(SigningRequest(0, 0, ident.serial_hex, point, challenge, signature))
    off_chip = time.perf_counter() - t0
    chip.write_certificate(der)
    assert chip.read_certificate() == der
    return off_chip


def per_device(
    jig: StationJig, zero_delay: bool, n: int, ca: LoadedCa, settings: Settings
) -> tuple[list[float], Counter[int]]:
    times, sent = [], Counter[int]()
    for _ in range(n):
        jig.insert_blank(0)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(var_dir=Path(d))
        init_ca(settings)  # a SoftHSM CA in the temporary directory
        ca = load_ca(settings)
        jig = StationJig(settings.chips_dir, "bench", 2)
        m0, sent = per_device(jig, zero_delay=False, n=args.devices, ca=ca, settings=settings)
        zero, _ = per_device(jig, zero_delay=True, n=args.devices, ca=ca, settings=settings)
        table = sum(execution_ms(op) * k for op, k in sent.items())
        measured = statistics.median(m0) * 1000
        print(
            f"commands per device: {sum(sent.values())} "
            + ", ".join(f"{NAMES.get(op, hex(op))} {k}" for op, k in sorted(sent.items()))
        )
        print(f"table time per device at M0:        {table:8.1f} ms")
        print(
            f"measured per device at M0 (median): {measured:8.1f} ms  "
            f"(ratio {measured / table:.2f}x the table)"
        )
        print(f"measured per device, zero delay:    {statistics.median(zero) * 1000:8.1f} ms")
        print("per command at zero delay (library + ctypes + Python emulator):")
        for name, ms in per_command(jig, args.repeat, settings).items():
            print(f"  {name:22s} {ms:7.3f} ms")
        ca.close()


if __name__ == "__main__":
    main()
