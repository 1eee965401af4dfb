"""The event store (the built-in cloud's local Pub/Sub sink) and ``provisioner events tail``:
Cloud IoT's routing by subfolder, state notifications, seq order, the retention bound, bulk
inserts that are all or nothing, and the command an operator reads them with."""

from __future__ import annotations

import base64
import json
import os
import select as io_select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from typer.testing import CliRunner, Result

from provisioner.cli import events as events_cli
from provisioner.cli import main as cli_main
from provisioner.cloud import store
from provisioner.cloud.events import (
    KIND_EVENT,
    KIND_STATE,
    NewEvent,
    StoredEvent,
    ensure_events_table,
    events_table,
    read_events,
    store_events,
    store_state_notification,
)
from provisioner.cloud.store import EventNotificationConfig, StoredRegistry
from provisioner.errors import NotFoundError
from tests.conftest import Station, make_station

T_ALARMS = "projects/p/topics/alarms"
T_TEMP = "projects/p/topics/temperature"
T_ALL = "projects/other/topics/everything"
T_STATE = "projects/p/topics/state"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def ev(
    subfolder: str = "", data: bytes = b"x", device: str = "dev-1", num: int = 10**15
) -> NewEvent:
    return NewEvent(device, num, subfolder, data, NOW)


def count(engine: Engine, reg: StoredRegistry | None = None) -> int:
    query = select(func.count()).select_from(events_table)
    if reg is not None:
        query = query.where(events_table.c.registry_pk == reg.pk)
    with engine.connect() as c:
        return int(c.execute(query).scalar_one())


def read_all(engine: Engine, reg: StoredRegistry | None = None, **kw: object) -> list[StoredEvent]:
    args: dict[str, object] = {"registry": reg, "topic": None, "after": 0, "limit": 100_000}
    args.update(kw)
    return read_events(engine, **args)  # type: ignore[arg-type]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = store.open_store(f"sqlite:///{tmp_path / 'registry.db'}")
    yield e
    e.dispose()


@pytest.fixture
def reg(engine: Engine) -> StoredRegistry:
    return store.ensure_registry(engine, "p", "l", "r")


# --- routing -----------------------------------------------------------------------------------


def test_the_first_matching_config_decides_the_topic_and_empty_matches_all(
    engine: Engine, reg: StoredRegistry
) -> None:
    routed = replace(
        reg,
        event_notification_configs=(
            EventNotificationConfig("alarms", T_ALARMS),
            EventNotificationConfig("temp", T_TEMP),
            EventNotificationConfig("temp", "projects/p/topics/never"),  # a later duplicate
            EventNotificationConfig("", T_ALL),
        ),
    )
    subfolders = ["temp", "alarms", "other", "", "temp/inside", "alarmsx"]
    assert store_events(engine, routed, [ev(s) for s in subfolders]) == 6
    got = [(e.subfolder, e.topic, e.kind) for e in read_all(engine, reg)]
    assert got == [
        ("temp", T_TEMP, KIND_EVENT),
        ("alarms", T_ALARMS, KIND_EVENT),
        ("other", T_ALL, KIND_EVENT),  # the catch-all
        ("", T_ALL, KIND_EVENT),
        ("temp/inside", T_ALL, KIND_EVENT),  # exact match only, not a prefix
        ("alarmsx", T_ALL, KIND_EVENT),
    ]


def test_an_event_no_config_matches_is_kept_without_a_topic(
    engine: Engine, reg: StoredRegistry
) -> None:
    # Cloud IoT dropped these; the sink keeps them with topic "" for an operator to see.
    only_temp = replace(reg, event_notification_configs=(EventNotificationConfig("temp", T_TEMP),))
    store_events(engine, only_temp, [ev("temp"), ev("other"), ev("")])
    store_events(engine, reg, [ev("temp")])  # no configs at all
    assert [(e.subfolder, e.topic) for e in read_all(engine, reg)] == [
        ("temp", T_TEMP),
        ("other", ""),
        ("", ""),
        ("temp", ""),
    ]
    assert [e.subfolder for e in read_all(engine, reg, topic="")] == ["other", "", "temp"]


