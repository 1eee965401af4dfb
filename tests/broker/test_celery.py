"""Celery over the secured broker, as the line runs it: real workers, real clients, each
logged in as itself, in a station's namespace; ACL LOG proves the ACL lines grant exactly
what kombu and the result backend use (a missing command shows up there as a denial)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from celery import Celery

from provisioner.broker.acl import line_password
from tests.broker.celery_testapp import make_app
from tests.broker.conftest import Line, Worker


def _namespaced_keys(line: Line) -> set[str]:
    """Every key in Redis (SCAN: the line user has no KEYS)."""
    return {k.decode() for k in line.admin().scan_iter(count=1000)}


def test_station_and_gateway_round_trips_over_tls(
    tls_line: Line, start_worker: Callable[..., Worker]
) -> None:
    a = tls_line.enroll("a")
    tls_line.enroll("b")
    # line -> station: the station PC's worker, logged in as st-a
    station_worker = start_worker(a.config, "station", "station.a", "st-a-worker")
    # station -> line: the line server's gateway worker for a, logged in as line
    gateway = start_worker(tls_line.config, "line:a", "gateway", "gateway-a")
    station_app: Celery = make_app(a.config, "station")
    line_app: Celery = make_app(tls_line.config, "line:a")
    try:
        assert line_app.send_task("brokertest.add", (2, 3), queue="station.a").get(30) == 5
        assert station_app.send_task("brokertest.add", (4, 5), queue="gateway").get(30) == 9
        # a retry with a countdown (kombu's delayed delivery) on an acks_late task
        assert station_app.send_task("brokertest.twice", (7,), queue="station.a").get(30) == 7
        # remote control: the station's workers answer in the station's namespace; the
        # line's gateway worker does not listen to a pidbox a station can write to
        seen = station_app.control.inspect(timeout=1).active_queues() or {}
        assert {n.split("@")[0]: [q["name"] for q in qs] for n, qs in seen.items()} == {
            "st-a-worker": ["station.a"]
        }
        seen = line_app.control.inspect(timeout=1).active_queues() or {}
        assert [n.split("@")[0] for n in seen] == ["st-a-worker"]
    finally:
        station_app.close()
        line_app.close()
    station_worker.kill()
    gateway.kill()

    assert tls_line.denials() == []
    assert all(k.startswith("st:a:") for k in _namespaced_keys(tls_line))
    station_log = station_worker.log.read_text()
    gateway_log = gateway.log.read_text()
    assert "rediss://st-a:**@127.0.0.1" in station_log
    assert "rediss://line:**@127.0.0.1" in gateway_log
    assert a.password not in station_log
    assert line_password(tls_line.settings) not in gateway_log


def test_a_killed_workers_task_comes_back(
    tls_line: Line, start_worker: Callable[..., Worker]
) -> None:
    """kombu's visibility-timeout restore (a lock, a Lua script, the unacked index) works
    under the station's ACL: the task a SIGKILLed worker held runs again."""
    a = tls_line.enroll("a")
    fast = {"BROKER_TEST_FAST_RESTORE": "1"}
    worker = start_worker(a.config, "station", "station.a", "st-a-worker", **fast)
    app = make_app(a.config, "station")
    try:
        assert app.send_task("brokertest.add", (1, 1), queue="station.a").get(30) == 2
        result = app.send_task("brokertest.sleep", (2.0,), queue="station.a")
        deadline = time.monotonic() + 10
        while result.state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.state == "STARTED"
        worker.kill(signal.SIGKILL)
        second = start_worker(a.config, "station", "station.a", "st-a-worker-2", **fast)
        assert result.get(30) == 2.0
    finally:
        app.close()
    second.kill()
    assert f"Task brokertest.sleep[{result.id}] succeeded" in second.log.read_text()
    assert tls_line.denials() == []
