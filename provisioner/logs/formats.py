"""One set of fields per record, written as a JSON line (files) or a human line (terminal,
``provisioner logs show``).

JSON keys: ``ts`` (UTC, ISO 8601 with milliseconds and ``Z``), ``level`` (lower case),
``logger``, ``msg``, ``process`` (the component: ``api``, ``worker-station-line1``...),
``pid``, then the device context when known (``batch``, ``device``, ``chip_serial``,
``station``, ``socket``), fields a caller passed as ``extra={"fields": {...}}`` (the access
log's ``method``, ``path``, ``status``...), and ``exc`` (the traceback text). Every string
goes through :func:`~provisioner.logs.redact.redact` first.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from provisioner.logs.context import FIELDS, current_fields
from provisioner.logs.redact import redact

CORE = ("ts", "level", "logger", "msg", "process", "pid")
EXTRA_ATTR = "fields"  # extra={"fields": {...}}: structured fields of one record


def timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value))


def record_fields(record: logging.LogRecord, process: str) -> dict[str, Any]:
    """The fields of ``record``, redacted, in a stable order."""
    out: dict[str, Any] = {
        "ts": timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
        "process": process,
        "pid": record.process,
    }
    ctx = current_fields()
    for key in FIELDS:
        value = getattr(record, key, None)
        if value is None:
            value = ctx.get(key)
        if value is not None:
            out[key] = _clean(value)
    extra = getattr(record, EXTRA_ATTR, None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            if key not in out and key != "exc":
                out[str(key)] = _clean(value)
    exc = _exception_text(record)
    if exc:
        out["exc"] = redact(exc)
    return out


def _exception_text(record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info and record.exc_info[0] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def human_line(entry: dict[str, Any]) -> str:
    """``2026-12-01T10:00:00.123Z warning worker-station-line1[812] provisioner.station:
    device 3 failed ... batch=1 device=3 ...``, the traceback indented below."""
    head = (
        f"{entry.get('ts', '?')} {entry.get('level', '?')!s:<7} "
        f"{entry.get('process', '?')}[{entry.get('pid', '?')}] {entry.get('logger', '?')}: "
        f"{entry.get('msg', '')}"
    )
    rest = [
        f"{k}={v}"
        for k, v in entry.items()
        if k not in CORE and k != "exc" and v is not None and v != ""
    ]
    line = head + ("  " + " ".join(rest) if rest else "")
    exc = entry.get("exc")
    if exc:
        line += "\n" + "\n".join("    " + x for x in str(exc).splitlines())
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record, self.process), ensure_ascii=False, default=str)


class HumanFormatter(logging.Formatter):
    """The same fields as :class:`JsonFormatter`, for a person at a terminal. ``short``:
    only ``level: message`` (the supervisor's warnings between the CLI's own lines)."""

    def __init__(self, process: str, *, short: bool = False) -> None:
        super().__init__()
        self.process = process
        self.short = short

    def format(self, record: logging.LogRecord) -> str:
        entry = record_fields(record, self.process)
        if self.short:
            return f"{entry['level']}: {entry['msg']}"
        return human_line(entry)