def test_state_goes_to_the_state_topic_only_when_the_registry_has_one(
    engine: Engine, reg: StoredRegistry
) -> None:
    store_state_notification(engine, reg, "dev-1", 7, b"off", NOW)
    assert count(engine) == 0
    with_topic = replace(
        reg,
        state_notification_topic=T_STATE,
        event_notification_configs=(EventNotificationConfig("", T_ALL),),
    )
    store_state_notification(engine, with_topic, "dev-1", 7, b"on", NOW)
    [state] = read_all(engine, reg)
    assert (state.kind, state.topic, state.subfolder, state.data) == (
        KIND_STATE,
        T_STATE,
        "",
        b"on",
    )
    assert (state.device_id, state.device_num_id, state.received) == ("dev-1", 7, NOW)


# --- reading back ------------------------------------------------------------------------------


def test_events_come_back_in_seq_order_filtered_by_registry_topic_and_device(
    engine: Engine, reg: StoredRegistry
) -> None:
    other = store.ensure_registry(engine, "p", "l", "other")
    routed = replace(
        reg,
        event_notification_configs=(
            EventNotificationConfig("temp", T_TEMP),
            EventNotificationConfig("", T_ALL),
        ),
    )
    store_events(engine, routed, [ev("temp", b"1"), ev("x", b"2", device="dev-2")])
    store_events(engine, other, [ev("temp", b"3")])
    store_events(engine, routed, [ev("temp", b"4"), ev("temp", b"5", device="dev-2")])

    everything = read_all(engine)
    seqs = [e.seq for e in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [e.data for e in everything] == [b"1", b"2", b"3", b"4", b"5"]
    assert [e.registry for e in everything].count(other.name) == 1
    assert {e.registry for e in read_all(engine, reg)} == {reg.name}
    mine = read_all(engine, reg)
    assert [e.data for e in mine] == [b"1", b"2", b"4", b"5"]
    # after / limit: a reader resumes exactly where it left off
    assert [e.data for e in read_all(engine, reg, after=mine[1].seq, limit=1)] == [b"4"]
    # newest: the last N, oldest first
    assert [e.data for e in read_all(engine, reg, limit=2, newest=True)] == [b"4", b"5"]
    # topic by full name, by short name (any project), and across registries
    assert [e.data for e in read_all(engine, topic=T_TEMP)] == [b"1", b"4", b"5"]
    assert [e.data for e in read_all(engine, reg, topic="everything")] == [b"2"]
    assert read_all(engine, reg, topic="projects/p/topics/everything") == []
    assert read_all(engine, reg, topic="every%") == []  # a short name is not a pattern
    assert [e.data for e in read_all(engine, reg, device_id="dev-2")] == [b"2", b"5"]
    assert read_all(engine, reg, limit=0) == []
    assert mine[0].received == NOW and mine[0].received.tzinfo is not None


def test_deleting_a_registry_deletes_its_events(engine: Engine) -> None:
    gone = store.ensure_registry(engine, "p", "l", "gone")
    store_events(engine, gone, [ev("a"), ev("b")])
    assert store.delete_registry(engine, gone)
    assert count(engine) == 0


# --- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_newest_events_of_each_registry(
    engine: Engine, reg: StoredRegistry
) -> None:
    other = store.ensure_registry(engine, "p", "l", "other")
    store_events(engine, other, [ev("keep")] * 3)
    for i in range(23):
        store_events(engine, reg, [ev(data=str(i).encode())], max_events=10, prune_every=5)
    # Checked when the global seq crosses a multiple of 5: at most 10 + 4 between checks.
    kept = read_all(engine, reg)
    assert 10 <= len(kept) <= 14
    assert [e.data for e in kept] == [str(i).encode() for i in range(23 - len(kept), 23)]
    assert count(engine, other) == 3  # another registry's events are not touched
    # a batch larger than the bound is cut to the bound in the same call
    store_events(engine, reg, [ev(data=b"big")] * 40, max_events=10, prune_every=5)
    assert count(engine, reg) == 10


