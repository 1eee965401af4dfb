"""The line's redis.conf: ACL users always, TLS both ways in ``tls`` mode, no persistence.

``unix`` (one PC): no TCP port at all, a socket in a 0700 directory. ``tls`` (stations on
other PCs): no plain-text port (``port 0``); the TLS port presents the line's certificate
and requires a client certificate from the line's CA (``tls-auth-clients yes``) before a
client may even send AUTH. In both modes the users come from ``users.acl`` (see
:mod:`provisioner.broker.acl`), with the default user off.

Nothing is persisted: queued messages and results are transient, and the records are in
the database. The supervisor runs ``redis-server <broker_dir>/redis.conf`` in the
foreground.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.broker.acl import refresh_acl_file
from provisioner.broker.clients import tls_files
from provisioner.broker.files import private_dir, write_private
from provisioner.settings import Settings

CONF_FILE = "redis.conf"


def _q(value: str | Path) -> str:
    """A redis.conf string argument (paths may hold spaces)."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def redis_conf(settings: Settings, acl_file: Path) -> str:
    """The text of redis.conf for ``settings.broker.mode``."""
    data_dir = settings.redis_socket.parent
    lines = [
        "# Written by provisioner (provisioner/broker/config.py); changes are overwritten.",
        "port 0",
        f"aclfile {_q(acl_file)}",
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f"dir {_q(data_dir)}",
        "daemonize no",
    ]
    if settings.broker.mode == "unix":
        lines += [
            f"unixsocket {_q(settings.redis_socket)}",
            "unixsocketperm 700",
        ]
    else:
        files = tls_files(settings, "line")
        lines += [
            f"bind {settings.broker.listen_host}",
            f"tls-port {settings.broker.port}",
            f"tls-cert-file {_q(files['cert'])}",
            f"tls-key-file {_q(files['key'])}",
            f"tls-ca-cert-file {_q(files['ca'])}",
            "tls-auth-clients yes",
            'tls-protocols "TLSv1.2 TLSv1.3"',
            "tls-prefer-server-ciphers yes",
        ]
    return "\n".join(lines) + "\n"


def write_redis_conf(settings: Settings) -> Path:
    """Write ``<broker_dir>/redis.conf`` (0600) for the configured mode and return its
    path. Creates ``line.password`` if missing and rewrites ``users.acl`` (keeping its
    stations; after the broker starts, :func:`provisioner.broker.acl.sync_acl` brings in
    the database's). In ``tls`` mode the line identity must exist (ConfigError says how
    to make it)."""
    private_dir(settings.broker_dir)
    private_dir(settings.redis_socket.parent)
    acl_file = refresh_acl_file(settings)
    path = settings.broker_dir / CONF_FILE
    write_private(path, redis_conf(settings, acl_file))
    return path
