"""A whole line on one PC (role "all", the demo): the line server and its stations share
the machine but not their secrets. Each station gets its own identity directory under
``<var>/stations/<id>/identity``, enrolled the way a station PC enrolls (a one-time token,
a CSR, the line's API), and its worker runs with that identity only."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner.db.engine import transaction
from provisioner.db.models import Station, StationIdentity
from provisioner.settings import Settings


def station_identity_dir(settings: Settings, station_id: str) -> Path:
    return settings.var / "stations" / station_id / "identity"


def station_settings(settings: Settings, station_id: str, identity_dir: Path | None) -> Settings:
    """The settings a station's processes run with (its id; its identity)."""
    update: dict[str, object] = {"station_id": station_id, "role": "station"}
    if identity_dir is not None:
        update["identity_dir"] = identity_dir
    return settings.model_copy(update=update)


def station_env(settings: Settings, station_id: str) -> dict[str, str]:
    """What a one-PC station's worker needs beyond this PC's settings."""
    return {
        "PROVISIONER_STATION_ID": station_id,
        "PROVISIONER_IDENTITY_DIR": str(station_identity_dir(settings, station_id)),
    }


def enrolled_stations(engine: Engine) -> list[str]:
    """Stations with a certificate that is not revoked (expiry is checked per message)."""
    with transaction(engine) as s:
        rows = s.exec(
            select(StationIdentity.station_id)
            .where(col(StationIdentity.revoked_at).is_(None))
            .distinct()
        ).all()
    return sorted(rows)


def _enrolled(engine: Engine, station_id: str) -> bool:
    with transaction(engine) as s:
        station = s.get(Station, station_id)
    return (
        station is not None
        and station.broker_password_sha256 is not None
        and station_id in enrolled_stations(engine)
    )


def ensure_local_stations(settings: Settings, engine: Engine, stations: list[str]) -> None:
    """The line's own identity, and each local station enrolled unless it already is and
    still has its files: a one-time token, a key made for the station alone, a CSR, the
    line's answer checked and written, as on a station PC (only the request does not
    travel over HTTP)."""
    from provisioner.enrollment.identity import StationIdentityFiles, enroll
    from provisioner.enrollment.service import enroll_station, init_line_identity
    from provisioner.enrollment.tokens import add_station

    def send(_url: str, body: dict[str, str]) -> object:
        answer = enroll_station(settings, engine, body["token"], body["csr"].encode())
        return answer.as_json()

    init_line_identity(settings, ["localhost", "127.0.0.1"])
    for sid in stations:
        ident_dir = station_identity_dir(settings, sid)
        st = station_settings(settings, sid, ident_dir)
        if StationIdentityFiles.of(st).exists() and _enrolled(engine, sid):
            continue
        token = add_station(engine, sid, actor="supervisor")
        enroll(st, sid, token, settings.api_url, force=True, send=send)
