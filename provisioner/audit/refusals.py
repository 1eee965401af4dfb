"""Refusals and denials in the audit trail, every one counted, without letting anyone flood it.

Every refusal must leave a trace (a forged sign request, a 403), but the trail is
append-only: if each refusal appended an event, a script holding an operator token, or
anyone able to put messages on the broker, could grow it without limit. So refusals are
aggregated per *window*: one window per (actor, event type, reason) at a time, ``WINDOW_S``
seconds long.

- The first refusal of a key opens a window and appends its event at once (so a single
  refusal is visible immediately), with the details of that first refusal and ``window_s``.
- Later refusals of that key inside the window append nothing: they add one to the
  window's count in the table ``refusal_window``, in the refusing transaction.
- The window's final count reaches the trail when the window closes: in the event that
  opens the key's next window (``previous_count``, with ``previous_seq``, the seq of the
  event that opened the counted window), or, when no refusal of that key follows, in a
  ``refusals.counted`` event written by :func:`close_windows` (the signer's periodic job;
  only when the count is more than the one refusal its opening event already shows).

Counting and appending happen under the audit append lock in the refusing transaction, so
several processes together count exactly and never open the same window twice; a count
leaves the table only in the transaction that writes it to the trail, so none is lost
across processes or restarts. N refusals of one key in one window append at most two
events, and the table holds at most one row per key (deleted when its count is written).
The reason is a short code from a fixed set (an action name, a policy reason), never free
text, so the number of keys per actor is bounded too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent, RefusalWindow

WINDOW_S = 60
COUNTED = "refusals.counted"
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"


def _text(t: datetime) -> str:
    return t.astimezone(UTC).strftime(_TS)


def _closes(row: RefusalWindow, window_s: float) -> datetime:
    return datetime.strptime(row.opened_ts, _TS).replace(tzinfo=UTC) + timedelta(seconds=window_s)


def record(
    session: Session,
    event_type: str,
    *,
    actor: str,
    reason: str,
    role: str | None = None,
    station_id: str | None = None,
    batch_id: int | None = None,
    device_id: int | None = None,
    chip_serial: str | None = None,
    payload: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    window_s: float = WINDOW_S,
) -> AuditEvent | None:
    """Count one refusal in ``session`` (the refusing transaction, which must be able to
    write); returns the event appended if it opened a window, None if it was counted in an
    open one. ``reason`` is the aggregation key's short code; ``payload`` the first
    refusal's details."""
    chain.lock_for_append(session)  # counts and window openings are serialised
    now = now if now is not None else datetime.now(UTC)
    row = session.get(RefusalWindow, (actor, event_type, reason))
    if row is not None and now < _closes(row, window_s):
        row.count += 1
        session.add(row)
        session.flush()
        return None
    body: dict[str, Any] = {**(payload or {}), "window_s": window_s}
    if row is not None:  # its window has closed: its final count goes into this event
        body["previous_count"] = row.count
        body["previous_seq"] = row.opened_seq
    ev = chain.append(
        session,
        event_type,
        actor=actor,
        role=role,
        station_id=station_id,
        batch_id=batch_id,
        device_id=device_id,
        chip_serial=chip_serial,
        payload=body,
    )
    if row is None:
        row = RefusalWindow(
            actor=actor, event_type=event_type, reason=reason, opened_ts="", opened_seq=0
        )
    row.opened_ts, row.opened_seq, row.count = _text(now), ev.seq, 1
    session.add(row)
    session.flush()
    return ev


def close_windows(engine: Engine, now: datetime | None = None, window_s: float = WINDOW_S) -> int:
    """Write the final count of every closed window to the trail and forget the window;
    returns how many ``refusals.counted`` events were appended. A window that counted only
    the refusal its opening event shows is forgotten without an event. Idempotent, and
    safe beside refusing processes (same lock)."""
    now = now if now is not None else datetime.now(UTC)
    cutoff = _text(now - timedelta(seconds=window_s))
    with Session(engine) as s:  # most rounds find nothing: do not take the write lock
        due = select(RefusalWindow).where(col(RefusalWindow.opened_ts) <= cutoff)
        if s.exec(due).first() is None:
            return 0
    written = 0
    with transaction(engine) as s:
        chain.lock_for_append(s)
        rows = s.exec(
            select(RefusalWindow)
            .where(col(RefusalWindow.opened_ts) <= cutoff)
            .order_by(col(RefusalWindow.opened_seq))
        ).all()
        for row in rows:
            if row.count > 1:
                chain.append(
                    s,
                    COUNTED,
                    actor=row.actor,
                    payload={
                        "event_type": row.event_type,
                        "reason": row.reason,
                        "count": row.count,
                        "opened_seq": row.opened_seq,
                        "window_s": window_s,
                    },
                )
                written += 1
            s.delete(row)
    return written


def pending(session: Session) -> list[RefusalWindow]:
    """The windows whose counts are not in the trail yet (for tests and status pages)."""
    return list(session.exec(select(RefusalWindow).order_by(col(RefusalWindow.opened_seq))).all())
