"""tls mode: who may connect to the line's Redis at all, and what a station may touch."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from provisioner.broker.clients import redis_client, station_login
from tests.broker.conftest import Line
from tests.broker.pki import ThrowawayCa
from tests.conftest import free_port


def _raw(line: Line, **kwargs: object) -> redis.Redis:
    """A client built by hand (what an attacker on the network could try)."""
    c = redis.Redis(
        host="127.0.0.1",
        port=line.port,
        socket_timeout=3,
        retry=Retry(NoBackoff(), 0),
        **kwargs,  # type: ignore[arg-type]
    )
    line.clients.append(c)
    return c


def test_redis_conf_is_tls_only(tls_line: Line) -> None:
    conf = (tls_line.settings.broker_dir / "redis.conf").read_text()
    assert "port 0\n" in conf
    assert f"tls-port {tls_line.port}\n" in conf
    assert "tls-auth-clients yes\n" in conf
    assert "unixsocket" not in conf
    for name in ("redis.conf", "users.acl", "line.password"):
        mode = (tls_line.settings.broker_dir / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, name


def test_plain_tcp_is_refused(tls_line: Line) -> None:
    st = tls_line.enroll("a")
    with pytest.raises(redis.ConnectionError):
        _raw(tls_line, username="st-a", password=st.password).ping()


def _tls(line: Line, identity: Path, **kwargs: object) -> redis.Redis:
    """A TLS client presenting ``identity``'s station certificate (if it has one)."""
    files: dict[str, object] = {
        "ssl_ca_certs": str(line.settings.line_identity_dir / "ca-chain.pem")
    }
    if (identity / "station.crt").exists():
        files |= {
            "ssl_certfile": str(identity / "station.crt"),
            "ssl_keyfile": str(identity / "station.key"),
        }
    return _raw(line, ssl=True, ssl_cert_reqs="required", **files, **kwargs)


def test_tls_without_a_client_certificate_is_refused(tls_line: Line, tmp_path: Path) -> None:
    st = tls_line.enroll("a")
    with pytest.raises(redis.ConnectionError):
        _tls(tls_line, tmp_path / "none", username="st-a", password=st.password).ping()
    identity = st.settings.station_identity_dir
    assert _tls(tls_line, identity, username="st-a", password=st.password).ping()


def test_client_certificate_from_another_ca_is_refused(tls_line: Line) -> None:
    st = tls_line.enroll("a")
    rogue = st.root / "rogue"
    ThrowawayCa("Rogue").issue(rogue, "station", "a", server=False)
    with pytest.raises(redis.ConnectionError):
        _tls(tls_line, rogue, username="st-a", password=st.password).ping()


def test_station_refuses_a_server_outside_its_pinned_chain(tls_line: Line) -> None:
    """A station pointed at an impostor broker: its pinned chain does not verify it."""
    st = tls_line.enroll("a")
    identity = st.settings.station_identity_dir
    (identity / "ca-chain.pem").write_bytes(ThrowawayCa("Other").chain_pem())
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(st.settings, station_login(st.settings), retries=0).ping()


def test_wrong_password_default_user_and_other_station_user_are_refused(
    tls_line: Line,
) -> None:
    a = tls_line.enroll("a")
    b = tls_line.enroll("b")
    login_b = station_login(b.settings)
    for login in (
        dataclasses.replace(login_b, password="not-the-password"),
        dataclasses.replace(login_b, user="st-a"),  # b's password is not a's
        dataclasses.replace(login_b, user="line"),
    ):
        with pytest.raises(redis.AuthenticationError):
            tls_line.client(b.settings, login, role="station").ping()
    anonymous = _tls(tls_line, b.settings.station_identity_dir)  # the default user: off
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        _tls(tls_line, b.settings.station_identity_dir, password=b.password).ping()
    assert tls_line.client(a.settings, station_login(a.settings)).ping()


