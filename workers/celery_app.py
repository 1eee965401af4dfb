"""Building the Celery apps from settings.

One Redis carries the whole line, in namespaces (:mod:`provisioner.broker.clients`):

- the line's own app (:func:`make_celery`, namespace ``line:``, user ``line``): the
  signer (``hsm``) and uploader (``registry``) queues; every process on the line server;
- a station's app (:func:`station_app`, namespace ``st:S:``): on the station PC as user
  ``st-S`` (its worker consumes ``station.S`` and sends to ``gateway``), and on the line
  server as user ``line`` (the gateway worker consumes ``gateway``; dispatch sends to
  ``station.S``).

A ``celery -A workers worker`` process learns which app it is from
``PROVISIONER_WORKER`` (``line`` | ``station`` | ``gateway``) and
``PROVISIONER_WORKER_STATION``.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, Literal

from celery import Celery

from provisioner.errors import ConfigError
from provisioner.private_files import private_umask
from provisioner.settings import Settings, load_settings

WorkerKind = Literal["line", "station", "gateway"]
WORKER_ENV = "PROVISIONER_WORKER"
STATION_ENV = "PROVISIONER_WORKER_STATION"


def _app(name: str, conf: dict[str, Any], settings: Settings) -> Celery:
    """Results go to Redis too (a station waits for the line's answers). The broker's
    visibility timeout bounds how long an unacknowledged (acks_late) task of a killed
    worker waits before it is delivered again."""
    app = Celery(name)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue="default",
        worker_send_task_events=False,
        **conf,
    )
    app.conf.provisioner_settings = settings
    return app


def make_celery(settings: Settings) -> Celery:
    """The line server's own app (namespace ``line:``), with the line's tasks."""
    from provisioner.broker.clients import celery_config, line_login
    from workers import tasks

    app = _app("provisioner", celery_config(settings, line_login(settings), role="line"), settings)
    tasks.register(app)
    return app


def station_app(settings: Settings, station_id: str, *, as_line: bool) -> Celery:
    """Station ``station_id``'s namespace: as the line (``as_line``: the gateway worker and
    dispatch, on the line server) or as the station itself (on its PC)."""
    from provisioner.broker.clients import celery_config, line_login, station_login
    from provisioner.broker.names import station_namespace
    from workers import tasks

    if as_line:
        conf = celery_config(
            settings, line_login(settings, station_namespace(station_id)), role="line"
        )
    else:
        conf = celery_config(settings, station_login(settings), role="station")
    app = _app(f"provisioner-{station_id}", conf, settings)
    if as_line:
        tasks.register_gateway(app)
    else:
        tasks.register_station(app)
    return app


def worker_kind(env: dict[str, str] | None = None) -> tuple[WorkerKind, str | None]:
    env = dict(os.environ) if env is None else env
    kind = env.get(WORKER_ENV, "line")
    station = env.get(STATION_ENV) or None
    if kind not in ("line", "station", "gateway"):
        raise ConfigError(f"{WORKER_ENV}={kind!r}: expected line, station or gateway")
    if kind != "line" and station is None:
        raise ConfigError(f"{WORKER_ENV}={kind} needs {STATION_ENV}")
    return kind, station  # type: ignore[return-value]


@cache
def worker_app() -> Celery:
    """The app of a ``celery -A workers`` process (one per process, built on first use).
    Its files are private (umask 077) even when it is started without the supervisor."""
    from workers import runtime

    private_umask()
    settings = load_settings()
    kind, station = worker_kind()
    if kind == "line":
        app = make_celery(settings)
    else:
        assert station is not None
        app = station_app(settings, station, as_line=kind == "gateway")
    runtime.connect_signals(kind, station)
    return app
