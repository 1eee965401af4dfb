"""A station's sockets: which chip locator a socket is, who puts chips in them, and probing.

On a real line the operator puts chips into the jig. An emulated station is fed one of two
ways (``stations.<id>.feed``):

- ``auto``: the emulator's own "operator" (:func:`feed_auto`) puts a factory-fresh chip in
  for a device that has none yet, and *its own* chip (found by serial) back for a device
  that was interrupted, so it resumes on the same key. The demo runs this way.
- ``manual``: sockets stay empty until someone runs ``provisioner station insert``; the
  socket's task waits for the chip, as it waits on silicon. :func:`insert_chip` and
  :func:`remove_chip` are those operator actions, audited.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from provisioner import socket_state
from provisioner.audit import chain
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.jig import StationJig
from provisioner.db.engine import transaction
from provisioner.db.models import Device
from provisioner.errors import (
    ChipAbsentError,
    ChipError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip


def locator(settings: Settings, station_id: str, socket: int) -> str:
    st = settings.station(station_id)
    if st.transport == "emulated":
        return f"emulated:{station_id}/{socket}"
    if st.transport == "i2c":
        if st.sockets != 1:
            raise ConfigError(f"station {station_id}: an i2c station has exactly one socket")
        return f"i2c:{st.i2c_bus}@0x{st.i2c_address:02X}"
    return "hid:"


def auto_fed(settings: Settings, station_id: str) -> bool:
    """Whether the emulator's operator feeds this station's sockets (else a person does)."""
    st = settings.station(station_id)
    return st.transport == "emulated" and st.feed == "auto"


def feed_auto(
    settings: Settings, station_id: str, socket: int, dev: Device, *, part: str | None = None
) -> None:
    """The emulated operator of an auto-fed station puts the chip ``dev`` needs in
    ``socket``: for a new device a blank one, or in a preprovisioned batch a new ``part``
    (:func:`emulated_part`); the device's own chip for a resumed one."""
    jig = Connector(settings).jig(station_id)
    if dev.chip_serial is None:
        if part is None:
            jig.insert_blank(socket)
        else:
            jig.insert_chip(socket, emulated_part(settings, part))
        return
    path = jig.pool_path(dev.chip_serial)
    if not path.exists():
        raise ChipAbsentError(f"chip {dev.chip_serial} of device {dev.id} is not in the tray")
    jig.insert(socket, path)


def emulated_part(settings: Settings, part: str) -> EmulatedChip:
    """A new pre-provisioned part of kind ``part`` (``trust-and-go``, ``trustflex``) from the
    emulated line's tray: made, locked and certified by the emulated line's manufacturer
    (``<chips_dir>/manufacturer``, not Microchip's), whose root the line verifies parts
    against only once an admin has run ``provisioner manufacturer trust`` on it."""
    from provisioner.chips.emulator import tray
    from provisioner.chips.emulator.manufacturer import EmulatedManufacturer

    makers = {"trust-and-go": tray.trust_and_go, "trustflex": tray.trustflex}
    if part not in makers:
        raise InvalidInputError(f"unknown part {part!r}: use one of {', '.join(sorted(makers))}")
    return makers[part](EmulatedManufacturer.of_line(settings.chips_dir))


def emulated_manufacturer_root(settings: Settings) -> Path:
    """The root certificate of the emulated line's manufacturer (made on first use)."""
    from provisioner.chips.emulator.manufacturer import (
        MANUFACTURER_DIR,
        ROOT_FILE,
        EmulatedManufacturer,
    )

    EmulatedManufacturer.of_line(settings.chips_dir)
    return Path(settings.chips_dir) / MANUFACTURER_DIR / ROOT_FILE


# --- operator actions on an emulated jig -----------------------------------------------------


def _emulated_jig(settings: Settings, station_id: str, socket: int) -> StationJig:
    st = settings.station(station_id)
    if st.transport != "emulated":
        raise ConflictError(
            f"station {station_id} has real chips ({st.transport}): put chips in and take "
            "them out by hand; `station insert|remove` are for emulated stations"
        )
    if not 0 <= socket < st.sockets:
        raise InvalidInputError(
            f"station {station_id} has sockets 0..{st.sockets - 1}, not {socket}"
        )
    return Connector(settings).jig(station_id)


