"""How one audit event looks outside the database: a JSON record and a spreadsheet row.

Two audiences, two needs. A spreadsheet wants one typed value per cell: a date it can
parse, one column per payload field. A verifier wants the exact text that was hashed: the
``ts`` string with its microseconds and the canonical ``payload`` text. So every output
keeps the hashed text unchanged in its own field (``ts``, ``payload_text``) next to the
friendly one (``time_utc``, ``payload`` as an object, ``payload.*`` columns). Hashes are
lower-case hex everywhere, as stored.

Pure (no database): :mod:`provisioner.audit.query` feeds it events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from provisioner.audit.verifier import ENTRY_FIELDS
from provisioner.db.models import AuditEvent
from provisioner.errors import InvalidInputError

# The fields of an event row, as hashed, in log order: the canonical entry's (one list, in
# the verifier) without the payload, which a record carries as an object and as its text.
EVENT_FIELDS = tuple(f for f in ENTRY_FIELDS if f != "payload")

# A JSON record (query --json, /audit/events, JSON Lines export): these keys, in this order.
RECORD_FIELDS = (*EVENT_FIELDS, "payload", "payload_text", "prev_hash", "hash")

PAYLOAD_PREFIX = "payload."
TIME_ZONES = ("utc", "local")
# Spreadsheets (LibreOffice, Excel, Google Sheets) read this as a date and time; ISO 8601's
# "T" and "Z" and the microseconds make them keep it as text.
DISPLAY_TIME = "%Y-%m-%d %H:%M:%S"
# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

COLUMNS_HELP = """\
CSV: one header row, then one row per event; UTF-8. Columns in this order:

seq           the event's number in the log (1, 2, 3 ...)
time_utc      its time in UTC as YYYY-MM-DD HH:MM:SS, which spreadsheets
              read as a date and time. With --local-time instead:
              time_local (this machine's time zone) and utc_offset
              (e.g. +02:00, that time's offset from UTC)
event_type, actor, role, station_id, socket, batch_id, device_id,
chip_serial   the event's fields (empty when it has none)
payload.NAME  one column per payload field, sorted by name; a nested
              field is payload.NAME.INNER, a list is its JSON text;
              empty when the event has no such field
ts            the exact time text that was hashed (UTC, microseconds)
payload_text  the exact payload text that was hashed (canonical JSON)
prev_hash     the previous event's chain hash
hash          this event's chain hash (SHA-256, lower-case hex, as in
              every proof file and export)

A text cell starting with = + - or @ gets a leading ' so a spreadsheet
shows it instead of running it as a formula (ts and payload_text never
start so and are never changed).

JSON Lines: one JSON object per line per event, with the keys seq, ts,
actor, role, event_type, station_id, socket, batch_id, device_id,
chip_serial, payload (an object), payload_text (the exact hashed text),
prev_hash and hash (hex). A verifier recomputes each event's hash from
these fields, with ts and payload_text as hashed.
"""


def check_time_zone(time_zone: str) -> str:
    """``utc`` or ``local`` (the machine's zone), checked before any output starts."""
    if time_zone not in TIME_ZONES:
        raise InvalidInputError(f"time zone {time_zone!r}: use utc or local")
    return time_zone


def payload_of(ev: AuditEvent) -> Any:
    """The payload as an object; a payload that is not JSON (only a tampered database has
    one) stays text, so an export of a damaged log still completes."""
    try:
        return json.loads(ev.payload)
    except ValueError:
        return ev.payload


def record(ev: AuditEvent) -> dict[str, Any]:
    """The event as one JSON object (see ``COLUMNS_HELP``)."""
    d: dict[str, Any] = {name: getattr(ev, name) for name in EVENT_FIELDS}
    d["payload"] = payload_of(ev)
    d["payload_text"] = ev.payload
    d["prev_hash"] = ev.prev_hash
    d["hash"] = ev.hash
    return d


def flatten(payload: Any, prefix: str = "payload") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` as ``{"payload.a.b": 1, "payload.c": [1, 2]}``:
    nested objects become dotted names, everything else is one value. An empty object
    is one value too (``{}``), so it is not lost."""
    if not isinstance(payload, Mapping) or (not payload and prefix != "payload"):
        return {prefix: payload}
    out: dict[str, Any] = {}
    for key, value in payload.items():
        out.update(flatten(value, f"{prefix}.{key}"))
    return out


def payload_columns(payloads: Iterable[str]) -> set[str]:
    """The ``payload.*`` column names that these payload texts need."""
    names: set[str] = set()
    for text in payloads:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, Mapping):
            names.update(flatten(value))
    return names


def time_columns(time_zone: str) -> tuple[str, ...]:
    return ("time_utc",) if time_zone == "utc" else ("time_local", "utc_offset")


def csv_header(payload_names: Iterable[str], time_zone: str = "utc") -> list[str]:
    """The header row: the event's fields, its payload columns sorted by name, then the
    exact hashed texts and the chain hashes."""
    return [
        "seq",
        *time_columns(check_time_zone(time_zone)),
        "event_type",
        "actor",
        "role",
        "station_id",
        "socket",
        "batch_id",
        "device_id",
        "chip_serial",
        *sorted(payload_names),
        "ts",
        "payload_text",
        "prev_hash",
        "hash",
    ]


def display_time(ts: str, time_zone: str = "utc") -> tuple[str, ...]:
    """The cells of :func:`time_columns` for the hashed time text ``ts``: a time that does
    not parse (a damaged row) is shown as it is rather than stopping the export."""
    try:
        t = datetime.fromisoformat(ts)
    except ValueError:
        return (ts,) if time_zone == "utc" else (ts, "")
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    if time_zone == "utc":
        return (t.astimezone(UTC).strftime(DISPLAY_TIME),)
    local = t.astimezone()  # the machine's zone (TZ), with its offset on that date
    offset = local.strftime("%z")  # +0200
    return local.strftime(DISPLAY_TIME), f"{offset[:3]}:{offset[3:]}"


def cell(value: Any) -> str:
    """One CSV cell: empty for none, JSON text for lists and objects, true/false as JSON
    writes them, and text that a spreadsheet would run as a formula quoted with '."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(ev: AuditEvent, header: list[str], time_zone: str = "utc") -> list[str]:
    """The event's cells in ``header``'s order (a payload field missing from the header
    is left out: the header was made from the same events, so none is)."""
    cells: dict[str, str] = dict(
        zip(time_columns(time_zone), display_time(ev.ts, time_zone), strict=True)
    )
    for name in EVENT_FIELDS:
        cells[name] = cell(getattr(ev, name))
    payload = payload_of(ev)
    if isinstance(payload, Mapping):
        cells.update((name, cell(v)) for name, v in flatten(payload).items())
    cells["ts"] = ev.ts
    cells["payload_text"] = ev.payload
    cells["prev_hash"] = ev.prev_hash
    cells["hash"] = ev.hash
    return [cells.get(name, "") for name in header]
