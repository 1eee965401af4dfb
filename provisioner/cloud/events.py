"""The event store: what devices publish, kept per registry, and the local notification sink.

Cloud IoT handed telemetry (``/devices/{d}/events[/subfolder]``) and, when the registry asked
for it, state changes to Cloud Pub/Sub: the registry's ``eventNotificationConfigs`` pick a
topic per subfolder, ``stateNotificationConfig`` one topic for state. The built-in cloud has
no Pub/Sub, so it keeps those messages itself, in one table on the registry's own database
(``registry_events``, on :class:`~provisioner.cloud.store.RegistryTable`'s metadata so
:func:`~provisioner.cloud.store.open_store` creates it), each row carrying the topic it would
have gone to. ``provisioner events tail`` (and any consumer) reads them back in ``seq``
order, by registry or by topic, which is what a Pub/Sub subscriber would have seen.

Routing follows Cloud IoT: the *first* config whose ``subfolder_matches`` equals the event's
subfolder exactly decides the topic; ``""`` matches every event (Cloud IoT allowed it only in
the last config, as the catch-all). An event that matches no config was *dropped* by Cloud
IoT; here it is kept with topic ``""`` so an operator can still see what a device sent
(``events tail --topic ""`` shows only those). State changes are stored only when the
registry has a state notification topic, as Cloud IoT published them only then (the device's
state history itself is kept by :mod:`provisioner.cloud.device_data`).

Writes are SQLAlchemy Core bulk inserts (one ``executemany`` per call, one transaction): the
device plane hands over a whole sync batch at once and the benchmark pushes thousands of
telemetry messages per second, which ORM objects could not keep up with. The store is
bounded: at most ``max_events`` per registry, the oldest deleted in the inserting
transaction, checked every ``prune_every`` inserts rather than on each one (see
:func:`_maybe_prune`). Deleting a registry deletes its events (``ON DELETE CASCADE``): a
registry re-created under the same id starts with an empty history.
"""

from __future__ import annotations

import base64
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine, RowMapping

from provisioner.cloud.store import (
    EventNotificationConfig,
    RegistryRow,
    RegistryTable,
    StoredRegistry,
    utc,
)

# Retention: the newest MAX_EVENTS per registry are kept; the check runs each time the
# global sequence crosses a multiple of PRUNE_EVERY (1% of the bound: the store may exceed
# it by that much between checks, and the check's index scan is paid once per 10,000 rows).
MAX_EVENTS = 1_000_000
PRUNE_EVERY = 10_000

KIND_EVENT = "event"
KIND_STATE = "state"

# SQLite only turns ``INTEGER PRIMARY KEY`` into the rowid (and autoincrements it); a
# BIGINT key there would need explicit values. AUTOINCREMENT (``sqlite_autoincrement``)
# keeps a seq from ever being reused after its row is deleted, so a reader that remembers
# "after seq N" (``events tail --since``) never skips or repeats an event.
_SEQ = BigInteger().with_variant(Integer, "sqlite")

