"""Building the Celery app from settings."""

from __future__ import annotations

from functools import cache

from celery import Celery

from provisioner.settings import Settings, load_settings


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' Redis, with the product's tasks registered.

    Results go to Redis too: the station waits for the signer's answer. The broker's
    visibility timeout bounds how long an unacknowledged (acks_late) task of a killed
    worker waits before it is delivered again.
    """
    app = Celery("provisioner", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 300},
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue="default",
    )
    app.conf.provisioner_settings = settings
    from workers import tasks

    tasks.register(app)
    return app


@cache
def worker_app() -> Celery:
    """The app of a ``celery -A workers`` process (one per process, built on first use)."""
    from workers import runtime

    app = make_celery(load_settings())
    runtime.connect_signals()
    return app
