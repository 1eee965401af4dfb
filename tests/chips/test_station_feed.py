"""`provisioner station insert|remove|status`: an operator feeds an emulated jig by hand;
each action is audited, refusals are one line, exit non-zero and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from provisioner import socket_state
from provisioner.chips.connector import Connector
from provisioner.db.engine import make_engine
from tests.conftest import make_station, run_cli


def _events(url: str) -> list[tuple[str, int, str]]:
    with make_engine(url).connect() as c:
        return [
            (r[0], r[1], r[2])
            for r in c.execute(
                text("SELECT event_type, socket, chip_serial FROM audit_event ORDER BY seq")
            )
        ]


def test_insert_remove_and_refusals(tmp_path: Path) -> None:
    st = make_station(
        tmp_path / "st",
        sockets=2,
        extra='feed = "manual"\n[stations.hw]\ntransport = "i2c"\nsockets = 1\n',
    )
    env = st.env()
    jig = Connector(st.settings).jig("line1")

    r = run_cli("station", "insert", "--socket", "1", env=env)
    assert r.returncode == 0, r.stderr
    serial = jig.serial_in(1)
    assert serial and f"chip {serial} inserted" in r.stdout
    r = run_cli("station", "remove", "--socket", "1", env=env)
    assert r.returncode == 0 and jig.serial_in(1) is None
    # The same chip goes back, by serial, into the other socket.
    r = run_cli("station", "insert", "--socket", "0", "--serial", serial.lower(), env=env)
    assert r.returncode == 0, r.stderr
    assert jig.serial_in(0) == serial
    done = _events(st.settings.db_url)
    assert done == [
        ("station.chip_inserted", 1, serial),
        ("station.chip_removed", 1, serial),
        ("station.chip_inserted", 0, serial),
    ]

    refusals = [
        (["insert", "--socket", "0"], 5, f"holds chip {serial}: take it out first"),
        (["remove", "--socket", "1"], 5, "socket 1 of line1 is empty"),
        (["insert", "--socket", "2"], 2, "has sockets 0..1"),
        (["insert", "--socket", "1", "--serial", "0123"], 2, "18 hex digits"),
        (["insert", "--socket", "1", "--serial", "0123" + "AB" * 6 + "EE"], 3, "no chip"),
        (["insert", "--station", "hw", "--socket", "0"], 5, "put chips in and take them out"),
        (["remove", "--station", "nope", "--socket", "0"], 3, "unknown station"),
    ]
    for args, code, message in refusals:
        r = run_cli("station", *args, env=env)
        assert r.returncode == code, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _events(st.settings.db_url) == done  # refusals wrote nothing


def test_status_shows_what_each_socket_does(tmp_path: Path) -> None:
    st = make_station(tmp_path / "st", sockets=2)
    engine = make_engine(st.settings.db_url)
    r = run_cli("station", "status", env=st.env())
    assert r.returncode == 0 and "no socket has reported yet" in r.stdout
    socket_state.record(engine, "line1", 1, "insert_chip", device_id=7, detail="insert chip")
    socket_state.record(engine, "line1", 0, "busy", device_id=6, detail="step key_generated")
    rows = json.loads(run_cli("station", "status", "--json", env=st.env()).stdout)
    assert [(x["socket"], x["state"], x["device_id"], x["detail"]) for x in rows] == [
        (0, "busy", 6, "step key_generated"),
        (1, "insert_chip", 7, "insert chip"),
    ]
    assert all(0 <= x["age_s"] < 60 for x in rows)
    table = run_cli("station", "status", "--station", "line1", env=st.env()).stdout
    assert "insert_chip" in table and "insert chip" in table
