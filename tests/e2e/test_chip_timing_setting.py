"""``[stations.<id>] chip_timing``: the emulated chips of a station's sockets answer at once
("zero", the default) or take cryptoauthlib's execution-time table per command
("datasheet"), in what the station worker builds for each socket (SocketRun's connector),
not only in the benches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from provisioner.chips.emulator.timing import execution_ms
from provisioner.chips.kitbridge import KitBridge
from provisioner.errors import ConfigError
from provisioner.settings import load_settings
from provisioner.socket_task import SocketRun
from tests.conftest import Station, make_station

RANDOM = 0x1B


def _socket_run(st: Station) -> SocketRun:
    """What a station worker's pool child builds for socket 0 (records are not used here)."""
    return SocketRun(st.settings, "line1", 0, records=None, holder="line1:0:1")  # type: ignore[arg-type]


def _bus_of(run: SocketRun) -> tuple[object, KitBridge]:
    run.connector.jig("line1").insert_blank(0)
    chip = run.connector.open(run.locator)
    bridge = chip._keepalive
    assert isinstance(bridge, KitBridge)
    return chip, bridge


def test_a_datasheet_station_takes_the_table_time_per_command(tmp_path: Path) -> None:
    st = make_station(tmp_path / "st", sockets=1, extra='chip_timing = "datasheet"\n')
    assert st.settings.station("line1").chip_timing == "datasheet"
    chip, bridge = _bus_of(_socket_run(st))
    with chip:  # type: ignore[attr-defined]
        assert bridge.bus.zero_delay is False  # type: ignore[attr-defined]
        chip.identity()  # type: ignore[attr-defined]  # wakes the chip
        t0 = time.monotonic()
        chip.random()  # type: ignore[attr-defined]
        elapsed_ms = (time.monotonic() - t0) * 1000
    # a lower bound only: the chip held the command busy for its table time (M0: 23 ms)
    assert elapsed_ms >= execution_ms(RANDOM, 0)


def test_the_default_is_zero_delay(tmp_path: Path) -> None:
    st = make_station(tmp_path / "st", sockets=1)
    assert st.settings.station("line1").chip_timing == "zero"
    chip, bridge = _bus_of(_socket_run(st))
    with chip:  # type: ignore[attr-defined]
        assert bridge.bus.zero_delay is True  # type: ignore[attr-defined]


def test_a_bad_chip_timing_is_refused_naming_the_setting(tmp_path: Path) -> None:
    st = make_station(tmp_path / "st", sockets=1)
    bad = tmp_path / "bad.toml"
    bad.write_text(st.config.read_text() + 'chip_timing = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert "stations.line1.chip_timing" in str(err.value)
    assert "'zero' or 'datasheet'" in str(err.value)
