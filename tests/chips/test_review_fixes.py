"""Regressions found in review: Ctrl-C during a command, bus faults, I2C addressing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from provisioner.chips.connector import Connector, i2c_config
from provisioner.errors import ChipCommandError, InvalidInputError
from provisioner.settings import Settings


def test_ctrl_c_during_a_command_is_not_lost(tmp_path: Path) -> None:
    """SIGINT lands while the library polls a busy chip (GenKey takes 115 ms at M0)."""
    connector = Connector(Settings(var_dir=tmp_path), zero_delay=False)
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0") as chip:
        chip.ensure_configured()
        timer = threading.Timer(0.03, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            chip.generate_key()
            time.sleep(1.0)  # without the fix the interrupt is gone: this sleep completes
        timer.join()
        assert time.monotonic() - started < 1.0
        # The command was not torn in half: the key it made is the key the chip reports.
        assert len(chip.public_key()) == 64


def test_a_bus_fault_names_its_cause(tmp_path: Path) -> None:
    connector = Connector(Settings(var_dir=tmp_path))
    jig = connector.jig("line1")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    jig.insert(0, broken)
    with connector.open("emulated:line1/0") as chip, pytest.raises(ChipCommandError) as err:
        chip.identity()
    assert isinstance(err.value.__cause__, json.JSONDecodeError)
    assert "JSONDecodeError" in str(err.value)


def test_i2c_address_is_the_8_bit_form_the_library_expects() -> None:
    cfg = i2c_config(1, 0x6A, "i2c:/dev/i2c-1@0x6A")  # Trust&GO: 7-bit 0x35
    assert cfg.cfg.atcai2c.address == 0x6A and cfg.cfg.atcai2c.bus == 1
    assert i2c_config(1, 0xC0, "i2c:/dev/i2c-1@0xC0").cfg.atcai2c.address == 0xC0


@pytest.mark.parametrize("bad", [0x35, 0x00, 0xFF])
def test_odd_or_zero_i2c_address_is_refused(bad: int) -> None:
    with pytest.raises(InvalidInputError, match="8-bit"):
        i2c_config(1, bad, f"i2c:/dev/i2c-1@0x{bad:02X}")