# --- bulk inserts ------------------------------------------------------------------------------


def test_five_thousand_events_are_one_transaction_all_or_none(db_url: str) -> None:
    engine = store.open_store(db_url)
    try:
        reg = store.ensure_registry(engine, "p", "l", "bulk")
        ensure_events_table(engine)  # once per engine; not part of what is counted
        commits: list[str] = []
        sa_event.listen(engine, "commit", lambda conn: commits.append("commit"))
        batch = [ev("t", i.to_bytes(4, "big"), num=10**15 + i) for i in range(5000)]
        t0 = time.monotonic()
        assert store_events(engine, reg, batch) == 5000
        assert time.monotonic() - t0 < 5
        assert commits == ["commit"]
        got = read_all(engine, reg)
        assert [e.data for e in got] == [e.data for e in batch]
        assert got[-1].seq - got[0].seq == 4999

        # The 5,000th row fails in the database (a numId beyond BIGINT) after the others
        # went in: the transaction rolls them back.
        bad = [*batch[:4999], ev("t", b"bad", num=2**64)]
        with pytest.raises((SQLAlchemyError, OverflowError)):
            store_events(engine, reg, bad)
        assert count(engine, reg) == 5000
        # and the sequence goes on after the failure
        store_events(engine, reg, [ev("t", b"next")])
        assert read_all(engine, reg, limit=1, newest=True)[0].seq > got[-1].seq
    finally:
        engine.dispose()


# --- provisioner events tail -------------------------------------------------------------------


@pytest.fixture
def line(tmp_path: Path) -> tuple[Station, Engine, StoredRegistry]:
    """A station config whose registry database holds the configured registry."""
    st = make_station(tmp_path / "station")
    engine = store.open_store(st.settings.registry_db_url)
    cfg = st.settings.registry
    reg = store.ensure_registry(engine, cfg.project, cfg.location, cfg.registry)
    routed = replace(reg, event_notification_configs=(EventNotificationConfig("temp", T_TEMP),))
    store_events(
        engine,
        routed,
        [ev("temp", b'{"t": 21.5}'), ev("raw", b"\x00\x01\xff", device="dev-2")]
        + [ev("temp", f"n={i}".encode()) for i in range(30)]
        + [ev("bad\x1b[31m", b"\x1b]0;pwned\x07"), ev("temp", b"A" * 500), ev("temp", b"")],
    )
    return st, engine, reg


def tail(st: Station, *args: str) -> Result:
    """``provisioner events tail ARGS`` in this process (the root callback reads --config)."""
    root = typer.Typer()
    root.callback()(cli_main._root)
    root.add_typer(events_cli.app, name="events")
    return CliRunner().invoke(root, ["--config", str(st.config), "events", "tail", *args])


# The real entry point in a child process (errors through main(), signals). Registers the
# events app itself when provisioner.cli.main does not (yet).
_MAIN = (
    "from provisioner.cli import events, main\n"
    "if 'events' not in {g.name for g in main.app.registered_groups}:\n"
    "    main.app.add_typer(events.app, name='events')\n"
    "main.main()\n"
)


def tail_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", _MAIN, "events", "tail", *args]


def test_tail_prints_the_last_events_one_line_each(
    line: tuple[Station, Engine, StoredRegistry],
) -> None:
    st, _, _ = line
    r = tail(st, "--limit", "5")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 5
    assert lines[0].endswith("events/temp  temperature  n=28")
    assert lines[1].endswith("n=29")
    # a subfolder with control characters is escaped, a binary payload base64
    assert "\x1b" not in r.output and "events/bad\\x1b[31m  -  base64:" in lines[2]
    assert len(lines[3].split("  ")[-1]) == 200 and lines[3].endswith("A…")
    assert lines[4].endswith("(empty)")
    assert lines[0].startswith("2026-12-01T12:00:00.000Z  #")


