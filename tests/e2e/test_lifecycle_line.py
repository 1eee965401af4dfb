"""The batch lifecycle on a real line: real Celery workers, Redis, SoftHSM, emulated chips
through cryptoauthlib, driven through the operator's CLI.

Chips "in flight" are made deterministic by freezing the signer (SIGSTOP on its process
group): the socket tasks then sit at POP_VERIFIED with their sign request sent, exactly
where an operator's pause or cancel catches a real line mid-chip."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from provisioner import batches, dispatch
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.jig import StationJig
from provisioner.db.engine import make_engine
from provisioner.supervisor import Supervisor, running_services
from tests.conftest import Station, make_station, run_cli

pytestmark = pytest.mark.slow

WRITE = 0x12  # the Write opcode: only certificate slots are written after CERT_ISSUED


def cli(st: Station, *args: str, ok: bool = True) -> Any:
    r = run_cli(*args, env=st.env())
    if ok:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def _rows(st: Station, sql: str) -> list[Any]:
    with make_engine(st.settings.db_url).connect() as c:
        return list(c.execute(text(sql)).all())


def _until(what: str, cond: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def frozen_signer(sup: Supervisor) -> Iterator[None]:
    """The signer worker stopped dead (not killed): requests wait in its queue."""
    (hsm,) = [c for c in sup.children if c.name == "worker-hsm"]
    os.killpg(hsm.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(hsm.proc.pid, signal.SIGCONT)


def start_in_process(st: Station, batch_id: int) -> None:
    """What `batch start` does, minus its check that every worker answers (a frozen signer
    does not answer Celery's inspect, and the CLI rightly refuses to start then)."""
    t = batches.start(make_engine(st.settings.db_url), batch_id, actor="operator:test")
    dispatch.send_devices(st.settings, t.station_id, t.queue)


def _steps(st: Station) -> list[tuple[int, int, str | None]]:
    return [tuple(r) for r in _rows(st, "SELECT id, step, error FROM device ORDER BY id")]


def _in_flight_at_pop(st: Station, n: int) -> Callable[[], bool]:
    return lambda: (
        sum(1 for _, step, _ in _steps(st) if step == 30)  # POP_VERIFIED, waiting to sign
        == n
    )


def _status(st: Station, batch: int = 1) -> dict[str, Any]:
    return dict(json.loads(cli(st, "batch", "status", str(batch), "--json").stdout))


def _one_line_error(r: Any, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[Station, Supervisor]]:
    st = make_station(tmp_path / "station", sockets=2, extra="[celery]\nsign_timeout_s = 45\n")
    cli(st, "ca", "init")
    with running_services(st.settings, ["line1"], st.config) as sup:
        yield st, sup


def test_pause_with_chips_in_flight_then_resume(line: tuple[Station, Supervisor]) -> None:
    st, sup = line
    cli(st, "batch", "create", "--count", "4", "--station", "line1")
    with frozen_signer(sup):
        start_in_process(st, 1)
        _until("two chips waiting for the signer", _in_flight_at_pop(st, 2))
        out = cli(st, "batch", "pause", "1").stdout
        assert "paused" in out
    # The signer answers: the two chips in flight finish the step they were in (issued),
    # and nothing starts after it; the two unstarted devices stay where they were.
    _until(
        "in-flight chips to finish their step and stop",
        lambda: (
            sorted(step for _, step, _ in _steps(st)) == [0, 0, 40, 40]
            and _status(st)["in_flight"] == 0
        ),
    )
    time.sleep(3)  # nothing more happens while paused
    assert sorted(step for _, step, _ in _steps(st)) == [0, 0, 40, 40]
    assert all(err is None for _, _, err in _steps(st))
    assert _status(st)["state"] == "paused"
    _one_line_error(cli(st, "batch", "pause", "1", ok=False), 5, "paused")

    cli(st, "batch", "resume", "1")
    _until("the batch to finish", lambda: _status(st)["state"] == "finished")
    assert _rows(st, "SELECT count(*) FROM certificate")[0][0] == 4
    kinds = [r[0] for r in _rows(st, "SELECT event_type FROM audit_event")]
    assert kinds.count("batch.paused") == 1 and kinds.count("batch.resumed") == 1
    assert kinds.count("device.cert_issued") == 4 and "device.failed" not in kinds
    assert json.loads(cli(st, "audit", "verify", "--json").stdout)["ok"]


def test_cancel_with_chips_in_flight(line: tuple[Station, Supervisor]) -> None:
    st, sup = line
    cli(st, "batch", "create", "--count", "4", "--station", "line1")
    with frozen_signer(sup):
        start_in_process(st, 1)
        _until("two chips waiting for the signer", _in_flight_at_pop(st, 2))
        out = cli(st, "batch", "cancel", "1").stdout
        assert "2 device(s) released" in out
    # The sign requests reach the signer after the cancel: nothing is issued, the chips
    # stop where they are, and no part is sent to the reject bin.
    _until("the in-flight chips to stop", lambda: _status(st)["in_flight"] == 0)
    time.sleep(2)
    rep = _status(st)
    assert rep["state"] == "cancelled" and rep["cancelled"] == 2 and rep["failed"] == 0
    assert rep["issued"] == 0
    assert _rows(st, "SELECT count(*) FROM certificate")[0][0] == 0
    assert sorted(step for _, step, _ in _steps(st)) == [0, 0, 30, 30]
    _one_line_error(cli(st, "batch", "resume", "1", ok=False), 5, "cancelled")
    _one_line_error(cli(st, "batch", "retry", "1", ok=False), 5, "cancelled")
    # An ended batch never blocks a rotation.
    cli(st, "ca", "rotate")


def test_retry_gives_one_certificate_per_chip_and_close_unblocks_rotation(
    tmp_path: Path,
) -> None:
    # make_station's extra lands in [stations.line1] until the next table header.
    st = make_station(
        tmp_path / "station",
        sockets=1,
        extra='feed = "manual"\nchip_retries = 1\n[celery]\nsign_timeout_s = 45\n',
    )
    cli(st, "ca", "init")
    jig = StationJig(st.settings.chips_dir, "line1", 1)
    with running_services(st.settings, ["line1"], st.config) as sup:
        cli(st, "batch", "create", "--count", "2", "--station", "line1")
        cli(st, "station", "insert", "--station", "line1", "--socket", "0")
        chip = jig.chip_path(0)
        assert chip is not None
        with frozen_signer(sup):
            start_in_process(st, 1)
            _until("the chip waiting for the signer", _in_flight_at_pop(st, 1))
            # The certificate slots will not take a write: the part fails after its
            # certificate was issued.
            FaultPlan(ecc_fault_on=WRITE).save(chip)
        _until("the device to fail", lambda: _status(st)["failed"] == 1)
        failed = json.loads(cli(st, "batch", "status", "1", "--failed", "--json").stdout)
        (dev,) = failed["devices"]
        assert dev["step"] == "CERT_ISSUED" and dev["action"] == "reject", dev
        assert dev["status"] == "failed"
        assert failed["failures"][0]["action"] == "reject"
        text_status = cli(st, "batch", "status", "1").stdout
        assert "reject bin" in text_status and "batch retry 1" not in text_status  # 1 pending

        # A rotation now would strand the issued certificate: refused, naming the batch.
        _one_line_error(cli(st, "ca", "rotate", ok=False), 5, "batch(es) 1 (running)")
        # The operator cleans the contacts (the fault is gone) and retries that chip.
        FaultPlan.clear(chip)
        cli(st, "batch", "retry", "1", "--device", dev["chip_serial"])
        _until(
            "the retried device to be verified",
            lambda: _rows(st, f"SELECT step FROM device WHERE id = {dev['device_id']}")[0][0] >= 60,
        )
        _one_line_error(
            cli(st, "batch", "retry", "1", "--device", str(dev["device_id"]), ok=False),
            5,
        )
        # The second device: its chip fails for good before any certificate.
        # (Paused while the faulty chip goes in: the socket's task, asking every 2 s for a
        # chip, must not find it before its fault is set.)
        cli(st, "batch", "pause", "1")
        cli(st, "station", "remove", "--station", "line1", "--socket", "0")
        cli(st, "station", "insert", "--station", "line1", "--socket", "0")
        second = jig.chip_path(0)
        assert second is not None
        FaultPlan(ecc_fault_on=0x41).save(second)  # Sign: proof of possession fails
        cli(st, "batch", "resume", "1")
        _until("the second device to fail", lambda: _status(st)["failed"] == 1)
        _until("the first upload", lambda: _status(st)["done"] == 1)
        closed = cli(st, "batch", "close", "1").stdout
        assert "finished_with_failures" in closed and "reject bin" in closed
        assert _status(st)["state"] == "finished_with_failures"
        cli(st, "ca", "rotate")
    per_chip = _rows(
        st,
        "SELECT d.chip_serial, count(c.id) FROM device d LEFT JOIN certificate c "
        "ON c.device_id = d.id GROUP BY d.chip_serial",
    )
    assert dict(per_chip)[dev["chip_serial"]] == 1
    assert sum(n for _, n in per_chip) == 1
    kinds = [r[0] for r in _rows(st, "SELECT event_type FROM audit_event")]
    assert kinds.count("device.retry") == 1 and kinds.count("batch.closed") == 1
