"""``provisioner events ...``: what devices in the field sent, from the built-in cloud's sink.

The built-in registry keeps every telemetry message (and, for a registry with a state
notification topic, every state change) in its own database, routed to the Pub/Sub topic
Cloud IoT would have published it to (:mod:`provisioner.cloud.events`). ``events tail`` is
the subscriber an operator needs to see them: the last few, then (``--follow``) new ones as
they arrive.

It opens the registry's database read-only (SQLite: ``mode=ro``, no transaction held, so
the registry service's writes never wait for it) and never creates it: a tail on a machine
where the registry has never run says so instead of leaving an empty database behind.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import typer
from sqlalchemy import create_engine, inspect, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from provisioner.cli.context import ctx_of
from provisioner.cloud import store
from provisioner.cloud.events import KIND_STATE, StoredEvent, read_events, rfc3339, short_topic
from provisioner.db.engine import make_engine
from provisioner.errors import NotFoundError, ServiceUnavailableError
from provisioner.private_files import check_database, sqlite_files
from provisioner.settings import Settings

app = typer.Typer(
    help="Telemetry and state the built-in cloud received from devices in the field "
    "(its local Pub/Sub sink). Reads the registry's own database: run on the line server, "
    "as the OS user the registry service runs as.",
    no_args_is_help=True,
)

POLL_S = 0.5
# One string per paragraph: the help formatter keeps a docstring's line breaks after the
# first paragraph.
_TAIL_HELP = (
    "Print the registry's stored device events: the last --limit (default 20), or those "
    "after --since; with --follow, then new ones until Ctrl-C."
    "\n\n"
    "Each line: received time (UTC), #seq, device id, 'events', 'events/SUBFOLDER' or "
    "'state', the topic it was routed to ('-' for none) and the payload: as text when it "
    "is printable UTF-8, else 'base64:...', clipped to 200 characters (--json has it whole)."
    "\n\n"
    "Who may run it: the events live in the registry's private database "
    "(registry.database_url, by default <var>/registry.db, mode 0600), so only the OS user "
    "the registry service runs as, on the line server, can read them. No provisioner user "
    "token is needed or checked: device telemetry is the cloud's data, not the line's."
)
PAYLOAD_CLIP = 200
_PAGE = 1000  # rows per read while following (a burst is drained in pages)


@app.command("tail", help=_TAIL_HELP)
def tail(
    ctx: typer.Context,
    registry: str | None = typer.Option(
        None,
        "--registry",
        help="Registry id (default: registry.registry of the config) in registry.project / "
        "registry.location, or a full projects/P/locations/L/registries/R name.",
    ),
    topic: str | None = typer.Option(
        None,
        "--topic",
        help="Only events routed to this topic: a pubsubTopicName "
        "(projects/P/topics/T) or its short name T. '' shows the events no "
        "eventNotificationConfig matched (Cloud IoT dropped those; the sink keeps them).",
    ),
    device: str | None = typer.Option(None, "--device", help="Only this device id."),
    since: int | None = typer.Option(
        None,
        "--since",
        min=0,
        help="Start after this sequence number (the #N column, or 'seq' in --json) and "
        "print the oldest first, instead of the last --limit events.",
    ),
    limit: int = typer.Option(
        20, "--limit", "-n", min=0, help="How many events to print first (0: none)."
    ),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help=f"Then keep printing new events as they arrive (polls every {POLL_S} s) until Ctrl-C.",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="One JSON object per line: seq, registry, topic, kind, deviceId, deviceNumId, "
        "subFolder, binaryData (base64), received (RFC 3339 UTC).",
    ),
) -> None:
    """Print stored device events (the help text is ``_TAIL_HELP``)."""
    settings = ctx_of(ctx).settings
    try:
        db = _RegistryDb.open(settings)
        try:
            reg = _registry(db, settings, registry)
            _tail(db, reg, topic, device, since, limit, follow, as_json)
        finally:
            db.engine.dispose()
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a --follow ends: exit 0, no traceback
    except BrokenPipeError:
        # `events tail | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _tail(
    db: _RegistryDb,
    reg: store.StoredRegistry,
    topic: str | None,
    device: str | None,
    since: int | None,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    def read(after: int, n: int, newest: bool = False) -> list[StoredEvent]:
        if not db.has_events_table():
            return []  # a registry that never stored an event (or predates the sink)
        try:
            return read_events(
                db.engine,
                registry=reg,
                topic=topic,
                after=after,
                limit=n,
                device_id=device,
                newest=newest,
            )
        except SQLAlchemyError as exc:
            raise db.unreadable(exc) from None

    def show(events: list[StoredEvent]) -> None:
        for e in events:
            typer.echo(json.dumps(e.as_json()) if as_json else human(e))

    if since is None:
        # The newest one is read even for --limit 0: --follow continues after it.
        first = read(0, max(limit, 1), newest=True)
        cursor = first[-1].seq if first else 0
        show(first[len(first) - limit :] if limit else [])
    else:
        first = read(since, limit)
        cursor = first[-1].seq if first else since
        show(first)
    while follow:
        batch = read(cursor, _PAGE)
        show(batch)
        if batch:
            cursor = batch[-1].seq
        if len(batch) < _PAGE:
            time.sleep(POLL_S)


def human(e: StoredEvent) -> str:
    """One line for a terminal. Everything a device chose (subfolder, payload) is shown
    escaped or base64, never raw: a payload must not be able to drive the terminal."""
    if e.kind == KIND_STATE:
        where = "state"
    else:
        where = "events" + (f"/{e.subfolder}" if e.subfolder else "")
    topic = short_topic(e.topic) if e.topic else "-"
    received = rfc3339(e.received)[:-4] + "Z"  # milliseconds are enough to read
    return (
        f"{received}  #{e.seq}  {_safe(e.device_id)}  {_safe(where)}  {_safe(topic)}  "
        f"{payload(e.data)}"
    )


def payload(data: bytes) -> str:
    """The payload as text when it is printable UTF-8, else ``base64:…``; clipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
        printable = False
    else:
        printable = text.isprintable()
    if not data:
        shown = "(empty)"
    elif printable:
        shown = text
    else:
        shown = "base64:" + base64.b64encode(data).decode("ascii")
    return shown if len(shown) <= PAYLOAD_CLIP else shown[: PAYLOAD_CLIP - 1] + "…"


