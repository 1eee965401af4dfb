"""The kit-bridge HAL's physical layer, implemented by Python callbacks over a bus object.

cryptoauthlib (unmodified) frames every chip transaction as a kit-bridge packet
``[version 2, command | interface << 4, identity, ...]`` and hands it to the ``send`` and
``recv`` function pointers of an ``atca_hal_kit_phy_t``. Here those are ctypes callbacks
that talk to a bus (the emulator's, or any object with the same five methods). Byte 2 of
every packet is the device identity, the 8-bit I2C address the library was configured
with; a bus that has a ``select`` method (:class:`AddressedBus`) is told it before each
transaction, so only the chip at that address answers, as on a real I2C bus.

Two rules from the library's side: every object the library points to must outlive the
device (they are kept on this instance), and an exception escaping a callback would read as
success (0) to the library, so every callback catches everything and returns a status.
"""

from __future__ import annotations

import ctypes
import logging
from ctypes import CFUNCTYPE, POINTER, Structure, c_int, c_uint8, c_uint16, c_void_p
from typing import Protocol

from provisioner.chips.library import (
    ATCA_COMM_FAIL,
    ATCA_RX_NO_RESPONSE,
    ATCA_SMALL_BUFFER,
    ATCA_SUCCESS,
    ATCA_WAKE_FAILED,
)

log = logging.getLogger(__name__)

KIT_SEND, KIT_RECV, KIT_WAKE, KIT_IDLE, KIT_SLEEP = 1, 2, 3, 4, 5
_HEADER = 3

SEND_FN = CFUNCTYPE(c_int, c_void_p, POINTER(c_uint8), c_uint16)
RECV_FN = CFUNCTYPE(c_int, c_void_p, POINTER(c_uint8), POINTER(c_uint16))


class Bus(Protocol):
    def wake(self) -> None: ...
    def idle(self) -> None: ...
    def sleep(self) -> None: ...
    def send(self, packet: bytes) -> None: ...
    def receive(self) -> bytes | None: ...


class AddressedBus(Bus, Protocol):
    """A bus with several possible devices: each transaction goes to the device at the
    address of the packet's identity byte (the library's ``atcakit.dev_identity``)."""

    def select(self, address: int) -> None: ...


class KitPhy(Structure):
    """``atca_hal_kit_phy_t`` (lib/hal/atca_hal.h)."""

    _fields_ = [
        ("send", SEND_FN),
        ("recv", RECV_FN),
        ("packet_alloc", c_void_p),
        ("packet_free", c_void_p),
        ("hal_data", c_void_p),
    ]


class KitBridge:
    """Owns the phy struct and its callbacks for one device; keep it alive with the device."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.absent = False  # set when the bus reported no chip
        self.error: BaseException | None = None  # what a callback caught, for the driver
        self._reply = b""
        self._no_chip: type[BaseException] | None = None  # the emulator's NoChip, once imported
        libc = ctypes.CDLL(None)
        self._send_cb = SEND_FN(self._send)
        self._recv_cb = RECV_FN(self._recv)
        self.phy = KitPhy(
            self._send_cb,
            self._recv_cb,
            ctypes.cast(libc.malloc, c_void_p),
            ctypes.cast(libc.free, c_void_p),
            None,
        )

    def take_error(self) -> BaseException | None:
        """The exception a callback swallowed during the last library call (then cleared),
        so the driver can chain it instead of reporting a bare "communication failure"."""
        err, self.error = self.error, None
        return err

    def _send(self, _ctx: int | None, tx: object, txlen: int) -> int:
        # Runs for every packet, the library's polls of a busy chip included (some 700 per
        # device at datasheet timing): no per-call import or attribute probing here.
        try:
            no_chip = self._no_chip
            if no_chip is None:
                from provisioner.chips.emulator.bus import NoChip

                no_chip = self._no_chip = NoChip
        except BaseException as exc:  # pragma: no cover - import of a loaded module
            self.error = exc
            return ATCA_COMM_FAIL
        try:
            packet = ctypes.string_at(tx, txlen)  # type: ignore[arg-type]
            command = packet[1] & 0x0F
            if len(packet) < _HEADER + 1 and command in (KIT_SEND, KIT_RECV):
                return ATCA_COMM_FAIL
            bus = self.bus
            select = getattr(bus, "select", None)
            if select is not None:  # byte 2: the I2C address the library talks to
                select(packet[2])
            body = b""
            if command == KIT_RECV:
                response = bus.receive()
                if response is None:
                    self._reply = b""
                    return ATCA_SUCCESS  # recv answers "no response" so the library polls
                body = response
            elif command == KIT_SEND:
                bus.send(packet[4:])  # [3] is the word address (0xFF for ECC)
            elif command == KIT_WAKE:
                bus.wake()
            elif command == KIT_IDLE:
                bus.idle()
            elif command == KIT_SLEEP:
                bus.sleep()
            else:
                return ATCA_COMM_FAIL
            self.absent = False
            self._reply = packet[:_HEADER] + b"\x00" + body  # status 0: the kit forwarded it
            return ATCA_SUCCESS
        except no_chip:
            self.absent = True
            self._reply = b""
            return ATCA_WAKE_FAILED
        except BaseException as exc:  # never let an exception reach the library (= success)
            log.exception("kit-bridge send callback failed")
            self.error = exc
            self._reply = b""
            return ATCA_COMM_FAIL

    def _recv(self, _ctx: int | None, rx: object, rxlen: object) -> int:
        try:
            if not self._reply:
                return ATCA_RX_NO_RESPONSE
            cap = rxlen.contents.value  # type: ignore[attr-defined]
            reply, self._reply = self._reply, b""
            if len(reply) > cap:  # never hand the library a silently truncated packet
                return ATCA_SMALL_BUFFER
            ctypes.memmove(rx, reply, len(reply))  # type: ignore[arg-type]
            rxlen.contents.value = len(reply)  # type: ignore[attr-defined]
            return ATCA_SUCCESS
        except BaseException as exc:
            log.exception("kit-bridge recv callback failed")
            self.error = exc
            return ATCA_COMM_FAIL
