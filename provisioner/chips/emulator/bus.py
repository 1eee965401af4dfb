"""The wire between the kit-bridge HAL and one socket's chip.

Implements what the HAL's phy callbacks need: wake, idle, sleep, send a command packet,
receive the response (``None`` while the chip is still executing, so the library polls).
The chip is loaded from its file at wake (it may have been swapped in the jig meanwhile)
and saved after every command that changed persistent state.
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
        self._faults = FaultPlan()

    def _present(self) -> EmulatedChip:
        path = self.jig.chip_path(self.socket)
        if path is None or not path.exists():
            self._chip = None
            raise NoChip(f"socket {self.socket} of {self.jig.station_id} is empty")
        if self._chip is None or path != self._path:
            self._chip, self._path = EmulatedChip.load(path), path
            self._faults = FaultPlan.load(path)
        return self._chip

    def wake(self) -> None:
        self._present()
        self._response = None
        self._awake_since = time.monotonic()

    def idle(self) -> None:
        self._present()  # idle keeps TempKey and the digest buffer

    def sleep(self) -> None:
        self._present().sleep()

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
