"""Celery wiring: ``celery -A workers worker -Q station.<id>|hsm|registry``.

The app is built lazily from the settings (``$PROVISIONER_CONFIG`` / ``PROVISIONER_*``) when
the ``celery`` command asks for ``workers.app``, so importing this package has no side
effects. Producers (the CLI) build their own app with :func:`workers.celery_app.make_celery`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.celery_app import worker_app

        return worker_app()
    raise AttributeError(name)
