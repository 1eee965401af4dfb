"""The same batch started twice (and more) while its tasks are still queued, on a real line:
real Celery workers, Redis, SoftHSM, emulated chips. Every start queues a task per device
again; the records (a device's step, its claim by one socket, the signer's one certificate
per device) must make the duplicates harmless: one certificate per chip, every device
through each step once (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from provisioner.supervisor import running_services
from tests.conftest import Station, make_station
from tests.e2e.test_lifecycle_line import (
    _in_flight_at_pop,
    _rows,
    _status,
    _steps,
    _until,
    cli,
    frozen_signer,
    start_in_process,
)

pytestmark = pytest.mark.slow

COUNT = 6
DEVICE_EVENTS = (
    "device.identified",
    "device.key_generated",
    "device.pop_verified",
    "device.cert_issued",
    "device.cert_written",
    "device.cert_verified",
    "device.uploaded",
)


def _finished(st: Station, batch: int) -> None:
    _until(
        f"batch {batch} provisioned and finished",
        lambda: _status(st, batch)["state"] == "finished",
        timeout=240,
    )


def test_a_batch_started_twice_while_queued_issues_one_certificate_per_chip(
    tmp_path: Path,
) -> None:
    st = make_station(tmp_path / "station", sockets=2, extra="[celery]\nsign_timeout_s = 45\n")
    cli(st, "ca", "init")
    with running_services(st.settings, ["line1"], st.config) as sup:
        # The operator's way: `batch start` twice at once, each queueing every device.
        cli(st, "batch", "create", "--count", str(COUNT), "--station", "line1")
        starts = [
            subprocess.Popen(
                [sys.executable, "-m", "provisioner.cli.main", "batch", "start", "1", "--no-wait"],
                env=st.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for p in starts:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (out, err)
        _finished(st, 1)
        # Deterministically queued: with the signer frozen, both sockets wait for it and
        # every other task of two starts waits behind them.
        cli(st, "batch", "create", "--count", str(COUNT), "--station", "line1")
        with frozen_signer(sup):
            start_in_process(st, 2)
            start_in_process(st, 2)
            _until("two chips waiting for the signer", _in_flight_at_pop(st, 2))
        _finished(st, 2)
        assert all(step == 70 and error is None for _, step, error in _steps(st))
        assert _status(st, 1)["in_flight"] == _status(st, 2)["in_flight"] == 0

    per_device = _rows(
        st,
        "SELECT d.id, d.chip_serial, count(c.id) FROM device d "
        "LEFT JOIN certificate c ON c.device_id = d.id GROUP BY d.id, d.chip_serial",
    )
    assert len(per_device) == 2 * COUNT
    assert all(n == 1 for _, _, n in per_device), per_device
    assert len({serial for _, serial, _ in per_device}) == 2 * COUNT  # a chip per device
    events = _rows(st, "SELECT event_type, device_id FROM audit_event")
    kinds = Counter(kind for kind, _ in events)
    queued = [
        json.loads(p)["devices_queued"]
        for (p,) in _rows(st, "SELECT payload FROM audit_event WHERE event_type = 'batch.started'")
    ]
    # The second start of batch 2 queues every device again except those a socket task
    # already claimed in the milliseconds between the two starts (at most one per socket):
    # at least COUNT - 2 duplicates are in the queue, and still one certificate per chip.
    assert len(queued) == 4 and all(queued) and queued[2] == COUNT, queued
    assert COUNT - 2 <= queued[3] <= COUNT, queued
    once = Counter((kind, dev) for kind, dev in events if kind in DEVICE_EVENTS)
    assert len(once) == len(DEVICE_EVENTS) * 2 * COUNT and set(once.values()) == {1}, once
    assert not [k for k in kinds if k.startswith(("incident.", "sign.refused"))], kinds
