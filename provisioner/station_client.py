"""A station PC's own calls to the line outside a device's task (its worker asks through
:class:`~provisioner.link.remote.RemoteRecords` too): "I am up, send me my work"."""

from __future__ import annotations

from provisioner.link.remote import RemoteRecords
from provisioner.local_line import station_settings
from provisioner.settings import Settings


def ask_resume(settings: Settings, station_id: str, env: dict[str, str]) -> int:
    """Ask the line to queue this station's running batches' devices again; returns how
    many it sent. ``env``: the station worker's identity overrides (one-PC line)."""
    from pathlib import Path

    from workers.celery_app import station_app

    ident = env.get("PROVISIONER_IDENTITY_DIR")
    st = station_settings(settings, station_id, Path(ident) if ident else None)
    app = station_app(st, station_id, as_line=False)
    try:
        remote = RemoteRecords.of_station(app, st, station_id, 0)
        return remote.resume()
    finally:
        app.close()
