"""The I2C bus of one jig socket: the wire between the kit-bridge HAL and the chip(s) on it.

Implements what the HAL's phy callbacks need: select the device address, wake, idle,
sleep, send a command packet, receive the response (``None`` while the chip is still
executing, so the library polls). A chip is loaded from its file when it first appears on
the bus (it may have been swapped in the jig meanwhile: a power-up) and saved after every
command that changed persistent state, before its response can be read.

What each transaction checks, and why it stays cheap: the library polls a busy chip every
2 ms (some 700 transactions per device at datasheet timing), and reading the jig's files
on each was most of the emulator's CPU. Now the bus looks at the jig with one ``stat`` of
the socket file per wake, command and response read (:class:`.SocketWatch`: the file is
read again only when it changed), so a chip pulled or swapped by another process is
noticed at the next of these, as before. A poll that finds the chip still executing
answers "no response" without looking: on the wire a busy chip and an absent one both
NACK, and the read that would deliver the response looks first, so a pulled chip still
never answers. The chip files' presence in the pool and their fault plans matter only to
a command, so they are looked at once per command (its send).

Addresses: every transaction goes to the address the library put in
the kit packet (:meth:`EmulatedBus.select`); only a chip that has taken that address
answers, anything else reads as silicon's missing ACK (:class:`NoAcknowledge`, the
library's wake failure). A chip takes its address from its config zone at power-up and
when it wakes from sleep (the sleep command or watchdog expiry), never on a wake from
idle: a new address written and locked in mid-session takes effect at the next sleep or
power cycle. A socket may hold a board with several chips (:meth:`.StationJig.insert_board`):
the wake pulse (SDA held low) reaches all of them, every other transaction only the chip
addressed. A bus never told an address (tests driving it directly) talks to the socket's
first chip.

Watchdog: it starts when the chip wakes from idle or sleep and only idle/sleep stop it; a
wake token sent to a chip that is already awake does not restart it. So a host that wakes
the chip and leaves it awake past WATCHDOG_S finds the volatile state (TempKey, digest
buffer, alternate key buffer, SHA context) gone at its next wake or command. cryptoauthlib
idles after every command, so only an explicit ``calib_wakeup`` left standing can hit it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.chips.emulator.chip import ECC_FAULT, WATCHDOG_S, EmulatedChip, status_packet
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.jig import SocketWatch, StationJig
from provisioner.chips.emulator.timing import execution_ms

I2C_ENABLE, I2C_ADDRESS, CHIP_MODE, USER_EXTRA_ADD = 14, 16, 19, 85


def answering_address(config: bytes | bytearray) -> int | None:
    """The 8-bit I2C address a chip with this config zone answers at (None: none).

    - I2C_Enable (byte 14) bit 0 clear: the part is in single-wire mode and answers on no
      I2C address at all.
    - ChipMode (byte 19) bit 0 set and UserExtraAdd (byte 85) non-zero: byte 85, the
      address UpdateExtra can write once after the config lock.
    - otherwise I2C_Address (byte 16). Only bits 7..1 are compared with the host's.
    """
    if not config[I2C_ENABLE] & 0x01:
        return None
    if config[CHIP_MODE] & 0x01 and config[USER_EXTRA_ADD]:
        return config[USER_EXTRA_ADD] & 0xFE
    return config[I2C_ADDRESS] & 0xFE


class NoChip(Exception):
    """The socket is empty (or the chip was removed)."""


class NoAcknowledge(NoChip):
    """Chips are on the bus, but none answers at the address the host used."""


class BusCollision(Exception):
    """Several chips answer at one address: on silicon both drive SDA (wired-AND) and the
    host reads a mix of their replies. The kit bridge reports a communication failure."""


def _plan_stamp(plan_file: str) -> tuple[int, int, int] | None:
    """What identifies the fault plan file now (None: no plan): its inode, modification
    time and size. :meth:`.FaultPlan.save` renames a new file into place, so a new plan is
    a new inode even when it lands in the same clock tick as the one before."""
    try:
        st = os.stat(plan_file)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class _Device:
    """One chip on the bus and the state of its I/O block (what survives between
    transactions: awake or not, its latched address, the response waiting to be read)."""

    path: Path
    chip: EmulatedChip
    faults: FaultPlan
    faults_stamp: tuple[int, int, int] | None
    address: int | None  # the address it answers at, latched at power-up / wake from sleep
    asleep: bool = True  # powered up or put to sleep: the next wake resets the I/O block
    awake: bool = False  # woken and not yet idled or put to sleep: the watchdog runs
    awake_since: float = 0.0
    response: bytes | None = None
    ready_at: float = 0.0
    plan_file: str = field(default="", repr=False)

    @classmethod
    def power_up(cls, path: Path) -> _Device:
        chip = EmulatedChip.load(path)
        plan_file = os.fspath(FaultPlan.path_for(path))
        stamp = _plan_stamp(plan_file)
        return cls(
            path,
            chip,
            FaultPlan.load(path),
            stamp,
            answering_address(chip.config),
            plan_file=plan_file,
        )

    def refresh_faults(self) -> None:
        """A plan laid (or lifted) while the chip sits in the socket applies from the next
        command on, as a fault that develops mid-run would."""
        stamp = _plan_stamp(self.plan_file)
        if stamp != self.faults_stamp:
            self.faults, self.faults_stamp = FaultPlan.load(self.path), stamp

    def fall_asleep(self) -> None:
        """Sleep (command or watchdog): volatile state gone; the next wake re-reads the
        address from the config zone."""
        self.chip.sleep()
        self.awake, self.asleep = False, True

    def wake_pulse(self, now: float) -> None:
        if self.awake and now - self.awake_since > WATCHDOG_S:
            self.fall_asleep()  # it fell asleep by itself meanwhile: this wake starts afresh
        if self.asleep:
            self.address = answering_address(self.chip.config)
            self.asleep = False
        if not self.awake:  # an awake chip ignores the wake token: the watchdog runs on
            self.awake, self.awake_since = True, now


class EmulatedBus:
    def __init__(self, jig: StationJig, socket: int, *, zero_delay: bool = True) -> None:
        self.jig = jig
        self.socket = socket
        self.zero_delay = zero_delay
        self.address: int | None = None  # the address of the current transaction
        self._watch = SocketWatch(jig, socket)
        self._devices: dict[Path, _Device] = {}
        self._listed: list[Path] | None = None  # the socket content _devices was built from
        self._on_list: list[_Device] = []  # _devices' values, in the socket's order
        self._busy: _Device | None = None  # the chip executing the last command sent ...
        self._busy_address: int | None = None  # ... at this address

    def select(self, address: int) -> None:
        """The next transactions go to the chip at this 8-bit address."""
        self.address = address

    def _on_bus(self, command: bool = False) -> list[_Device]:
        """The chips in the socket now: new ones power up, removed ones are forgotten.

        Every transaction but a poll of a busy chip (:meth:`receive`) looks at the socket
        (one ``stat`` while it is unchanged), so a chip pulled or swapped by another process
        is noticed at the next wake, command or read of a response. ``command`` (a send)
        also checks that each chip's file is still in the pool and whether its fault plan
        changed: a plan acts only on a command, so a wake or a poll need not look at it."""
        paths = self._watch.paths()
        if paths is self._listed and not command:
            return self._on_list
        present = [p for p in paths if os.path.exists(p)]
        if not present:
            self._devices.clear()
            self._listed, self._on_list = None, []
            raise NoChip(f"socket {self.socket} of {self.jig.station_id} is empty")
        devices = {}
        for path in present:
            device = self._devices.get(path)
            if device is None:
                device = _Device.power_up(path)  # another chip (or the same, put back)
            elif command:
                device.refresh_faults()
            devices[path] = device
        self._devices = devices
        self._on_list = list(devices.values())
        # a chip file missing from the pool keeps the slow path: it is looked for again
        self._listed = paths if len(present) == len(paths) else None
        return self._on_list

    def _addressed(self, devices: list[_Device] | None = None) -> _Device:
        """The chip the current transaction reaches (silicon compares bits 7..1 only)."""
        if devices is None:
            devices = self._on_bus()
        if self.address is None:
            return devices[0]
        wanted = self.address & 0xFE
        matches = [d for d in devices if d.address is not None and d.address & 0xFE == wanted]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BusCollision(
                f"{len(matches)} chips answer at 0x{self.address:02X} on socket {self.socket} "
                f"of {self.jig.station_id}: their replies collide on the wire"
            )
        raise NoAcknowledge(
            f"no chip answers at 0x{self.address:02X} on socket {self.socket} of "
            f"{self.jig.station_id}"
        )

    def wake(self) -> None:
        now = time.monotonic()
        devices = self._on_bus()
        for device in devices:  # SDA held low wakes every chip on the bus
            device.wake_pulse(now)
        self._addressed(devices).response = None  # the wake reply is read at the address

    def idle(self) -> None:
        self._addressed().awake = False  # idle keeps TempKey, the digest buffer, the address

    def sleep(self) -> None:
        self._addressed().fall_asleep()

    def send(self, packet: bytes) -> None:
        self._busy = None
        device = self._addressed(self._on_bus(command=True))
        chip = device.chip
        if time.monotonic() - device.awake_since > WATCHDOG_S:
            device.fall_asleep()  # the watchdog expired since wake: volatile state is gone
            device.asleep = False  # this transaction found it; it answers as before
        opcode = packet[1] if len(packet) > 1 else 0
        if device.faults.ecc_fault_on == opcode:
            response, changed = status_packet(ECC_FAULT), False
        else:
            response, changed = chip.execute(packet)
        if changed:
            chip.save(device.path)
        if device.faults.remove_during == opcode:
            device.faults.fired_removal().save(device.path)
            self.jig.remove_chip(self.socket, device.path)  # pulled mid-command: no response
            self._devices.pop(device.path, None)
            self._listed = None
            return
        if device.faults.crc_error_rate:
            device.faults, bit = device.faults.corrupt_bit(len(response))
            device.faults.save(device.path)
            if bit is not None:
                flipped = bytearray(response)
                flipped[bit // 8] ^= 1 << (bit % 8)
                response = bytes(flipped)
        device.response = response
        delay = 0.0 if self.zero_delay else execution_ms(opcode, chip.config[19])
        device.ready_at = time.monotonic() + delay / 1000.0
        if delay:
            self._busy, self._busy_address = device, self.address

    def receive(self) -> bytes | None:
        busy = self._busy
        if busy is not None and self.address == self._busy_address:
            if time.monotonic() < busy.ready_at:
                # Still executing: the chip NACKs and the library polls again in 2 ms. An
                # absent chip NACKs too, so a poll need not look at the jig; the read that
                # could return the response does (below), and a chip pulled or swapped
                # meanwhile answers nothing, as before.
                return None
            self._busy = None
        device = self._addressed()
        if time.monotonic() < device.ready_at:
            return None  # still executing: the chip NACKs, the library polls
        out, device.response = device.response, None
        return out
