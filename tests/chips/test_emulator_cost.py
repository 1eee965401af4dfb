"""What the emulator looks at per transaction, and what it must still notice (issue 19).

The library polls a busy chip every 2 ms, so the bus must not read the jig's files on every
poll (that was most of the emulator's CPU per device), yet a chip pulled or swapped by
another process must still be noticed at the next command, and the EEPROM must be on disk
before a changing command's response can be read. Counts, not timings: the bus runs on a
clock the test moves (one tick per look at the clock), so "busy" does not depend on how
fast this machine is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.emulator import bus as bus_module
from provisioner.chips.emulator.bus import EmulatedBus, NoChip
from provisioner.chips.emulator.chip import EmulatedChip, command_packet
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.jig import StationJig
from provisioner.errors import ChipAbsentError
from tests.chips.conftest import settings_with_ca

READ, WRITE, NONCE, RANDOM, INFO = 0x02, 0x12, 0x16, 0x1B, 0x30
ECC_FAULT = 0x05


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The bus's clock advances 1 ms each time it is read, and every command keeps the chip
    busy for 10 ms: each command is polled several times whatever the machine's speed."""
    now = [1000.0]

    def monotonic() -> float:
        now[0] += 0.001
        return now[0]

    monkeypatch.setattr(time, "monotonic", monotonic)
    monkeypatch.setattr(bus_module, "execution_ms", lambda opcode, mode=0: 10.0)
    return now


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the jig's socket file is read, the chip saved, and a poll answered busy."""
    counts = {"socket reads": 0, "saves": 0, "busy polls": 0, "receives": 0}
    chip_paths, save, receive = StationJig.chip_paths, EmulatedChip.save, EmulatedBus.receive

    def counting_chip_paths(self: StationJig, socket: int) -> list[Path]:
        counts["socket reads"] += 1
        return chip_paths(self, socket)

    def counting_save(self: EmulatedChip, path: Path) -> None:
        counts["saves"] += 1
        save(self, path)

    def counting_receive(self: EmulatedBus) -> bytes | None:
        counts["receives"] += 1
        out = receive(self)
        counts["busy polls"] += out is None
        return out

    monkeypatch.setattr(StationJig, "chip_paths", counting_chip_paths)
    monkeypatch.setattr(EmulatedChip, "save", counting_save)
    monkeypatch.setattr(EmulatedBus, "receive", counting_receive)
    return counts


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[Connector]:
    settings, _ = settings_with_ca(tmp_path)
    yield Connector(settings, zero_delay=False)


def _command(bus: EmulatedBus, opcode: int, p1: int, p2: int, data: bytes = b"") -> bytes:
    """One command as the library sends it: wake, send, poll until answered, idle."""
    bus.wake()
    bus.send(command_packet(opcode, p1, p2, data))
    for _ in range(1000):
        response = bus.receive()
        if response is not None:
            bus.idle()
            return response
    raise AssertionError("the chip never answered")


def test_the_library_polls_without_the_socket_file_being_read_again(
    connector: Connector, ticking: list[float], counted: dict[str, int]
) -> None:
    jig = connector.jig("line1")
    path = jig.insert_blank(0)
    counted.update(dict.fromkeys(counted, 0))  # inserting read and wrote files: not counted
    with connector.open("emulated:line1/0") as chip:
        serial = chip.identity().serial
        for _ in range(3):
            chip.random()
    assert serial.hex().upper() == path.stem
    assert counted["busy polls"] >= 5  # the library did poll a busy chip (10 ms each)
    # One read when the chip first appeared: nothing changed in the socket since. Before
    # issue 19 every transaction (wake, send, each poll, idle) read it again.
    assert counted["socket reads"] == 1
    assert counted["saves"] == 0  # Read, Info and Random change nothing on the chip


