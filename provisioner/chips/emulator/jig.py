"""A station jig: N sockets, each empty or holding one emulated chip.

Chips live as files in a shared pool (``<chips_dir>/pool/<SERIAL>.json``); a socket is a
small file naming the chip in it (``<chips_dir>/<station>/socket-<n>``), so every process
of the station agrees on what is where, and a chip taken out and put back is the same chip.
Like a physical chip, one chip is in at most one socket of the jig: inserting it in a
socket takes it out of any other.
"""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.chips.emulator.chip import EmulatedChip


class StationJig:
    def __init__(self, chips_dir: Path, station_id: str, sockets: int) -> None:
        self.chips_dir = chips_dir
        self.station_id = station_id
        self.sockets = sockets
        self.pool = chips_dir / "pool"

    def _socket_file(self, socket: int) -> Path:
        if not 0 <= socket < self.sockets:
            raise ValueError(f"station {self.station_id} has sockets 0..{self.sockets - 1}")
        return self.chips_dir / self.station_id / f"socket-{socket}"

    def pool_path(self, serial_hex: str) -> Path:
        return self.pool / f"{serial_hex.upper()}.json"

    def chip_path(self, socket: int) -> Path | None:
        """The chip file in ``socket``, or None if the socket is empty."""
        f = self._socket_file(socket)
        try:
            name = f.read_text().strip()
        except FileNotFoundError:
            return None
        return Path(name) if name else None

    def serial_in(self, socket: int) -> str | None:
        """The serial (hex) of the chip in ``socket``, from the jig alone (None: empty)."""
        path = self.chip_path(socket)
        return path.stem if path is not None else None

    def insert(self, socket: int, chip_path: Path) -> None:
        if not chip_path.exists():
            raise FileNotFoundError(f"no emulated chip at {chip_path}")
        target = chip_path.resolve()
        for other in range(self.sockets):
            if other != socket and self.chip_path(other) == target:
                self.remove(other)
        f = self._socket_file(socket)
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = f.with_name(f.name + f".{os.getpid()}.tmp")
        tmp.write_text(str(target))
        os.replace(tmp, f)

    def remove(self, socket: int) -> None:
        self._socket_file(socket).unlink(missing_ok=True)

    def insert_blank(self, socket: int) -> Path:
        """Take a factory-fresh chip from the tray and put it in ``socket``."""
        return self.insert_chip(socket, EmulatedChip.blank())

    def insert_chip(self, socket: int, chip: EmulatedChip) -> Path:
        """Put ``chip`` (e.g. one from :mod:`provisioner.chips.emulator.tray`) in the tray's
        pool and in ``socket``."""
        path = self.pool_path(chip.serial.hex())
        chip.save(path)
        self.insert(socket, path)
        return path
