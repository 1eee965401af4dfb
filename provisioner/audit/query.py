"""Auditors' questions of the log: filtered, paged by sequence number, exportable.

Paging uses the sequence number as a cursor (``after_seq``), not OFFSET, so page N costs
what page 1 does and an export of a million events streams in constant memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.db.models import AuditEvent
from provisioner.errors import InvalidInputError

MAX_PAGE = 10_000
FIELDS = (
    "seq",
    "ts",
    "actor",
    "role",
    "event_type",
    "station_id",
    "socket",
    "batch_id",
    "device_id",
    "chip_serial",
    "payload",
    "hash",
)


def parse_time(value: str) -> str:
    """An ISO 8601 date or time (naive means UTC) as the log's sortable timestamp text."""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"time {value!r}: use ISO 8601, e.g. 2026-11-22 or 2026-11-22T08:00:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class EventFilter:
    chip_serial: str | None = None
    batch_id: int | None = None
    station_id: str | None = None
    actor: str | None = None
    event_type: str | None = None
    since: str | None = None  # inclusive, parse_time() text
    until: str | None = None  # exclusive

    @classmethod
    def of(
        cls,
        serial: str | None = None,
        batch: int | None = None,
        station: str | None = None,
        actor: str | None = None,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> EventFilter:
        """A filter from user input (CLI options, API query parameters); times are
        ISO 8601 text, checked here."""
        return cls(
            chip_serial=serial,
            batch_id=batch,
            station_id=station,
            actor=actor,
            event_type=event_type,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
        )

    def where(self) -> list[Any]:
        c: list[Any] = []
        if self.chip_serial is not None:
            c.append(AuditEvent.chip_serial == self.chip_serial.upper())
        if self.batch_id is not None:
            c.append(AuditEvent.batch_id == self.batch_id)
        if self.station_id is not None:
            c.append(AuditEvent.station_id == self.station_id)
        if self.actor is not None:
            c.append(AuditEvent.actor == self.actor)
        if self.event_type is not None:
            if self.event_type.endswith("*"):
                c.append(col(AuditEvent.event_type).startswith(self.event_type[:-1]))
            else:
                c.append(AuditEvent.event_type == self.event_type)
        if self.since is not None:
            c.append(col(AuditEvent.ts) >= self.since)
        if self.until is not None:
            c.append(col(AuditEvent.ts) < self.until)
        return c


def page(
    session: Session, f: EventFilter, after_seq: int = 0, limit: int = 100
) -> list[AuditEvent]:
    """Up to ``limit`` events matching ``f`` with seq > ``after_seq``, in log order."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be 1..{MAX_PAGE}")
    q = (
        select(AuditEvent)
        .where(col(AuditEvent.seq) > after_seq, *f.where())
        .order_by(col(AuditEvent.seq))
        .limit(limit)
    )
    return list(session.exec(q).all())


def iterate(engine: Engine, f: EventFilter, chunk: int = 5000) -> Iterator[AuditEvent]:
    """Every matching event, fetched a page at a time."""
    after = 0
    while True:
        with Session(engine) as s:
            rows = page(s, f, after, chunk)
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1].seq


def as_dict(ev: AuditEvent) -> dict[str, Any]:
    """An event for JSON output; ``payload`` stays the exact hashed text."""
    return {name: getattr(ev, name) for name in FIELDS}


def jsonl_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    for ev in events:
        yield json.dumps(as_dict(ev), separators=(",", ":")) + "\n"


def csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """A header line, then one CSV line per event (RFC 4180 quoting)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FIELDS)
    for values in (["" if v is None else v for v in as_dict(ev).values()] for ev in events):
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        w.writerow(values)
    yield buf.getvalue()


def write(lines: Iterator[str], out: IO[str]) -> int:
    """Write ``lines``; returns how many events they held (CSV: minus the header)."""
    n = 0
    for line in lines:
        out.write(line)
        n += 1
    return n