events_table = Table(
    "registry_events",
    RegistryTable.metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column(
        "registry_pk",
        Integer,
        ForeignKey("registry_registries.pk", ondelete="CASCADE"),
        nullable=False,
    ),
    # The Cloud IoT pubsubTopicName this event would have been published to; "" = none.
    Column("topic", Text, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("device_num_id", BigInteger, nullable=False),
    Column("subfolder", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("received", DateTime(timezone=True), nullable=False),
    # (registry_pk, seq) serves reads per registry, the retention scan and the cascade;
    # (topic, seq) serves a subscriber reading one topic across registries.
    Index("ix_registry_events_registry_seq", "registry_pk", "seq"),
    Index("ix_registry_events_topic_seq", "topic", "seq"),
    sqlite_autoincrement=True,
)

_registries = RegistryRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NewEvent:
    """One telemetry message as the device plane received it."""

    device_id: str
    device_num_id: int
    subfolder: str  # after /devices/{d}/events/, without the leading "/"; "" for none
    data: bytes
    received: datetime  # aware


@dataclass(frozen=True)
class StoredEvent:
    """One stored message, as a consumer of the sink reads it."""

    seq: int  # increasing, never reused: "give me what came after seq N" is exact
    registry: str  # the registry's full name, projects/{p}/locations/{l}/registries/{r}
    topic: str  # the pubsubTopicName it was routed to; "" when no config matched
    kind: str  # KIND_EVENT or KIND_STATE
    device_id: str
    device_num_id: int
    subfolder: str
    data: bytes
    received: datetime  # aware, UTC

    def as_json(self) -> dict[str, Any]:
        """The event as one JSON object, with Cloud IoT's Pub/Sub attribute names
        (``deviceId``, ``deviceNumId``, ``subFolder``) and its payload as ``binaryData``
        (standard base64, as in the registry API). ``deviceNumId`` is a string like every
        int64 in proto3 JSON (a JavaScript number cannot hold it)."""
        return {
            "seq": self.seq,
            "registry": self.registry,
            "topic": self.topic,
            "kind": self.kind,
            "deviceId": self.device_id,
            "deviceNumId": str(self.device_num_id),
            "subFolder": self.subfolder,
            "binaryData": base64.b64encode(self.data).decode("ascii"),
            "received": rfc3339(self.received),
        }


def rfc3339(when: datetime) -> str:
    """``2026-12-01T20:43:47.123456Z``: UTC, microseconds, as Cloud IoT printed times."""
    return utc(when).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short_topic(topic: str) -> str:
    """``projects/p/topics/telemetry`` → ``telemetry`` (what an operator types)."""
    return topic.rsplit("/topics/", 1)[-1]


def route(configs: Sequence[EventNotificationConfig], subfolder: str) -> str:
    """The topic of an event published to ``subfolder``: the first config whose
    ``subfolder_matches`` is "" or equals it exactly (Cloud IoT's rule), else ""."""
    for config in configs:
        if config.subfolder_matches in ("", subfolder):
            return config.topic
    return ""


# --- schema ----------------------------------------------------------------------------------

_ensured: weakref.WeakSet[Engine] = weakref.WeakSet()


def ensure_events_table(engine: Engine) -> None:
    """Create ``registry_events`` if missing (once per engine). ``open_store`` creates it
    with the other registry tables when this module is imported first; this makes the
    writers independent of that order."""
    if engine in _ensured:
        return
    RegistryTable.metadata.create_all(engine, tables=[events_table])
    _ensured.add(engine)


# --- writes ----------------------------------------------------------------------------------


def store_events(
    engine: Engine,
    reg: StoredRegistry,
    events: Sequence[NewEvent],
    *,
    max_events: int = MAX_EVENTS,
    prune_every: int = PRUNE_EVERY,
) -> int:
    """Store telemetry of ``reg``'s devices, each routed to its topic by the registry's
    ``event_notification_configs``; returns how many were stored. All or none: one
    transaction, one ``executemany``."""
    if not events:
        return 0
    ensure_events_table(engine)
    configs = reg.event_notification_configs
    topics: dict[str, str] = {}  # a sync batch repeats few subfolders: route each once
    rows: list[dict[str, Any]] = []
    for e in events:
        topic = topics.get(e.subfolder)
        if topic is None:
            topic = topics[e.subfolder] = route(configs, e.subfolder)
        rows.append(_row(reg, topic, KIND_EVENT, e.device_id, e.device_num_id, e.subfolder, e))
    with engine.begin() as conn:
        conn.execute(insert(events_table), rows)
        _maybe_prune(conn, reg.pk, len(rows), max_events, prune_every)
    return len(rows)


def store_state_notification(
    engine: Engine,
    reg: StoredRegistry,
    device_id: str,
    device_num_id: int,
    data: bytes,
    when: datetime,
    *,
    max_events: int = MAX_EVENTS,
    prune_every: int = PRUNE_EVERY,
) -> None:
    """Keep a state change for the registry's state notification topic; nothing when the
    registry has none (Cloud IoT published state only to a configured topic)."""
    topic = reg.state_notification_topic
    if not topic:
        return
    ensure_events_table(engine)
    row = _row(
        reg,
        topic,
        KIND_STATE,
        device_id,
        device_num_id,
        "",
        NewEvent(device_id, device_num_id, "", data, when),
    )
    with engine.begin() as conn:
        conn.execute(insert(events_table), [row])
        _maybe_prune(conn, reg.pk, 1, max_events, prune_every)


def _row(
    reg: StoredRegistry,
    topic: str,
    kind: str,
    device_id: str,
    device_num_id: int,
    subfolder: str,
    e: NewEvent,
) -> dict[str, Any]:
    return {
        "registry_pk": reg.pk,
        "topic": topic,
        "kind": kind,
        "device_id": device_id,
        "device_num_id": device_num_id,
        "subfolder": subfolder,
        "data": bytes(e.data),
        "received": utc(e.received),
    }


def _maybe_prune(conn: Connection, registry_pk: int, added: int, keep: int, every: int) -> None:
    """Delete the registry's events beyond the newest ``keep``, when this insert took the
    global sequence across a multiple of ``every``.

    Stateless and cheap: ``max(seq)`` is one primary-key lookup, and the exact cut (the
    ``keep``-th newest seq of the registry, an index scan) is paid once per ``every`` rows.
    With one busy registry the bound holds within ``every`` rows; with several, a crossing
    falls on the registry that inserted at that moment, so each registry is checked about
    as often as it writes (the bound holds on average, which is what a disk bound needs).
    """
    last = conn.execute(select(func.max(events_table.c.seq))).scalar_one()
    if last is None or last // every == (last - added) // every:
        return
    cut = conn.execute(
        select(events_table.c.seq)
        .where(events_table.c.registry_pk == registry_pk)
        .order_by(events_table.c.seq.desc())
        .offset(keep)
        .limit(1)
    ).scalar()
    if cut is not None:
        conn.execute(
            delete(events_table).where(
                events_table.c.registry_pk == registry_pk, events_table.c.seq <= cut
            )
        )


# --- reads -----------------------------------------------------------------------------------


def read_events(
    engine: Engine,
    *,
    registry: StoredRegistry | None,
    topic: str | None,
    after: int,
    limit: int,
    device_id: str | None = None,
    newest: bool = False,
) -> list[StoredEvent]:
    """Stored events with ``seq > after``, in seq order, at most ``limit``.

    ``registry`` / ``topic`` / ``device_id`` narrow it (None: any). ``topic`` is a full
    pubsubTopicName, its short name (no "/": matches ``…/topics/<name>`` of any project),
    or "" for the events no config matched. ``newest``: the *last* ``limit`` matching
    events instead of the first (still returned oldest first), what a tail shows first.
    """
    if limit <= 0:
        return []
    t = events_table.c
    cols = [t.seq, t.topic, t.kind, t.device_id, t.device_num_id, t.subfolder, t.data]
    query = select(*cols, t.received)
    if registry is None:
        r = _registries.c
        query = query.add_columns(r.project, r.location, r.registry_id).join(
            _registries, r.pk == t.registry_pk
        )
    else:
        query = query.where(t.registry_pk == registry.pk)
    query = query.where(t.seq > after)
    if topic is not None:
        if topic == "" or "/" in topic:
            query = query.where(t.topic == topic)
        else:
            query = query.where(
                or_(t.topic == topic, t.topic.endswith(f"/topics/{topic}", autoescape=True))
            )
    if device_id is not None:
        query = query.where(t.device_id == device_id)
    query = query.order_by(t.seq.desc() if newest else t.seq).limit(limit)
    with engine.connect() as conn:
        rows = [r._mapping for r in conn.execute(query)]
    if newest:
        rows.reverse()
    return [_event(row, registry) for row in rows]


def _event(row: RowMapping, registry: StoredRegistry | None) -> StoredEvent:
    if registry is not None:
        name = registry.name
    else:
        project, location, registry_id = row["project"], row["location"], row["registry_id"]
        name = f"projects/{project}/locations/{location}/registries/{registry_id}"
    return StoredEvent(
        seq=int(row["seq"]),
        registry=name,
        topic=row["topic"],
        kind=row["kind"],
        device_id=row["device_id"],
        device_num_id=int(row["device_num_id"]),
        subfolder=row["subfolder"],
        data=bytes(row["data"]),
        received=utc(row["received"]),
    )