def test_a_chip_pulled_by_another_process_while_it_executes_is_reported_absent(
    connector: Connector, ticking: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    jig = connector.jig("line1")
    jig.insert_blank(0)
    receive = EmulatedBus.receive
    pulled: list[bool] = []

    def pull_at_first_poll(self: EmulatedBus) -> bytes | None:
        out = receive(self)
        if out is None and not pulled:
            StationJig(jig.chips_dir, "line1", jig.sockets).remove(0)  # the feeder, elsewhere
            pulled.append(True)
        return out

    with connector.open("emulated:line1/0") as chip:
        chip.identity()
        monkeypatch.setattr(EmulatedBus, "receive", pull_at_first_poll)
        with pytest.raises(ChipAbsentError):
            chip.random()  # its response was never delivered
    assert pulled


def test_a_chip_swapped_between_polls_answers_as_the_new_chip(
    tmp_path: Path, ticking: list[float]
) -> None:
    jig = StationJig(tmp_path / "chips", "line1", 2)
    first = jig.insert_blank(0)
    bus = EmulatedBus(jig, 0, zero_delay=False)
    block = _command(bus, READ, 0x80, 0)  # config block 0: serial bytes 0-3 and 8-12
    assert (block[1:5] + block[9:14]).hex().upper() == first.stem

    bus.wake()
    bus.send(command_packet(RANDOM, 0, 0))
    assert bus.receive() is None  # still executing
    second = StationJig(jig.chips_dir, "line1", 2).insert_blank(0)  # swapped elsewhere
    for _ in range(100):
        assert bus.receive() is None  # the first chip's answer never arrives
    block = _command(bus, READ, 0x80, 0)
    assert (block[1:5] + block[9:14]).hex().upper() == second.stem != first.stem

    StationJig(jig.chips_dir, "line1", 2).remove(0)
    with pytest.raises(NoChip):
        bus.wake()


def test_the_eeprom_is_on_disk_before_the_answer_and_reads_write_nothing(
    tmp_path: Path, ticking: list[float], counted: dict[str, int]
) -> None:
    jig = StationJig(tmp_path / "chips", "line1", 1)
    path = jig.insert_blank(0)
    counted.update(dict.fromkeys(counted, 0))
    bus = EmulatedBus(jig, 0, zero_delay=False)
    before = os.stat(path)
    for opcode, p1, p2, data, answer in (
        (READ, 0x80, 0, b"", 35),
        (INFO, 0, 0, b"", 7),
        (RANDOM, 0, 0, b"", 35),
        (NONCE, 0x03, 0, bytes(32), 4),  # pass-through to TempKey: status 0x00
    ):
        response = _command(bus, opcode, p1, p2, data)
        assert response[0] == answer and (answer > 4 or response[1] == 0x00)
    after = os.stat(path)
    assert counted["saves"] == 0 and (after.st_ino, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
    )

    bus.wake()
    bus.send(command_packet(WRITE, 0x00, 5, b"\x11\x22\x33\x44"))  # config word 5 (bytes 20-23)
    # the station process may die now, before it reads the answer: the chip keeps the write
    assert EmulatedChip.load(path).config[20:24] == b"\x11\x22\x33\x44"
    assert counted["saves"] == 1
    written = bus.receive()
    while written is None:
        written = bus.receive()
    assert written[1] == 0x00


def test_a_fault_plan_laid_while_the_chip_sits_applies_to_the_next_command(
    tmp_path: Path, ticking: list[float]
) -> None:
    jig = StationJig(tmp_path / "chips", "line1", 1)
    path = jig.insert_blank(0)
    bus = EmulatedBus(jig, 0, zero_delay=False)
    assert _command(bus, RANDOM, 0, 0)[0] == 35
    FaultPlan(ecc_fault_on=RANDOM).save(path)  # laid by a test process meanwhile
    assert _command(bus, RANDOM, 0, 0)[1] == ECC_FAULT
    assert _command(bus, INFO, 0, 0)[0] == 7  # only the opcode it names
    FaultPlan.clear(path)
    assert _command(bus, RANDOM, 0, 0)[0] == 35


def test_every_change_of_a_socket_is_seen_even_within_one_clock_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem's mtime moves in ticks of a few ms and a freed inode number may come
    back: the writer sets an mtime later than the replaced file's, so the watch still sees
    each change. Simulated here: a clock that stands still (even steps back) and a stat
    that always reports the same inode and change time."""
    from provisioner.chips.emulator.jig import SocketWatch  # issue 19 (old code: none)

    jig = StationJig(tmp_path / "chips", "line1", 2)
    chips = [jig.insert_blank(1) for _ in range(3)]  # pool files; socket 1 ends with the last
    monkeypatch.setattr(time, "time_ns", lambda: 5_000_000_000)
    real_stat: Callable[..., Any] = os.stat

    class SameInode:
        def __init__(self, st: os.stat_result) -> None:
            self.st_ino, self.st_ctime_ns = 1, 0
            self.st_mtime_ns, self.st_size = st.st_mtime_ns, st.st_size

    def reused_inode_stat(p: Any, *args: Any, **kwargs: Any) -> Any:
        return (
            SameInode(real_stat(p, *args, **kwargs))
            if "socket-" in os.fspath(p)
            else (real_stat(p, *args, **kwargs))
        )

    monkeypatch.setattr(os, "stat", reused_inode_stat)
    watch = SocketWatch(jig, 0)
    seen = []
    for chip in (*chips, chips[0]):
        jig.insert(0, chip)
        seen.append(watch.paths())
    assert seen == [[c] for c in (*chips, chips[0])]
    stamps = []
    for chip in chips:
        jig.insert(0, chip)
        stamps.append(real_stat(jig.socket_file(0)).st_mtime_ns)
    assert stamps == sorted(set(stamps))  # strictly later each time, the clock standing still
