"""The broker's ACL users: who may touch which keys and channels of the line's Redis.

``users.acl`` (0600, loaded by redis-server when it starts) holds three kinds of users:

- ``default`` is off: nobody gets anything without a user name and password.
- ``line`` (the line server) reaches every key and channel and may run every command but
  the dangerous ones (CONFIG, FLUSHALL, KEYS, DEBUG, MONITOR, SHUTDOWN, CLIENT LIST ...),
  except what it needs to administer the stations' users live (``ACL USERS/GETUSER/
  SETUSER/DELUSER``, ``CLIENT KILL``), ``ACL LOG`` (what a station was refused) and
  ``INFO``. Managing users is no escalation: the line server writes this file anyway.
- ``st-S``, one per enrolled station, reaches only its own namespace ``st:S:*`` (keys and
  pub/sub channels) with exactly the commands kombu 5.7 and Celery's Redis result backend
  send, derived with INFO commandstats and ``ACL LOG`` against a real worker and client
  (tests/broker). Remote control works inside the namespace: Celery's pidbox and event
  fanouts are *pattern* subscriptions, which Redis allows only when the pattern equals an
  ACL channel pattern (``&st:S:*`` does not cover ``PSUBSCRIBE st:S:/0.celery.pidbox``),
  so those exact patterns are granted too. After a kombu upgrade, re-derive the list
  (tests/broker fail with the denied command in ``ACL LOG``).

Changes reach a running broker with ``ACL SETUSER``/``ACL DELUSER``, not ``ACL LOAD``:
Redis 7.0's ACL LOAD drops the connection of *every* user (measured on 7.0.15), so each
enrollment would disconnect every station and line worker.

Passwords appear only as ``#<sha256>``: the line server never keeps a station's password,
and the file does not hold the line's either.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.broker.files import create_private_once, private_dir, write_private
from provisioner.broker.names import LINE_USER, check_station_id, station_namespace, station_user
from provisioner.db.models import Station
from provisioner.errors import ConfigError, ServiceUnavailableError
from provisioner.settings import Settings

log = logging.getLogger("provisioner.broker")

ACL_FILE = "users.acl"
LINE_PASSWORD_FILE = "line.password"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# What the line server may run beyond ``+@all -@dangerous``: manage the stations' users
# live, cut off a revoked station's connections, read the denials, INFO (a health probe).
LINE_ADMIN_COMMANDS = (
    "acl|users",
    "acl|getuser",
    "acl|setuser",
    "acl|deluser",
    "acl|log",
    "client|kill",
    "info",
)

# Every command a station's Celery worker and client send (kombu 5.7's Redis transport and
# Celery's Redis result backend over redis-py 8), from INFO commandstats and ACL LOG against
# a real worker and client (tests/broker), plus what kombu's rarer paths call (the
# visibility-timeout restore's lock and ZRANGE, the synchronous RPOP, queue expiry, the
# binding sweep script's EXISTS: commands inside Lua scripts are checked against the ACL
# too). Nothing else: no KEYS or SCAN, no CONFIG, no EVAL of arbitrary scripts (EVALSHA
# runs only scripts already loaded, and with the caller's ACL), no CLIENT KILL/LIST/PAUSE
# (which ``+@connection`` would grant).
STATION_COMMANDS = (
    # connection: redis-py 8 logs in with HELLO; AUTH for RESP2 clients
    "hello",
    "auth",
    "ping",
    # transactions (kombu's pipelines, the unacked index)
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    # queues, the unacked index, bindings, results
    "lpush",
    "rpush",
    "brpop",
    "rpop",
    "llen",
    "del",
    "exists",
    "pexpire",
    "get",
    "mget",
    "set",
    "setex",
    "sadd",
    "srem",
    "smembers",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "hset",
    "hget",
    "hdel",
    "time",
    # kombu's Lua scripts (binding refresh and sweep, redis-py's lock release)
    "evalsha",
    "script|load",
    "script|exists",
    # pub/sub: results, remote control (pidbox), events
    "publish",
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
)

# The fanout channels Celery pattern-subscribes to, inside a namespace (kombu's fanout
# prefix is "/<db>." after the global key prefix; the line always uses db 0).
FANOUT_PATTERNS = ("/0.celery.pidbox", "/0.celeryev/worker.*")


def sha256_hex(password: str) -> str:
    """What an ACL file holds instead of a password (``#<hex>``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def line_password(settings: Settings) -> str:
    """The line server's broker password (``<broker_dir>/line.password``, 0600), created
    on first use. Only line server processes read it; Redis knows its hash."""
    path = settings.broker_dir / LINE_PASSWORD_FILE
    create_private_once(path, secrets.token_urlsafe(32) + "\n")
    password = path.read_text().strip()
    if not password:
        raise ConfigError(f"{path} is empty: delete it and restart the broker to make a new one")
    return password


def station_rule_tokens(station_id: str, password_sha256: str) -> list[str]:
    """Station ``station_id``'s ACL rules (after ``user st-<id>`` in the file, or as the
    arguments of ``ACL SETUSER``): its namespace's keys and channels, the exact fanout
    patterns Celery subscribes to there, and kombu's commands only."""
    check_station_id(station_id)
    if not _SHA256_HEX.fullmatch(password_sha256):
        raise ConfigError(
            f"station {station_id}: broker password hash is not 64 lowercase hex digits"
        )
    ns = station_namespace(station_id)
    return [
        "reset",
        "on",
        f"#{password_sha256}",
        f"~{ns}*",
        "resetchannels",
        f"&{ns}*",
        *(f"&{ns}{p}" for p in FANOUT_PATTERNS),
        "-@all",
        *(f"+{c}" for c in STATION_COMMANDS),
    ]


def station_rule(station_id: str, password_sha256: str) -> str:
    """Station ``station_id``'s line in users.acl."""
    tokens = station_rule_tokens(station_id, password_sha256)
    return f"user {station_user(station_id)} {' '.join(tokens)}"


def line_rule(line_password_sha256: str) -> str:
    """The line server's ACL line: every key and channel, no dangerous command but the
    user administration it does."""
    if not _SHA256_HEX.fullmatch(line_password_sha256):
        raise ConfigError("the line's broker password hash is not 64 lowercase hex digits")
    admin = " ".join(f"+{c}" for c in LINE_ADMIN_COMMANDS)
    return f"user {LINE_USER} reset on #{line_password_sha256} ~* &* +@all -@dangerous {admin}"


def acl_rules(station_ids_with_hashes: Mapping[str, str], *, line_password_sha256: str) -> str:
    """The text of ``users.acl``: default off, the line user, one user per station (sorted,
    so an unchanged set of stations gives an unchanged file)."""
    lines = ["user default reset off", line_rule(line_password_sha256)]
    lines += [station_rule(s, h) for s, h in sorted(station_ids_with_hashes.items())]
    return "\n".join(lines) + "\n"


def acl_path(settings: Settings) -> Path:
    return settings.broker_dir / ACL_FILE


_USER_LINE = re.compile(r"^user st-([A-Za-z0-9_-]+) .*?#([0-9a-f]{64})")


def _station_hashes(path: Path) -> dict[str, str]:
    """Station id -> password hash, as in an ACL file this module wrote (empty if none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    found = {}
    for line in text.splitlines():
        m = _USER_LINE.match(line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


@contextmanager
def _acl_lock(settings: Settings) -> Iterator[None]:
    """One writer of users.acl at a time (two enrollments at once must not lose one)."""
    private_dir(settings.broker_dir)
    fd = os.open(settings.broker_dir / ".users.acl.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_acl(settings: Settings, stations: Mapping[str, str]) -> Path:
    path = acl_path(settings)
    line_hash = sha256_hex(line_password(settings))
    write_private(path, acl_rules(stations, line_password_sha256=line_hash))
    return path


def refresh_acl_file(settings: Settings) -> Path:
    """Rewrite ``users.acl`` with today's rules, keeping its stations (redis-server
    refuses to start without the file). Run before every broker start, so the line's hash
    follows ``line.password`` and a new command list reaches existing stations; the
    database's view arrives with :func:`sync_acl`."""
    with _acl_lock(settings):
        return _write_acl(settings, _station_hashes(acl_path(settings)))


