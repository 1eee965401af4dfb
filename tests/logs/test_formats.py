"""The JSON line and the human line: fields, timestamps, context, exceptions."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from provisioner.logs import bind, current_fields, log_context
from provisioner.logs.formats import human_line
from tests.logs.conftest import read_entries

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_a_record_is_one_json_object_with_the_core_fields(
    json_log: tuple[logging.Logger, Path],
) -> None:
    logger, path = json_log
    logger.info("hello %s", "world")
    logger.warning("multi\nline message")
    first, second = read_entries(path)
    assert TS.match(first["ts"]), first["ts"]
    assert first["level"] == "info" and second["level"] == "warning"
    assert first["msg"] == "hello world" and second["msg"] == "multi\nline message"
    assert first["logger"] == logger.name
    assert first["process"] == "unit-test"
    assert first["pid"] == __import__("os").getpid()
    assert len(path.read_text().splitlines()) == 2  # the newline stayed inside the string


def test_the_device_context_becomes_fields_and_ends_with_its_block(
    json_log: tuple[logging.Logger, Path],
) -> None:
    logger, path = json_log
    with log_context(station="line1", socket=2, device=7):
        bind(batch=3, chip_serial=None)  # an unknown value is left out
        logger.info("claimed")
        bind(chip_serial="0123AABBCCDDEEFF01")
        logger.info("read the chip")
        with log_context(device=8):
            logger.info("inner")
        logger.info("back")
    logger.info("outside")
    assert current_fields() == {}
    claimed, chip, inner, back, outside = read_entries(path)
    assert {k: claimed.get(k) for k in ("batch", "device", "station", "socket")} == {
        "batch": 3,
        "device": 7,
        "station": "line1",
        "socket": 2,
    }
    assert "chip_serial" not in claimed
    assert chip["chip_serial"] == "0123AABBCCDDEEFF01"
    assert inner["device"] == 8 and inner["chip_serial"] == "0123AABBCCDDEEFF01"
    assert back["device"] == 7
    assert not {"batch", "device", "chip_serial", "station", "socket"} & set(outside)


def test_unknown_context_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context"), log_context(devise=1):
        pass


def test_an_exception_is_its_own_field_and_extra_fields_are_kept(
    json_log: tuple[logging.Logger, Path],
) -> None:
    logger, path = json_log
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("it failed", extra={"fields": {"outcome": "failed", "msg": "not me"}})
    (entry,) = read_entries(path)
    assert entry["msg"] == "it failed"  # an extra field never overrides a core one
    assert entry["outcome"] == "failed"
    assert entry["exc"].startswith("Traceback") and "RuntimeError: boom" in entry["exc"]


def test_the_human_line_shows_the_same_fields() -> None:
    entry = {
        "ts": "2026-12-01T10:00:00.123Z",
        "level": "warning",
        "logger": "provisioner.station",
        "msg": "device 3 failed",
        "process": "worker-station-line1",
        "pid": 812,
        "batch": 1,
        "device": 3,
        "exc": "Traceback\n  boom",
    }
    text = human_line(entry)
    head, *tb = text.splitlines()
    assert head == (
        "2026-12-01T10:00:00.123Z warning worker-station-line1[812] provisioner.station: "
        "device 3 failed  batch=1 device=3"
    )
    assert tb == ["    Traceback", "      boom"]