def test_tail_json_since_topic_and_device(line: tuple[Station, Engine, StoredRegistry]) -> None:
    st, _, reg = line
    r = tail(st, "--json", "--limit", "2", "--device", "dev-2")
    assert r.exit_code == 0, r.output
    [only] = [json.loads(x) for x in r.output.splitlines()]
    assert only == {
        "seq": only["seq"],
        "registry": reg.name,
        "topic": "",
        "kind": "event",
        "deviceId": "dev-2",
        "deviceNumId": str(10**15),
        "subFolder": "raw",
        "binaryData": base64.b64encode(b"\x00\x01\xff").decode(),
        "received": "2026-12-01T12:00:00.000000Z",
    }
    r = tail(st, "--json", "--since", str(only["seq"]), "--limit", "3", "--topic", "temperature")
    got = [json.loads(x) for x in r.output.splitlines()]
    assert [base64.b64decode(g["binaryData"]) for g in got] == [b"n=0", b"n=1", b"n=2"]
    assert {g["topic"] for g in got} == {T_TEMP}
    r = tail(st, "--json", "--topic", T_TEMP, "--limit", "1")
    assert base64.b64decode(json.loads(r.output)["binaryData"]) == b""
    r = tail(st, "--json", "--topic", "", "--limit", "50")
    assert [json.loads(x)["subFolder"] for x in r.output.splitlines()] == ["raw", "bad\x1b[31m"]


def test_tail_errors_name_the_registry_and_the_database(
    line: tuple[Station, Engine, StoredRegistry], tmp_path: Path
) -> None:
    st, _, _ = line
    r = tail(st, "--registry", "nope")
    assert isinstance(r.exception, NotFoundError)
    assert "no registry 'nope' in projects/factory/locations/local" in str(r.exception)
    assert "it has devices" in str(r.exception)
    # a full registry name is accepted
    r = tail(st, "--registry", "projects/factory/locations/local/registries/devices", "-n", "1")
    assert r.exit_code == 0 and r.output.endswith("(empty)\n")

    empty = make_station(tmp_path / "fresh")
    r = tail(empty)
    assert isinstance(r.exception, NotFoundError)
    assert "no registry database at" in str(r.exception)
    assert not Path(empty.settings.registry_db_url.removeprefix("sqlite:///")).exists()

    # Through the real entry point: one line on stderr, no traceback.
    done = subprocess.run(
        tail_argv("--registry", "nope"),
        env=st.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stderr.startswith("error: no registry 'nope'") and "Traceback" not in done.stderr


def test_tail_follow_prints_new_events_until_ctrl_c(
    line: tuple[Station, Engine, StoredRegistry],
) -> None:
    st, engine, reg = line
    proc = subprocess.Popen(
        tail_argv("--follow", "--json", "--limit", "1"),
        env=st.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()

        def next_payload(timeout: float) -> bytes:
            """The next JSON line's payload (read unbuffered: a buffered readline could
            hold a line that select() then waits for in vain)."""
            deadline = time.monotonic() + timeout
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                ready, _, _ = io_select.select([fd], [], [], max(left, 0))
                assert ready, f"no output from events tail --follow in {timeout} s"
                chunk = os.read(fd, 65536)
                assert chunk, "events tail --follow ended"
                buf.extend(chunk)
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            return base64.b64decode(json.loads(line)["binaryData"])

        assert next_payload(30) == b""  # the last stored event
        later = NOW + timedelta(seconds=1)
        store_events(engine, reg, [NewEvent("dev-3", 5, "live", b"one", later)])
        store_events(engine, reg, [NewEvent("dev-3", 5, "live", b"two", later)])
        assert [next_payload(10), next_payload(10)] == [b"one", b"two"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and out == b""
