"""A tiny Celery app on the line broker, for ``celery -A tests.broker.celery_testapp worker``
and for the test's own client. ``BROKER_TEST_CONFIG`` is a settings file; ``BROKER_TEST_AS``
says who logs in: ``station`` (the station PC's user, its own namespace) or ``line:S`` (the
line server's user in station S's namespace: the gateway worker)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery, Task

from provisioner.broker.clients import celery_config, line_login, station_login
from provisioner.broker.names import station_namespace
from provisioner.settings import load_settings


def make_app(config: Path, who: str) -> Celery:
    settings = load_settings(config)
    if who == "station":
        login, role = station_login(settings), "station"
    else:
        login, role = line_login(settings, station_namespace(who.removeprefix("line:"))), "line"
    conf = celery_config(settings, login, role=role)  # type: ignore[arg-type]
    if os.environ.get("BROKER_TEST_FAST_RESTORE"):
        # a killed worker's unacknowledged task comes back in seconds, not 5 minutes
        conf["broker_transport_options"] |= {
            "visibility_timeout": 2,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    app = Celery("brokertest")
    app.conf.update(
        conf,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_track_started=True,
    )

    @app.task(name="brokertest.add")  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="brokertest.twice", bind=True, acks_late=True, max_retries=3)  # type: ignore[untyped-decorator]
    def twice(self: Task, x: int) -> int:
        """Fails its first run and comes back by a countdown (kombu's delayed delivery)."""
        if self.request.retries == 0:
            raise self.retry(countdown=0.5)
        return x

    @app.task(name="brokertest.sleep", acks_late=True)  # type: ignore[untyped-decorator]
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


def _from_env() -> Celery | None:
    config = os.environ.get("BROKER_TEST_CONFIG")
    return make_app(Path(config), os.environ["BROKER_TEST_AS"]) if config else None


app = _from_env()