def _safe(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# --- the registry database -------------------------------------------------------------------


@dataclass
class _RegistryDb:
    """The registry's database, opened read-only, and how to name it in an error."""

    engine: Engine
    where: str
    _has_events: bool = False

    @classmethod
    def open(cls, settings: Settings) -> _RegistryDb:
        """SQLite: refused when missing (opening would create it empty) or readable by
        others (as every start refuses it)."""
        url = settings.registry_db_url
        files = sqlite_files(url)
        if not files:
            return cls(make_engine(url), make_url(url).render_as_string(hide_password=True))
        path = files[0]
        if not path.is_file():
            raise NotFoundError(
                f"no registry database at {path}: the built-in registry has not run with "
                "this configuration (registry.database_url / var_dir). Run this on the line "
                "server, with the config the registry service uses (--config / "
                "$PROVISIONER_CONFIG)"
            )
        check_database(url, settings.var)
        return cls(create_engine("sqlite://", creator=lambda: _sqlite_read_only(path)), str(path))

    def has_events_table(self) -> bool:
        """Whether the sink's table exists yet (it appears when the registry first runs
        this version; until then there is nothing to show, not an error)."""
        if not self._has_events:
            try:
                self._has_events = inspect(self.engine).has_table("registry_events")
            except SQLAlchemyError as exc:
                raise self.unreadable(exc) from None
        return self._has_events

    def unreadable(self, exc: SQLAlchemyError) -> ServiceUnavailableError:
        detail = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0][:200]
        return ServiceUnavailableError(
            f"cannot read the registry database {self.where}: {detail} (registry.database_url)"
        )


def _sqlite_read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: never writes, never creates. The legacy isolation level opens no
    # transaction for a SELECT, so nothing is held between polls; WAL (set by the
    # registry) lets the registry's writes go on meanwhile.
    return sqlite3.connect(
        f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30, check_same_thread=False
    )


def _registry(db: _RegistryDb, settings: Settings, ident: str | None) -> store.StoredRegistry:
    project, location = settings.registry.project, settings.registry.location
    registry_id = ident or settings.registry.registry
    parts = registry_id.split("/")
    if len(parts) == 6 and parts[0::2] == ["projects", "locations", "registries"]:
        project, location, registry_id = parts[1], parts[3], parts[5]
    try:
        found = store.get_registry(db.engine, project, location, registry_id)
        if found is not None:
            return found
        known, more = store.list_registries(db.engine, project, location, None, 10)
    except SQLAlchemyError as exc:
        raise db.unreadable(exc) from None
    where = f"projects/{project}/locations/{location}"
    there = (
        "it has " + ", ".join(r.registry_id for r in known) + (", …" if more else "")
        if known
        else "it has none"
    )
    raise NotFoundError(f"no registry {registry_id!r} in {where} (--registry ID): {there}")
