"""Opening a chip from a locator string; the only place that knows the transports.

- ``emulated:<station>/<socket>`` — the ATECC608A/B emulator in that socket of the station's
  jig, behind the library's kit-bridge HAL (tested here). ``emulated:<station>/<socket>@0x6A``
  (or ``Connector.open(locator, address=0x6A)``) addresses the chip at that 8-bit I2C
  address on the socket's bus: the library puts it in every kit-bridge packet (byte 2,
  ``atcakit.dev_identity``) and the emulated bus answers only at the address the chip has
  taken (see :mod:`provisioner.chips.emulator.bus`). Default 0xC0, a blank part's.
- ``i2c:<bus device>@<address>`` — silicon on a Linux I2C bus through the library's I2C
  HAL, e.g. ``i2c:/dev/i2c-1@0x6A``. The address is Microchip's 8-bit form, as in config
  byte 16 and in the library's ``atcai2c.address`` (0xC0 for a blank 608A, 0x6A for
  Trust&GO = 7-bit 0x35); the Linux HAL shifts it right itself. Not testable without
  the chip.
- ``hid:`` — a Microchip kit (CryptoAuth Trust Platform) over USB HID (likewise untested).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioner.chips.certdef import ChipCertChain
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.bus import EmulatedBus
from provisioner.chips.emulator.jig import StationJig
from provisioner.chips.kitbridge import KitBridge
from provisioner.chips.library import cryptoauth, iface_cfg_class
from provisioner.chips.profile import ChipProfile
from provisioner.errors import InvalidInputError, NotFoundError
from provisioner.settings import Settings

IFACE_I2C, IFACE_HID, IFACE_KIT = 0, 4, 5
ATECC608 = 3
KIT_I2C = 1

_EMULATED = re.compile(r"^emulated:([A-Za-z0-9_-]+)/(\d+)(?:@(0x[0-9A-Fa-f]{1,2}|\d+))?$")
DEFAULT_ADDRESS = 0xC0  # a blank ATECC608A/B's config byte 16
_I2C = re.compile(r"^i2c:(/dev/i2c-(\d+))@(0x[0-9A-Fa-f]{1,2}|\d+)$")


@dataclass(frozen=True)
class Connector:
    """Implements :class:`provisioner.ports.ChipConnector` for the configured stations."""

    settings: Settings
    # Whether emulated chips answer at once (True) or take cryptoauthlib's execution-time
    # table per command (False). None (the default): as the station's ``chip_timing``
    # setting says, so the station worker's sockets run at the configured timing.
    zero_delay: bool | None = None
    # Where the compressed-certificate definitions come from (a station PC: the line);
    # None: this PC's own CA files.
    chain_source: Callable[[], ChipCertChain] | None = None

    @property
    def profile(self) -> ChipProfile:
        return self.settings.chip.profile()

    def certificate_chain(self) -> ChipCertChain:
        """The compressed-certificate definitions, from the CA's public files (loaded when
        a chip first needs them, so probing works before any CA exists)."""
        if self.chain_source is not None:
            return self.chain_source()
        from provisioner.ca.chain import chip_chain

        return chip_chain(self.settings)

    def jig(self, station_id: str) -> StationJig:
        """The emulated jig of a configured station (an unknown station is an error, not a
        one-socket jig: a typo must not provision chips nobody watches)."""
        return StationJig(
            self.settings.chips_dir, station_id, self.settings.station(station_id).sockets
        )

    def zero_delay_of(self, station_id: str) -> bool:
        """Whether the emulated chips of ``station_id`` answer at once: the connector's own
        ``zero_delay`` if given, else the station's ``chip_timing`` ("zero")."""
        if self.zero_delay is not None:
            return self.zero_delay
        return self.settings.station(station_id).chip_timing == "zero"

    def open(self, locator: str, *, address: int | None = None) -> CryptoAuthChip:
        """The chip at ``locator``. ``address`` (8-bit I2C form, e.g. 0x6A for Trust&GO) is
        the one the library addresses; an ``@0x..`` suffix of an emulated locator says the
        same (both given: they must agree). Emulated sockets default to 0xC0."""
        cryptoauth()  # load the library and declare prototypes before building configs
        if m := _EMULATED.match(locator):
            station_id, socket = m.group(1), int(m.group(2))
            address = _emulated_address(locator, m.group(3), address)
            jig = self.jig(station_id)
            if socket >= jig.sockets:
                raise NotFoundError(f"{locator}: station {station_id} has {jig.sockets} sockets")
            bus = EmulatedBus(jig, socket, zero_delay=self.zero_delay_of(station_id))
            bridge = KitBridge(bus)
            cfg = iface_cfg_class()()
            cfg.iface_type = IFACE_KIT
            cfg.devtype = ATECC608
            cfg.cfg.atcakit.dev_interface = KIT_I2C
            cfg.cfg.atcakit.dev_identity = address  # kit packet byte 2: the bus routes on it
            cfg.wake_delay = 1500
            cfg.rx_retries = 20
            cryptoauth().hal_kit_attach_phy(ctypes_ref(cfg), ctypes_ref(bridge.phy))
            return CryptoAuthChip(
                locator, cfg, self.profile, keepalive=bridge, chain=self.certificate_chain
            )
        if m := _I2C.match(locator):
            given = int(m.group(3), 0)
            if address is not None and address != given:
                raise InvalidInputError(
                    f"{locator}: address 0x{address:02X} contradicts the locator's 0x{given:02X}"
                )
            cfg = i2c_config(int(m.group(2)), given, locator)
            return CryptoAuthChip(locator, cfg, self.profile, chain=self.certificate_chain)
        if locator == "hid:":
            from cryptoauthlib.iface import cfg_ateccx08a_kithid_default

            hid_cfg = cfg_ateccx08a_kithid_default()
            if address is not None:  # the kit forwards it to the chip on its I2C bus
                check_address(address, locator)
                hid_cfg.cfg.atcahid.dev_identity = address
            return CryptoAuthChip(
                locator,
                hid_cfg,
                self.profile,
                chain=self.certificate_chain,
            )
        raise InvalidInputError(
            f"unknown chip locator {locator!r}: use emulated:<station>/<socket>[@0xADDR], "
            "i2c:/dev/i2c-N@0xADDR or hid:"
        )