def insert_chip(
    engine: Engine,
    settings: Settings,
    station_id: str,
    socket: int,
    *,
    actor: str,
    serial: str | None = None,
    part: str | None = None,
) -> str:
    """Put a chip in an empty socket of an emulated jig: a factory-fresh one, a new
    pre-provisioned ``part`` (:func:`emulated_part`), or the chip ``serial`` from the tray's
    pool (e.g. a chip taken out earlier). Returns its serial."""
    if serial is not None and part is not None:
        raise InvalidInputError("--serial puts back a chip from the tray; --part makes a new one")
    jig = _emulated_jig(settings, station_id, socket)
    held = jig.serial_in(socket)
    if held is not None:
        raise ConflictError(
            f"socket {socket} of {station_id} holds chip {held}: take it out first "
            f"(`provisioner station remove --station {station_id} --socket {socket}`)"
        )
    fresh = serial is None
    if serial is not None:
        serial = serial.strip().upper()
        if not re.fullmatch(r"[0-9A-F]{18}", serial):
            raise InvalidInputError(f"--serial must be 18 hex digits (9 bytes), got {serial!r}")
        if not jig.pool_path(serial).exists():
            raise NotFoundError(f"no chip {serial} in the tray of emulated chips")
    made = emulated_part(settings, part) if part is not None else None
    with transaction(engine) as s:
        if made is not None:
            serial = jig.insert_chip(socket, made).stem
        elif serial is None:
            serial = jig.insert_blank(socket).stem
        else:
            jig.insert(socket, jig.pool_path(serial))
        chain.append(
            s,
            "station.chip_inserted",
            actor=actor,
            station_id=station_id,
            socket=socket,
            chip_serial=serial,
            payload={"fresh": fresh, "part": part} if part else {"fresh": fresh},
        )
    return serial


def remove_chip(
    engine: Engine, settings: Settings, station_id: str, socket: int, *, actor: str
) -> str:
    """Take the chip out of a socket of an emulated jig (it stays in the tray's pool, so
    ``insert --serial`` can put it back). Returns its serial."""
    jig = _emulated_jig(settings, station_id, socket)
    serial = jig.serial_in(socket)
    if serial is None:
        raise ConflictError(f"socket {socket} of {station_id} is empty: nothing to remove")
    with transaction(engine) as s:
        jig.remove(socket)
        socket_state.chip_taken_out(s, station_id, socket, serial)
        chain.append(
            s,
            "station.chip_removed",
            actor=actor,
            station_id=station_id,
            socket=socket,
            chip_serial=serial,
        )
    return serial


# --- probing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketReport:
    """What ``station probe`` says about one socket."""

    socket: int
    locator: str
    present: bool
    serial: str | None = None
    revision: str | None = None
    config_locked: bool | None = None
    data_locked: bool | None = None
    key_valid: bool | None = None
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def probe(settings: Settings, station_id: str) -> list[SocketReport]:
    """Look at every socket of a station through the library, changing nothing.

    Run it while the station's worker is stopped: on silicon the worker owns the bus."""
    st = settings.station(station_id)
    connector = Connector(settings)
    reports = []
    for socket in range(st.sockets):
        loc = locator(settings, station_id, socket)
        try:
            with connector.open(loc) as chip:
                ident = chip.identity()
                config_locked = chip.config_locked()
                report = SocketReport(
                    socket,
                    loc,
                    True,
                    ident.serial_hex,
                    ident.revision.hex(),
                    config_locked,
                    chip.data_locked(),
                    chip.key_valid(connector.profile.key_slot) if config_locked else False,
                )
        except ChipAbsentError:
            report = SocketReport(socket, loc, False)
        except ChipError as exc:
            report = SocketReport(socket, loc, True, error=str(exc))
        reports.append(report)
    return reports
