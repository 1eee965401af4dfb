"""A station whose signer is down: the device waits, then fails with a clear error at the
right step, then resumes once the signer is back, with one certificate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from provisioner import batches, dispatch
from provisioner.db.engine import create_schema, make_engine
from provisioner.supervisor import Supervisor
from tests.conftest import make_station
from tests.e2e.test_end_to_end import cli
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE

pytestmark = pytest.mark.slow


def test_signer_down_then_back(tmp_path: Path) -> None:
    st = make_station(
        tmp_path / "station",
        sockets=1,
        extra="[celery]\nsign_timeout_s = 3\nhsm_wait_retries = 1\n",
    )
    cli(st, "ca", "init")
    sup = Supervisor(st.settings, st.config)
    try:
        sup.start_redis()
        sup.start_registry()
        sup.start_local_stations(["line1"])
        engine = make_engine(st.settings.db_url)
        create_schema(engine)
        # `batch create` asks the signer, which is down on purpose here: create it directly.
        bid = batches.create_batch(engine, st.settings, station_id="line1", count=1, actor="t")
        batches.start(engine, bid, actor="t")
        dispatch.send_devices(st.settings, "line1", [1])
        deadline = time.monotonic() + 60
        row = None
        while time.monotonic() < deadline:
            with engine.connect() as c:
                row = c.execute(text("SELECT step, error, action FROM device WHERE id = 1")).one()
            if row.error:
                break
            time.sleep(0.2)
        assert row is not None and row.error, "the device never failed"
        assert "signer did not answer within 3s" in row.error and "after 2 tries" in row.error
        assert row.step == 30  # POP_VERIFIED: the chip proved possession, nothing was issued
        assert row.action == "wait"  # the part stays in its socket
        time.sleep(4)  # past the sign request's expiry: a late signer must drop it
        sup.start_worker("worker-hsm", HSM_QUEUE, 1)  # the signer comes back
        sup.start_worker("worker-registry", REGISTRY_QUEUE, 1)
        cli(st, "batch", "retry", "1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as c:
                if c.execute(text("SELECT step FROM device WHERE id = 1")).scalar_one() == 70:
                    break
            time.sleep(0.2)
        with engine.connect() as c:
            assert c.execute(text("SELECT step FROM device WHERE id = 1")).scalar_one() == 70
            assert c.execute(text("SELECT count(*) FROM certificate")).scalar_one() == 1
            kinds = [r[0] for r in c.execute(text("SELECT event_type FROM audit_event"))]
        assert kinds.count("device.cert_issued") == 1 and "device.failed" in kinds
    finally:
        sup.stop()
