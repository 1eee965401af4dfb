"""What each socket of a station is doing now (the ``socket_state`` table).

Written by the socket's worker task on every change, read by ``station status``, ``batch
status`` and the dashboard. It is a live view, not history: the audit trail keeps what
happened; this row only says what a person looking at the jig needs to know now.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.db.engine import transaction
from provisioner.db.models import SocketState, utcnow

# busy: a step in progress; idle: nothing to do (a part may be in the socket, see detail);
# insert_chip: a device waits for a part (detail says which, or what to take out first);
# failed: the last device failed (detail: why and what to do with the part); empty: the
# part of an idle or failed socket was taken out (``station remove``).
State = Literal["busy", "idle", "insert_chip", "failed", "empty"]


def put(
    s: Session,
    station_id: str,
    socket: int,
    state: State,
    *,
    device_id: int | None = None,
    chip_serial: str | None = None,
    detail: str | None = None,
) -> None:
    """Set one socket's row in ``s``'s transaction."""
    row = s.get(SocketState, (station_id, socket))
    if row is None:
        row = SocketState(station_id=station_id, socket=socket, state=state)
    row.state = state
    row.device_id, row.chip_serial, row.detail = device_id, chip_serial, detail
    row.updated_at = utcnow()
    s.add(row)


def record(
    engine: Engine,
    station_id: str,
    socket: int,
    state: State,
    *,
    device_id: int | None = None,
    chip_serial: str | None = None,
    detail: str | None = None,
) -> None:
    with transaction(engine) as s:
        put(
            s,
            station_id,
            socket,
            state,
            device_id=device_id,
            chip_serial=chip_serial,
            detail=detail,
        )


def as_json(row: SocketState) -> dict[str, object]:
    """One socket's row for `station status --json`, `batch status --json` and the API."""
    return {
        "station": row.station_id,
        "socket": row.socket,
        "state": row.state,
        "device_id": row.device_id,
        "chip_serial": row.chip_serial,
        "detail": row.detail,
        "updated_at": row.updated_at.isoformat(),
    }


def read(engine: Engine, station_id: str | None = None) -> list[SocketState]:
    """Every socket row (of one station), by station and socket."""
    with transaction(engine) as s:
        q = select(SocketState)
        if station_id is not None:
            q = q.where(SocketState.station_id == station_id)
        return list(s.exec(q.order_by(col(SocketState.station_id), col(SocketState.socket))))


def chip_taken_out(s: Session, station_id: str, socket: int, serial: str) -> None:
    """The operator took ``serial`` out: a socket that was only showing that part (idle or
    failed) is empty now. A busy or waiting socket is its task's to describe."""
    row = s.get(SocketState, (station_id, socket))
    if row is not None and row.chip_serial == serial and row.state in ("idle", "failed"):
        put(s, station_id, socket, "empty", detail=f"chip {serial} taken out")
