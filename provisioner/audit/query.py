"""Auditors' questions of the log: filtered, paged by sequence number, exportable.

Paging uses the sequence number as a cursor (``after_seq``), not OFFSET, so page N costs
what page 1 does and an export of a million events streams in constant memory. What an
event looks like in JSON and CSV is :mod:`provisioner.audit.records`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import records
from provisioner.db.models import AuditEvent
from provisioner.errors import InvalidInputError

MAX_PAGE = 10_000
# The keys of one event as JSON (query --json, /audit/events, JSON Lines export).
FIELDS = records.RECORD_FIELDS
FORMATS = ("jsonl", "csv")


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
    upto_seq: int | None = None  # inclusive: an export's snapshot of the log

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
        if self.upto_seq is not None:
            c.append(col(AuditEvent.seq) <= self.upto_seq)
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
    """An event for JSON output: ``payload`` as an object, ``payload_text`` the exact
    hashed text (see :mod:`provisioner.audit.records`)."""
    return records.record(ev)


def jsonl_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """One JSON object per line per event."""
    for ev in events:
        yield json.dumps(as_dict(ev), separators=(",", ":")) + "\n"


def csv_lines(
    events: Iterable[AuditEvent],
    payload_names: Iterable[str] | None = None,
    *,
    time_zone: str = "utc",
) -> Iterator[str]:
    """A header line, then one CSV line per event (RFC 4180 quoting).

    The header needs every payload field name before the first row: give them
    (``payload_names``, as :func:`export_lines` does after a first pass over the database)
    to stream in constant memory; without them the events are held in memory to find them.
    """
    records.check_time_zone(time_zone)
    if payload_names is None:
        events = list(events)
        payload_names = records.payload_columns(ev.payload for ev in events)
    header = records.csv_header(payload_names, time_zone)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for ev in events:
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        w.writerow(records.csv_row(ev, header, time_zone))
    yield buf.getvalue()


def last_seq(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.exec(select(func.max(AuditEvent.seq))).one() or 0)


def payload_names(engine: Engine, f: EventFilter, chunk: int = 5000) -> set[str]:
    """The ``payload.*`` columns the events matching ``f`` need (reads only the payloads,
    a page at a time)."""
    names: set[str] = set()
    after = 0
    while True:
        with Session(engine) as s:
            rows = s.exec(
                select(AuditEvent.seq, AuditEvent.payload)
                .where(col(AuditEvent.seq) > after, *f.where())
                .order_by(col(AuditEvent.seq))
                .limit(chunk)
            ).all()
        names |= records.payload_columns(text for _, text in rows)
        if len(rows) < chunk:
            return names
        after = rows[-1][0]


def export_lines(
    engine: Engine,
    f: EventFilter,
    fmt: str = "jsonl",
    *,
    time_zone: str = "utc",
    chunk: int = 5000,
) -> Iterator[str]:
    """Every event matching ``f`` as JSON Lines or CSV, streamed in constant memory.

    The export is of the log as it was when it started (events appended meanwhile are
    left out), so a CSV header made in a first pass fits every row of the second. The
    format and time zone are checked here, before the first line is asked for."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"format {fmt!r}: use jsonl or csv")
    records.check_time_zone(time_zone)
    return _export(engine, f, fmt, time_zone, chunk)


def _export(engine: Engine, f: EventFilter, fmt: str, time_zone: str, chunk: int) -> Iterator[str]:
    snapshot = replace(f, upto_seq=last_seq(engine))
    if fmt == "jsonl":
        yield from jsonl_lines(iterate(engine, snapshot, chunk))
        return
    names = payload_names(engine, snapshot, chunk)
    yield from csv_lines(iterate(engine, snapshot, chunk), names, time_zone=time_zone)


def write(lines: Iterator[str], out: IO[str]) -> int:
    """Write ``lines``; returns how many lines (CSV: the header is one of them)."""
    n = 0
    for line in lines:
        out.write(line)
        n += 1
    return n
