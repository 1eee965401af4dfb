"""A station jig: N sockets, each empty or holding one emulated chip.

Chips live as files in a shared pool (``<chips_dir>/pool/<SERIAL>.json``); a socket is a
small file naming the chip in it (``<chips_dir>/<station>/socket-<n>``), so every process
of the station agrees on what is where, and a chip taken out and put back is the same chip.
Like a physical chip, one chip is in at most one socket of the jig: inserting it in a
socket takes it out of any other.

A socket may also hold a board: several chips on the socket's one I2C bus, each at its
own address, as on a product board (:meth:`StationJig.insert_board`; the socket file then
names one chip per line). The bus routes each transaction by address; a socket with one
chip, the line's case, is a board of one.

Every change of a socket file is a new file renamed into place (or the file removed), and
the writer gives it a modification time in nanoseconds later than the one it replaces, so
(inode, mtime, size) of a socket file changes with every change of its content, even two
changes within one tick of the filesystem's clock: :class:`SocketWatch` relies on that to
read the file only when it changed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner.chips.emulator.chip import EmulatedChip


class StationJig:
    def __init__(self, chips_dir: Path, station_id: str, sockets: int) -> None:
        self.chips_dir = chips_dir
        self.station_id = station_id
        self.sockets = sockets
        self.pool = chips_dir / "pool"

    def socket_file(self, socket: int) -> Path:
        """The file naming what ``socket`` holds (absent: the socket is empty)."""
        if not 0 <= socket < self.sockets:
            raise ValueError(f"station {self.station_id} has sockets 0..{self.sockets - 1}")
        return self.chips_dir / self.station_id / f"socket-{socket}"

    def pool_path(self, serial_hex: str) -> Path:
        return self.pool / f"{serial_hex.upper()}.json"

    def chip_path(self, socket: int) -> Path | None:
        """The chip file in ``socket`` (a board's first chip), or None if it is empty."""
        paths = self.chip_paths(socket)
        return paths[0] if paths else None

    def chip_paths(self, socket: int) -> list[Path]:
        """Every chip file on ``socket``'s bus, in the order inserted ([] if empty)."""
        f = self.socket_file(socket)
        try:
            text = f.read_text()
        except FileNotFoundError:
            return []
        return [Path(line) for line in (raw.strip() for raw in text.splitlines()) if line]

    def _write_socket(self, socket: int, paths: Sequence[Path]) -> None:
        f = self.socket_file(socket)
        if not paths:
            f.unlink(missing_ok=True)
            return
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = f.with_name(f.name + f".{os.getpid()}.tmp")
        tmp.write_text("".join(f"{p}\n" for p in paths))
        # the filesystem's own mtime is coarse (a clock tick): two changes within one tick
        # must still look different to a SocketWatch, so the time is set here, always later
        # than the replaced file's
        stamp = time.time_ns()
        with contextlib.suppress(FileNotFoundError):
            stamp = max(stamp, os.stat(f).st_mtime_ns + 1)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, f)

    def serial_in(self, socket: int) -> str | None:
        """The serial (hex) of the chip in ``socket``, from the jig alone (None: empty)."""
        path = self.chip_path(socket)
        return path.stem if path is not None else None

    def insert(self, socket: int, chip_path: Path) -> None:
        """Put the chip at ``chip_path`` alone in ``socket`` (whatever was there goes)."""
        self.insert_paths(socket, [chip_path])

    def insert_paths(self, socket: int, chip_paths: Sequence[Path]) -> None:
        """Put these chips together on ``socket``'s bus (a board), replacing its content;
        each chip leaves any other socket it sat in."""
        for path in chip_paths:
            if not path.exists():
                raise FileNotFoundError(f"no emulated chip at {path}")
        targets = [p.resolve() for p in chip_paths]
        if len(set(targets)) != len(targets):
            raise ValueError("a chip can sit on a board only once")
        self.socket_file(socket)  # range check before touching anything
        for other in range(self.sockets):
            if other == socket:
                continue
            held = self.chip_paths(other)
            kept = [p for p in held if p not in targets]
            if kept != held:
                self._write_socket(other, kept)
        self._write_socket(socket, targets)

    def remove(self, socket: int) -> None:
        self.socket_file(socket).unlink(missing_ok=True)

    def remove_chip(self, socket: int, chip_path: Path) -> None:
        """Take one chip off ``socket``'s board (the socket empties with its last chip)."""
        self._write_socket(socket, [p for p in self.chip_paths(socket) if p != chip_path])

    def insert_blank(self, socket: int) -> Path:
        """Take a factory-fresh chip from the tray and put it in ``socket``."""
        return self.insert_chip(socket, EmulatedChip.blank())

    def insert_board(self, socket: int, chips: Sequence[EmulatedChip]) -> list[Path]:
        """Put a board holding ``chips`` (each answering at its own I2C address) in
        ``socket``; returns their pool files in the same order."""
        paths = []
        for chip in chips:
            path = self.pool_path(chip.serial.hex())
            chip.save(path)
            paths.append(path)
        self.insert_paths(socket, paths)
        return paths

    def insert_chip(self, socket: int, chip: EmulatedChip) -> Path:
        """Put ``chip`` (e.g. one from :mod:`provisioner.chips.emulator.tray`) in the tray's
        pool and in ``socket``."""
        path = self.pool_path(chip.serial.hex())
        chip.save(path)
        self.insert(socket, path)
        return path


class SocketWatch:
    """What one socket holds, re-read from its file only when the file changed.

    The bus asks before every transaction, and the library polls a busy chip every 2 ms:
    reading and parsing the socket file each time was most of the emulator's CPU at
    datasheet timing. One ``stat`` says whether it changed (see the module doc: every
    change is a new inode with a later modification time), so a chip pulled or swapped by
    another process (``provisioner station insert``, the auto feeder, a test) is still seen
    at the next transaction. :meth:`paths` returns the same list object while the socket
    is unchanged, so a caller can tell "unchanged" by identity.
    """

    def __init__(self, jig: StationJig, socket: int) -> None:
        self._jig = jig
        self._socket = socket
        self._file = os.fspath(jig.socket_file(socket))
        self._stamp: tuple[int, int, int, int] | None = None
        self._paths: list[Path] = []

    def paths(self) -> list[Path]:
        """The chip files on the socket now, as :meth:`StationJig.chip_paths` reads them."""
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            if self._stamp is not None or self._paths:
                self._stamp, self._paths = None, []
            return self._paths
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp != self._stamp:
            # read after the stat: the content is at least as new as the stamp kept, so a
            # change racing this read is seen (again) at the next call, never missed
            self._paths = self._jig.chip_paths(self._socket)
            self._stamp = stamp
        return self._paths
