"""How the line server and the stations log in to the line's Redis, as Celery and as redis-py.

One Redis serves the whole line; what keeps the stations apart is who logs in (an ACL user
per station, see :mod:`provisioner.broker.acl`) and where their keys live (a namespace:
Celery's ``global_keyprefix``, which kombu puts in front of every key and pub/sub channel).
The line server's own work lives under ``line:``; station S's queues (``station.S``, line ->
station, and ``gateway``, station -> line) under ``st:S:``.

In ``tls`` mode every connection is TLS both ways: the server's certificate is checked
against the pinned CA chain and ``broker.host`` (so a station cannot be pointed at another
Redis), and the client presents its own certificate (the line's or the station's, both from
the HSM CA), which Redis requires (``tls-auth-clients yes``) before anyone may even try a
password.

Passwords never go into a URL Celery might print, except where kombu leaves no other way (a
unix socket broker URL; Celery masks it as ``redis+socket://st-x:**@/...``): the result
backend takes ``redis_username``/``redis_password``, a TCP broker ``broker_user``/
``broker_password``, and Celery censors both keys in its settings dumps.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from provisioner.broker.acl import line_password
from provisioner.broker.names import (
    LINE_NAMESPACE,
    LINE_USER,
    station_namespace,
    station_user,
)
from provisioner.errors import ConfigError
from provisioner.settings import Settings

__all__ = [
    "BrokerLogin",
    "celery_config",
    "line_login",
    "redis_client",
    "station_login",
    "station_namespace",
    "station_user",
    "tls_files",
]

VISIBILITY_TIMEOUT_S = 300

Role = Literal["line", "station"]


@dataclass(frozen=True)
class BrokerLogin:
    """Who logs in to Redis and which key namespace its Celery app uses."""

    user: str
    password: str = field(repr=False)
    namespace: str  # "line:" or "st:<station>:"


def line_login(settings: Settings, namespace: str = LINE_NAMESPACE) -> BrokerLogin:
    """The line server's login (user ``line``), in its own namespace or, for the gateway
    worker serving one station, in that station's (``station_namespace(S)``)."""
    return BrokerLogin(LINE_USER, line_password(settings), namespace)


def station_login(settings: Settings) -> BrokerLogin:
    """This station PC's login (role "station"): user ``st-<station_id>`` with the password
    received at enrollment (``<identity>/broker.password``)."""
    if not settings.station_id:
        raise ConfigError("station_id is not set: a station PC must say which station it is")
    path = settings.station_identity_dir / "broker.password"
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: this station is not enrolled; run "
            "`provisioner station enroll --token-file FILE` with a token from "
            f"`provisioner station add {settings.station_id}` on the line server"
        ) from None
    if not password:
        raise ConfigError(f"{path} is empty: enroll this station again (--force)")
    sid = settings.station_id
    return BrokerLogin(station_user(sid), password, station_namespace(sid))


def _role_of(login: BrokerLogin) -> Role:
    return "line" if login.user == LINE_USER else "station"


def tls_files(settings: Settings, role: Role) -> dict[str, Path]:
    """The pinned CA chain and the client certificate + key ``role`` presents."""
    if role == "line":
        d = settings.line_identity_dir
        files = {"ca": d / "ca-chain.pem", "cert": d / "line.crt", "key": d / "line.key"}
        fix = "run `provisioner line identity` on the line server"
    else:
        d = settings.station_identity_dir
        files = {"ca": d / "ca-chain.pem", "cert": d / "station.crt", "key": d / "station.key"}
        fix = "enroll this station (`provisioner station enroll`)"
    for path in files.values():
        if not path.is_file():
            raise ConfigError(f"{path} does not exist (broker mode tls): {fix}")
    return files


def _ssl_options(settings: Settings, role: Role) -> dict[str, Any]:
    """redis-py's SSL options, in the form kombu (``broker_use_ssl``) and Celery's backend
    (``redis_backend_use_ssl``) pass through: verify the server against the pinned chain and
    ``broker.host``, present our certificate, nothing older than TLS 1.2."""
    files = tls_files(settings, role)
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(files["ca"]),
        "ssl_certfile": str(files["cert"]),
        "ssl_keyfile": str(files["key"]),
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }


def _host(settings: Settings) -> str:
    host = settings.broker.host
    return f"[{host}]" if ":" in host else host


def celery_config(settings: Settings, login: BrokerLogin, *, role: Role) -> dict[str, Any]:
    """Celery settings that put an app on the line's Redis as ``login``, in its namespace.

    ``role`` says whose TLS certificate is presented (the line's or this station's). A line
    process serving a station's namespace (the gateway worker) gets no remote control: the
    pidbox there is the station's to write, and a station must not be able to send
    ``shutdown`` or ``add_consumer`` to a line server process."""
    ns = login.namespace
    conf: dict[str, Any] = {
        "broker_transport_options": {
            "global_keyprefix": ns,
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
        },
        "result_backend_transport_options": {"global_keyprefix": ns},
        "redis_username": login.user,
        "redis_password": login.password,
    }
    if settings.broker.mode == "unix":
        sock = quote(str(settings.redis_socket), safe="/")
        # kombu takes a unix socket's credentials from the URL only (it overwrites
        # broker_user/broker_password with the URL's); Celery prints it masked.
        conf["broker_url"] = (
            f"redis+socket://{quote(login.user, safe='')}:{quote(login.password, safe='')}@{sock}"
        )
        conf["result_backend"] = f"redis+socket://{sock}"
    else:
        url = f"rediss://{_host(settings)}:{settings.broker.port}/0"
        ssl_options = _ssl_options(settings, role)
        conf |= {
            "broker_url": url,
            "broker_user": login.user,
            "broker_password": login.password,
            "result_backend": url,
            "broker_use_ssl": ssl_options,
            "redis_backend_use_ssl": dict(ssl_options),
        }
    if role == "line" and ns != LINE_NAMESPACE:
        conf["worker_enable_remote_control"] = False
    return conf


def redis_client(
    settings: Settings,
    login: BrokerLogin,
    *,
    role: Role | None = None,
    timeout_s: float = 5.0,
    retries: int = 3,
) -> redis.Redis:
    """A redis-py client logged in as ``login`` (probes, ACL administration, tests).
    ``role`` (whose certificate to present) defaults to the line's for user ``line``;
    ``retries`` after a connection error, backing off 0.1 s doubling up to 1 s (0 for a
    probe that must answer now)."""
    common: dict[str, Any] = {
        "username": login.user,
        "password": login.password,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), retries),
    }
    if settings.broker.mode == "unix":
        return redis.Redis(unix_socket_path=str(settings.redis_socket), **common)
    return redis.Redis(
        host=settings.broker.host,
        port=settings.broker.port,
        ssl=True,
        **_ssl_options(settings, role or _role_of(login)),
        **common,
    )
