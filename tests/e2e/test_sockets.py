"""Chips come and go, through real Celery workers, Redis, the signer and the registry, with
emulated chips behind the real cryptoauthlib: an empty socket waits for a chip (no error),
`provisioner station insert` feeds it, a provisioned chip left in the socket is asked out,
seeded bus noise is retried to success, and two messages for one device make one
certificate."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner import dispatch
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.db.engine import make_engine
from provisioner.supervisor import Supervisor
from tests.conftest import Station, make_station
from tests.e2e.test_end_to_end import cli
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE

pytestmark = pytest.mark.slow

DONE = 70
STEP_EVENTS = (
    "device.identified",
    "device.key_generated",
    "device.pop_verified",
    "device.cert_issued",
    "device.cert_written",
    "device.cert_verified",
    "device.uploaded",
)


@contextmanager
def _line(st: Station, sockets: int) -> Iterator[Supervisor]:
    cli(st, "ca", "init")
    sup = Supervisor(st.settings, st.config)
    try:
        sup.start_redis()
        sup.start_registry()
        sup.start_worker("worker-hsm", HSM_QUEUE, 1)
        sup.start_worker("worker-registry", REGISTRY_QUEUE, 1)
        sup.start_local_stations(["line1"])
        yield sup
    finally:
        sup.stop()


def _until(what: str, check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(text(sql)).all())


def test_empty_socket_waits_then_inserted_chips_are_provisioned(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=1, extra='feed = "manual"\nchip_retries = 5\n')
    with _line(st, sockets=1) as sup:
        engine = make_engine(st.settings.db_url)
        cli(st, "batch", "create", "--count", "2", "--station", "line1")
        cli(st, "batch", "start", "1", "--no-wait")

        # Nothing in the socket: it waits for a chip, and no device fails.
        waiting = _until(
            "the socket to ask for a chip",
            lambda: _rows(
                engine, "SELECT device_id, detail FROM socket_state WHERE state = 'insert_chip'"
            ),
        )
        assert waiting[0].detail == "insert chip"
        time.sleep(3)  # a few more rounds of waiting
        assert _rows(engine, "SELECT id FROM device WHERE error IS NOT NULL") == []
        status = json.loads(cli(st, "station", "status", "--station", "line1", "--json").stdout)
        assert [(s["socket"], s["state"]) for s in status] == [(0, "insert_chip")]

        # The operator puts a factory-fresh chip in: one device is provisioned on it.
        out = cli(st, "station", "insert", "--station", "line1", "--socket", "0").stdout
        first_chip = out.split("chip ")[1].split()[0]
        first = _until(
            "a device provisioned on the inserted chip",
            lambda: _rows(engine, f"SELECT id FROM device WHERE step = {DONE}"),
        )

        # The next device finds that provisioned chip still there: out with it first.
        _until(
            "the socket to ask for the provisioned chip to come out",
            lambda: _rows(
                engine,
                "SELECT detail FROM socket_state WHERE detail = "
                f"'remove chip {first_chip} (provisioned), then insert chip'",
            ),
        )
        cli(st, "station", "remove", "--station", "line1", "--socket", "0")

        # A chip whose bus is noisy (seeded): its CRC errors are retried, not failed.
        noisy = EmulatedChip.blank()
        jig = Connector(st.settings).jig("line1")
        path = jig.pool_path(noisy.serial.hex())
        noisy.save(path)
        FaultPlan(seed=11, crc_error_rate=0.02).save(path)
        serial = noisy.serial.hex().upper()
        cli(st, "station", "insert", "--station", "line1", "--socket", "0", "--serial", serial)
        _until(
            "both devices done",
            lambda: len(_rows(engine, f"SELECT id FROM device WHERE step = {DONE}")) == 2,
            timeout=60,
        )
        assert _rows(engine, "SELECT id FROM device WHERE error IS NOT NULL") == []
        assert _rows(engine, "SELECT count(*) FROM certificate")[0][0] == 2
        second = _rows(engine, f"SELECT id FROM device WHERE chip_serial = '{serial}'")
        assert second and second[0].id != first[0].id
        retried = (sup.log_dir / "worker-station-line1.log").read_text()
        assert "trying again" in retried, "the seeded noise never hit: it would prove nothing"

        kinds = [r[0] for r in _rows(engine, "SELECT event_type FROM audit_event")]
        assert kinds.count("station.chip_inserted") == 2
        assert kinds.count("station.chip_removed") == 1
        assert "device.failed" not in kinds
        status = json.loads(cli(st, "station", "status", "--json").stdout)
        assert [(s["state"], s["chip_serial"]) for s in status] == [("idle", serial)]


def test_two_messages_for_one_device_make_one_certificate(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=2)
    with _line(st, sockets=2) as sup:
        engine = make_engine(st.settings.db_url)
        cli(st, "batch", "create", "--count", "1", "--station", "line1")
        cli(st, "batch", "start", "1", "--no-wait")  # the first message
        dispatch.send_devices(st.settings, "line1", [1])  # and a second one, for the other socket
        _until(
            "the device done", lambda: _rows(engine, f"SELECT id FROM device WHERE step = {DONE}")
        )
        time.sleep(2)  # let the second message finish too, whichever it was
        assert _rows(engine, "SELECT count(*) FROM certificate")[0][0] == 1
        kinds = [r[0] for r in _rows(engine, "SELECT event_type FROM audit_event")]
        assert {k: kinds.count(k) for k in STEP_EVENTS} == dict.fromkeys(STEP_EVENTS, 1)
        assert "device.failed" not in kinds
        assert _rows(engine, "SELECT claimed_by FROM device")[0][0] is None
        # Both messages were run: one provisioned the device, the other left it alone
        # (claimed by the first, or already verified on its chip).
        log = (sup.log_dir / "worker-station-line1.log").read_text()
        assert log.count('"outcome": "done"') == 1 and log.count('"outcome": "skipped"') == 1


def test_a_socket_waiting_for_a_chip_survives_the_broker(tmp_path: Path) -> None:
    """Redis dies (SIGKILL) while a socket waits for a chip: the task cannot even send its
    retry; the device is left as it was (no error, not claimed) and the supervisor's
    re-dispatch after Redis is back picks it up again."""
    st = make_station(tmp_path / "station", sockets=1, extra='feed = "manual"\n')
    with _line(st, sockets=1) as sup:
        engine = make_engine(st.settings.db_url)
        cli(st, "batch", "create", "--count", "1", "--station", "line1")
        cli(st, "batch", "start", "1", "--no-wait")
        _until(
            "the socket to ask for a chip",
            lambda: _rows(engine, "SELECT 1 FROM socket_state WHERE state = 'insert_chip'"),
        )
        sup.start_monitor(health=False)
        redis = next(c for c in sup.children if c.kind == "redis")
        first_pid = redis.proc.pid
        redis.proc.kill()
        _until("Redis restarted", lambda: redis.proc.pid != first_pid and redis.state == "running")
        time.sleep(3)
        # No error, and not held: once the supervisor has re-dispatched it, the socket's task
        # claims it only while it looks for a chip (every 2 s), so it is seen released.
        assert [r.error for r in _rows(engine, "SELECT error FROM device")] == [None]
        _until(
            "the device to be seen released",
            lambda: _rows(engine, "SELECT error, claimed_by FROM device") == [(None, None)],
            timeout=20,
        )
        cli(st, "station", "insert", "--station", "line1", "--socket", "0")
        _until(
            "the device done after the broker came back",
            lambda: _rows(engine, f"SELECT id FROM device WHERE step = {DONE}"),
            timeout=90,
        )
        assert _rows(engine, "SELECT count(*) FROM certificate")[0][0] == 1
