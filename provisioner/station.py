"""A station's sockets: which chip locator a socket is, and (emulated) loading chips.

On a real line the operator puts chips into the jig. On an emulated station the "operator"
is here: a device that has no chip yet gets a factory-fresh one from the tray; a device that
was interrupted gets *its own* chip back (found by serial), so it resumes on the same key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.db.models import Device
from provisioner.errors import ChipAbsentError, ChipError, ConfigError
from provisioner.settings import Settings


def locator(settings: Settings, station_id: str, socket: int) -> str:
    st = settings.station(station_id)
    if st.transport == "emulated":
        return f"emulated:{station_id}/{socket}"
    if st.transport == "i2c":
        if st.sockets != 1:
            raise ConfigError(f"station {station_id}: an i2c station has exactly one socket")
        return f"i2c:{st.i2c_bus}@0x{st.i2c_address:02X}"
    return "hid:"


def load_emulated_chip(connector: Connector, station_id: str, socket: int, dev: Device) -> None:
    jig = connector.jig(station_id)
    if dev.chip_serial is None:
        jig.insert_blank(socket)
        return
    path = jig.pool_path(dev.chip_serial)
    if not path.exists():
        raise ChipAbsentError(f"chip {dev.chip_serial} of device {dev.id} is not in the tray")
    jig.insert(socket, path)


@contextmanager
def open_socket(
    settings: Settings, station_id: str, socket: int, dev: Device
) -> Iterator[CryptoAuthChip]:
    """The chip for ``dev`` in ``socket``, opened; closed (released) on exit."""
    connector = Connector(settings)
    if settings.station(station_id).transport == "emulated":
        load_emulated_chip(connector, station_id, socket, dev)
    chip = connector.open(locator(settings, station_id, socket))
    try:
        yield chip
    finally:
        chip.close()


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
