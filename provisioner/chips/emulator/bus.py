"""The wire between the kit-bridge HAL and one socket's chip.

Implements what the HAL's phy callbacks need: wake, idle, sleep, send a command packet,
receive the response (``None`` while the chip is still executing, so the library polls).
The chip is loaded from its file at wake (it may have been swapped in the jig meanwhile)
and saved after every command that changed persistent state.

Watchdog: it starts when the chip wakes from idle or sleep and only idle/sleep stop it; a
wake token sent to a chip that is already awake does not restart it. So a host that wakes
the chip and leaves it awake past WATCHDOG_S finds the volatile state (TempKey, digest
buffer, alternate key buffer, SHA context) gone at its next wake or command. cryptoauthlib
idles after every command, so only an explicit ``calib_wakeup`` left standing can hit it.
"""

from __future__ import annotations

import time
from pathlib import Path

from provisioner.chips.emulator.chip import ECC_FAULT, WATCHDOG_S, EmulatedChip, status_packet
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.jig import StationJig
from provisioner.chips.emulator.timing import execution_ms


class NoChip(Exception):
    """The socket is empty (or the chip was removed)."""


class EmulatedBus:
    def __init__(self, jig: StationJig, socket: int, *, zero_delay: bool = True) -> None:
        self.jig = jig
        self.socket = socket
        self.zero_delay = zero_delay
        self._chip: EmulatedChip | None = None
        self._path: Path | None = None
        self._response: bytes | None = None
        self._ready_at = 0.0
        self._awake_since = 0.0
        self._awake = False  # woken and not yet idled or put to sleep: the watchdog runs
        self._faults = FaultPlan()
        self._faults_stamp: int | None = None

    def _present(self) -> EmulatedChip:
        path = self.jig.chip_path(self.socket)
        if path is None or not path.exists():
            self._chip = None
            raise NoChip(f"socket {self.socket} of {self.jig.station_id} is empty")
        if self._chip is None or path != self._path:
            self._chip, self._path = EmulatedChip.load(path), path
            self._awake = False  # another chip (or the same, powered up again): asleep
            self._faults, self._faults_stamp = FaultPlan.load(path), FaultPlan.stamp(path)
        elif (stamp := FaultPlan.stamp(path)) != self._faults_stamp:
            # A plan laid (or lifted) while the chip sits in the socket applies from the
            # next command on, as a fault that develops mid-run would.
            self._faults, self._faults_stamp = FaultPlan.load(path), stamp
        return self._chip

    def wake(self) -> None:
        chip = self._present()
        self._response = None
        now = time.monotonic()
        if self._awake and now - self._awake_since > WATCHDOG_S:
            chip.sleep()  # it fell asleep by itself meanwhile: this wake starts afresh
            self._awake = False
        if not self._awake:  # an awake chip ignores the wake token: the watchdog runs on
            self._awake, self._awake_since = True, now

    def idle(self) -> None:
        self._present()  # idle keeps TempKey and the digest buffer
        self._awake = False

    def sleep(self) -> None:
        self._present().sleep()
        self._awake = False

    def send(self, packet: bytes) -> None:
        chip = self._present()
        if time.monotonic() - self._awake_since > WATCHDOG_S:
            chip.sleep()  # the watchdog expired since wake: volatile state is gone
        opcode = packet[1] if len(packet) > 1 else 0
        if self._faults.ecc_fault_on == opcode:
            response, changed = status_packet(ECC_FAULT), False
        else:
            response, changed = chip.execute(packet)
        if changed and self._path is not None:
            chip.save(self._path)
        if self._faults.remove_during == opcode and self._path is not None:
            self._faults.fired_removal().save(self._path)
            self.jig.remove(self.socket)  # pulled mid-command: no response will come
            self._chip = None
            return
        if self._faults.crc_error_rate and self._path is not None:
            self._faults, bit = self._faults.corrupt_bit(len(response))
            self._faults.save(self._path)
            if bit is not None:
                flipped = bytearray(response)
                flipped[bit // 8] ^= 1 << (bit % 8)
                response = bytes(flipped)
        self._response = response
        delay = 0.0 if self.zero_delay else execution_ms(opcode, chip.config[19])
        self._ready_at = time.monotonic() + delay / 1000.0

    def receive(self) -> bytes | None:
        self._present()
        if time.monotonic() < self._ready_at:
            return None  # still executing: the chip NACKs, the library polls
        out, self._response = self._response, None
        return out