def _emulated_address(locator: str, suffix: str | None, address: int | None) -> int:
    """The 8-bit address to reach an emulated chip at: the locator's ``@`` suffix, the
    ``address`` argument, or 0xC0; each checked as an I2C device address."""
    from_suffix = int(suffix, 0) if suffix is not None else None
    if from_suffix is not None and address is not None and from_suffix != address:
        raise InvalidInputError(
            f"{locator}: address 0x{address:02X} contradicts the locator's 0x{from_suffix:02X}"
        )
    chosen = next((a for a in (from_suffix, address) if a is not None), DEFAULT_ADDRESS)
    check_address(chosen, locator)
    return chosen


def check_address(address: int, locator: str) -> None:
    """Refuse what is not an 8-bit device address (bit 0 is the read/write bit)."""
    if not 0 < address <= 0xFE or address & 1:
        raise InvalidInputError(
            f"{locator}: I2C address 0x{address:02X} is not an 8-bit device address "
            "(even, e.g. 0xC0 for a blank ATECC608A or 0x6A for Trust&GO)"
        )


def ctypes_ref(obj: object) -> object:
    import ctypes

    return ctypes.byref(obj)  # type: ignore[arg-type]


def i2c_config(bus: int, address: int, locator: str) -> Any:
    """The library's I2C interface config for an 8-bit ``address`` (see the module doc)."""
    check_address(address, locator)
    cfg = iface_cfg_class()()
    cfg.iface_type = IFACE_I2C
    cfg.devtype = ATECC608
    cfg.cfg.atcai2c.address = address  # hal_linux_i2c: ioctl(I2C_SLAVE, address >> 1)
    cfg.cfg.atcai2c.bus = bus
    cfg.cfg.atcai2c.baud = 100_000
    cfg.wake_delay = 1500
    cfg.rx_retries = 20
    return cfg