def sync_acl(settings: Settings, engine: Engine) -> None:
    """Make the broker's users match the database: one user per station whose
    ``broker_password_sha256`` is set (enrolled, not revoked).

    The file is always rewritten (atomically, 0600), so a broker started later has the
    current set. If the broker answers, its live users are updated the same way: every
    station's rules set again (``ACL SETUSER``, which keeps open connections), then every
    open connection of a station whose password changed is closed (``CLIENT KILL USER``)
    and a station that is gone is deleted (``ACL DELUSER`` closes its connections): a
    revoked station is cut off now, not at its next login, and no other station notices.
    A broker that is not running is not an error."""
    with _acl_lock(settings):
        with Session(engine) as session:
            rows = session.exec(
                select(Station.id, Station.broker_password_sha256).where(
                    col(Station.broker_password_sha256).is_not(None)
                )
            ).all()
        stations = {sid: h for sid, h in rows if h}
        _write_acl(settings, stations)
        _apply_live(settings, stations)


def _apply_live(settings: Settings, stations: Mapping[str, str]) -> None:
    # Imported here: clients needs line_password from this module.
    from provisioner.broker.clients import line_login, redis_client

    try:
        client = redis_client(settings, line_login(settings), timeout_s=2.0, retries=0)
    except ConfigError as exc:  # tls mode without the line identity yet: no broker either
        log.info("broker users written, not applied: %s", exc)
        return
    try:
        _apply_users(client, stations)
    except redis.AuthenticationError:
        raise ServiceUnavailableError(
            "the broker refused the line's own login (line.password changed while it ran?): "
            "restart the broker so it loads users.acl"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        log.info("broker not reachable: users.acl written, loaded when it starts")
    except redis.ResponseError as exc:
        raise ServiceUnavailableError(f"the broker refused a user change: {exc}") from None
    finally:
        client.close()


def _apply_users(client: redis.Redis, stations: Mapping[str, str]) -> None:
    live = {u for u in map(_text, _command(client, "ACL", "USERS")) if u.startswith("st-")}
    wanted = {station_user(sid): (sid, h) for sid, h in stations.items()}
    for user, (sid, sha) in sorted(wanted.items()):
        old = _password_hashes(client, user) if user in live else set()
        _command(client, "ACL", "SETUSER", user, *station_rule_tokens(sid, sha))
        if old - {sha}:  # a new password: the old one's connections go
            killed = _command(client, "CLIENT", "KILL", "USER", user)
            log.info("broker: closed %s connection(s) of station %s", killed, sid)
    for user in sorted(live - wanted.keys()):
        _command(client, "ACL", "DELUSER", user)  # closes its connections
        log.info("broker: removed user %s and its connections", user)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _password_hashes(client: redis.Redis, user: str) -> set[str]:
    """The password hashes the running broker holds for ``user``."""
    info = _command(client, "ACL", "GETUSER", user) or {}
    info = {_text(k): v for k, v in info.items()}
    return {_text(h) for h in info.get("passwords", [])}


def _command(client: redis.Redis, *args: str) -> Any:
    """A raw command (redis-py's ACL SETUSER helper has no form for a rule list)."""
    return cast(Any, client).execute_command(*args)