def test_station_reaches_its_namespace_and_nothing_else(tls_line: Line) -> None:
    a = tls_line.enroll("a")
    tls_line.enroll("b")
    admin = tls_line.admin()
    admin.lpush("st:b:station.b", "for b")
    admin.set("line:secret", "line only")
    c = tls_line.client(a.settings, station_login(a.settings))

    c.lpush("st:a:station.a", "job")
    assert c.brpop(["st:a:station.a"], timeout=1) == (b"st:a:station.a", b"job")
    assert c.publish("st:a:some-channel", "x") == 0

    refused = [
        ("LPUSH", "st:b:station.b", "forged"),
        ("BRPOP", "st:b:station.b", "1"),
        ("GET", "line:secret"),
        ("DEL", "line:secret"),
        ("LPUSH", "line:hsm", "forged"),
        ("PUBLISH", "st:b:/0.celery.pidbox", "x"),
        ("PUBLISH", "line:/0.celery.pidbox", "x"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "save", "60 1"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "st-a", "~*"),
        ("ACL", "LOAD"),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "USER", "st-b"),
        ("CLIENT", "PAUSE", "1000"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "line:secret"),
        ("EVAL", "return 1", "0"),
        ("MONITOR",),
        ("SHUTDOWN",),
        ("INFO",),
        ("SELECT", "1"),
    ]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.execute_command(*command)  # type: ignore[no-untyped-call]
    # a script the station loaded runs with the station's ACL, not the server's
    sha = c.script_load("return redis.call('GET', KEYS[1])")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.evalsha(sha, 1, "line:secret")
    with pytest.raises(redis.ResponseError, match=r"can't access"):
        c.evalsha(c.script_load("return redis.call('GET', 'line:secret')"), 0)
    assert admin.get("line:secret") == b"line only"
    assert admin.llen("st:b:station.b") == 1
    denied = {(e["username"], e["object"]) for e in tls_line.denials()}
    assert ("st-a", "flushall") in denied


def test_station_pattern_subscriptions_only_its_own(tls_line: Line) -> None:
    """Celery's fanouts are pattern subscriptions: the exact ones are granted, a wider or
    another namespace's pattern is not."""
    a = tls_line.enroll("a")
    c = tls_line.client(a.settings, station_login(a.settings))
    for allowed in ("st:a:/0.celery.pidbox", "st:a:/0.celeryev/worker.*"):
        p = c.pubsub()  # type: ignore[no-untyped-call]
        p.psubscribe(allowed)
        assert p.get_message(timeout=1)["type"] == "psubscribe"
        p.close()
    for pattern in ("*", "st:*", "st:b:/0.celery.pidbox", "line:/0.celery.pidbox"):
        p = c.pubsub()  # type: ignore[no-untyped-call]
        with pytest.raises(redis.exceptions.NoPermissionError):
            p.psubscribe(pattern)
            p.get_message(timeout=1)
        p.close()


def test_tls_settings_check_the_server_name(tls_line: Line) -> None:
    from provisioner.broker.clients import celery_config

    a = tls_line.enroll("a")
    conf = celery_config(a.settings, station_login(a.settings), role="station")
    for key in ("broker_use_ssl", "redis_backend_use_ssl"):
        assert conf[key]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert conf[key]["ssl_check_hostname"] is True
        assert conf[key]["ssl_certfile"].endswith("station.crt")
    assert conf["broker_url"] == f"rediss://127.0.0.1:{tls_line.port}/0"
    assert a.password not in conf["broker_url"] + conf["result_backend"]


def _impostor_conf(tmp_path: Path, port: int, identity: Path, stem: str) -> Path:
    conf = tmp_path / f"impostor-{stem}.conf"
    conf.write_text(
        f'port 0\ntls-port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\n'
        f'dir "{tmp_path}"\ntls-cert-file "{identity / f"{stem}.crt"}"\n'
        f'tls-key-file "{identity / f"{stem}.key"}"\n'
        f'tls-ca-cert-file "{identity / "ca-chain.pem"}"\ntls-auth-clients no\n'
    )
    return conf


@pytest.mark.parametrize(
    ("stem", "why"),
    [
        ("server", "IP address mismatch"),  # a server certificate for another name
        ("station", "unsuitable certificate purpose"),  # station b's own certificate
    ],
)
def test_station_refuses_an_impostor_with_a_certificate_from_the_same_ca(
    tls_line: Line, tmp_path: Path, stem: str, why: str
) -> None:
    """A rogue Redis with a certificate from the line's own CA, but not the line's:
    station a, pinned to the line's chain and ``broker.host``, refuses it."""
    a = tls_line.enroll("a")
    b = tls_line.enroll("b")
    identity = b.settings.station_identity_dir
    tls_line.ca.issue(identity, "server", "impostor", server=True, names=("impostor.example",))
    port = free_port()
    conf = _impostor_conf(tmp_path, port, identity, stem)
    impostor = subprocess.Popen(
        ["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        settings = a.settings.model_copy(
            update={"broker": a.settings.broker.model_copy(update={"port": port})}
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        with pytest.raises(redis.ConnectionError, match=why):
            redis_client(settings, station_login(a.settings), retries=0).ping()
    finally:
        impostor.terminate()
        impostor.wait(10)
