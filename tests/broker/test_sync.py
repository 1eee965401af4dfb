"""sync_acl: the broker's users follow the database (enrollment sets a station's password
hash, revocation clears it), and a station that lost its user is cut off at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from provisioner.broker.acl import acl_rules, sha256_hex, station_rule, sync_acl
from provisioner.broker.clients import station_login
from provisioner.broker.config import write_redis_conf
from provisioner.errors import ConfigError
from tests.broker.conftest import Line, make_line


def test_enroll_then_revoke_cuts_the_station_off(unix_line: Line) -> None:
    a = unix_line.enroll("a")  # sets the hash on the Station row, then sync_acl
    b = unix_line.enroll("b")
    conn_a = unix_line.client(a.settings, station_login(a.settings))
    conn_b = unix_line.client(b.settings, station_login(b.settings))
    assert conn_a.lpush("st:a:station.a", "x") == 1
    assert conn_b.ping()

    unix_line.set_station_hash("a", None)  # revoked
    sync_acl(unix_line.settings, unix_line.engine)

    assert "st-a" not in (unix_line.settings.broker_dir / "users.acl").read_text()
    # a's open connection is gone (the client's reconnect then fails its login) ...
    with pytest.raises(redis.ConnectionError):
        conn_a.lpush("st:a:station.a", "y")
    with pytest.raises(redis.AuthenticationError):
        unix_line.client(a.settings, station_login(a.settings)).ping()
    # ... and b's is the same connection as before: untouched
    admin = unix_line.admin()
    before = admin.info("stats")["total_connections_received"]
    assert conn_b.ping()
    assert admin.info("stats")["total_connections_received"] == before


def test_a_new_password_closes_the_old_ones_connections(unix_line: Line) -> None:
    a = unix_line.enroll("a")
    old = unix_line.client(a.settings, station_login(a.settings))
    assert old.ping()
    again = unix_line.enroll("a")  # enrolled again (--force): a new password
    with pytest.raises(redis.ConnectionError):
        old.ping()
    assert unix_line.client(again.settings, station_login(again.settings)).ping()
    assert [e["reason"] for e in unix_line.denials()] == ["auth"]  # the old password


def test_sync_with_the_broker_down_writes_the_file_for_its_next_start(tmp_path: Path) -> None:
    line = make_line(tmp_path / "line", "unix")
    try:
        a = line.enroll("a")  # the broker is not running: no error
        acl_file = line.settings.broker_dir / "users.acl"
        assert stat.S_IMODE(acl_file.stat().st_mode) == 0o600
        text = acl_file.read_text()
        assert f"#{sha256_hex(a.password)}" in text
        assert a.password not in text
        line.start()
        assert line.client(a.settings, station_login(a.settings)).ping()
        # a restart keeps the stations (write_redis_conf rewrites users.acl)
        write_redis_conf(line.settings)
        assert f"#{sha256_hex(a.password)}" in acl_file.read_text()
    finally:
        line.stop()
        line.engine.dispose()


def test_acl_rules_refuse_what_would_widen_a_rule() -> None:
    good = sha256_hex("pw")
    rules = acl_rules({"a": good}, line_password_sha256=sha256_hex("line"))
    assert rules.splitlines()[0] == "user default reset off"
    assert rules.splitlines()[2] == station_rule("a", good)
    for bad_id in ("a b", "a*", "st:a", "", "a\nuser x on nopass ~* +@all"):
        with pytest.raises(ConfigError):
            station_rule(bad_id, good)
    for bad_hash in ("", "nopass", good.upper(), good + " ~*", ">password"):
        with pytest.raises(ConfigError):
            station_rule("a", bad_hash)
