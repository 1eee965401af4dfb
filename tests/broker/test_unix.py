"""unix mode (the one-PC line): no TCP at all, the same ACL users over the socket."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from provisioner.broker.acl import line_password
from provisioner.broker.clients import celery_config, station_login
from tests.broker.celery_testapp import make_app
from tests.broker.conftest import Line, Worker


def test_socket_only_in_a_private_directory(unix_line: Line) -> None:
    conf = (unix_line.settings.broker_dir / "redis.conf").read_text()
    assert "port 0\n" in conf
    assert "tls-port" not in conf
    assert f'unixsocket "{unix_line.settings.redis_socket}"' in conf
    sock_dir = unix_line.settings.redis_socket.parent
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700


def test_acl_is_enforced_over_the_socket(unix_line: Line) -> None:
    a = unix_line.enroll("a")
    unix_line.admin().set("line:secret", "x")
    login = station_login(a.settings)
    c = unix_line.client(a.settings, login)
    assert c.lpush("st:a:station.a", "job") == 1
    assert c.brpop(["st:a:station.a"], timeout=1) == (b"st:a:station.a", b"job")
    for key in ("st:b:station.b", "line:secret"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.get(key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.keys("*")
    with pytest.raises(redis.AuthenticationError):
        unix_line.client(a.settings, dataclasses.replace(login, password="wrong")).ping()
    anonymous = redis.Redis(
        unix_socket_path=str(unix_line.settings.redis_socket), retry=Retry(NoBackoff(), 0)
    )
    unix_line.clients.append(anonymous)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_celery_round_trip_over_the_socket(
    unix_line: Line, start_worker: Callable[..., Worker]
) -> None:
    a = unix_line.enroll("a")
    worker = start_worker(a.config, "station", "station.a", "st-a-worker")
    gateway = start_worker(unix_line.config, "line:a", "gateway", "gateway-a")
    app = make_app(a.config, "station")
    try:
        assert app.send_task("brokertest.add", (2, 3), queue="station.a").get(30) == 5
        assert app.send_task("brokertest.add", (4, 5), queue="gateway").get(30) == 9
    finally:
        app.close()
    worker.kill()
    gateway.kill()
    assert unix_line.denials() == []
    sock = unix_line.settings.redis_socket
    log = worker.log.read_text()
    assert f"redis+socket://st-a:**@{sock}" in log
    assert a.password not in log
    assert line_password(unix_line.settings) not in gateway.log.read_text()
    # the results backend takes the login from settings, not from its URL
    conf = celery_config(a.settings, station_login(a.settings), role="station")
    assert conf["result_backend"] == f"redis+socket://{sock}"


def test_the_password_stays_out_of_celerys_dumps(unix_line: Line) -> None:
    from celery.app.utils import bugreport

    a = unix_line.enroll("a")
    app = make_app(a.config, "station")
    try:
        assert "st-a:**@" in app.connection().as_uri()
        assert a.password not in app.conf.humanize(with_defaults=False, censored=True)
        assert a.password not in bugreport(app)
        assert a.password not in repr(station_login(a.settings))
    finally:
        app.close()


def test_the_line_user_administers_users_but_runs_nothing_dangerous(unix_line: Line) -> None:
    admin = unix_line.admin()
    assert admin.set("line:x", "1")
    assert admin.set("st:a:x", "1")  # every namespace (the gateway workers)
    for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("KEYS", "*"), ("ACL", "LOAD")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            admin.execute_command(*command)  # type: ignore[no-untyped-call]
    unix_line.enroll("a")  # ACL SETUSER through the line user
    assert b"st-a" in admin.execute_command("ACL", "USERS")  # type: ignore[no-untyped-call]
