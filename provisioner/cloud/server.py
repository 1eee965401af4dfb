"""Running the built-in registry as a process: settings in, a listening HTTP service out.

Start-up does, in order, everything that can fail with a useful message (settings, token
file, database, the configured registry, the listening socket) before uvicorn takes over, so
a supervisor waiting on ``/healthz`` sees either a ready service or a one-line error and a
non-zero exit. Logs (:mod:`provisioner.logs`): JSON lines in ``<var>/log/registry.log``;
uvicorn's own access log is off (our :class:`~provisioner.logs.access.AccessLogMiddleware`
writes one line per request without headers, so never a token) and its error log goes
through our handler (``log_config=None``). The tokens this process holds are registered
with the log redaction.

With ``[bridge] https_port`` the same process also serves the HTTP device bridge over TLS
(the MQTT bridge's certificate; a client certificate of the product's CA asked for but
optional, put in each request's scope by :class:`~provisioner.asgi_tls.TlsScopeH11Protocol`)
so a device may authenticate with its certificate instead of a JWT. That listener answers
only the three device paths and ``/healthz``: the registry API, the plugin's ``/bridge/``
and the brokers' ``/hooks/`` stay on the plain port.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn

from provisioner.asgi_tls import TlsScopeH11Protocol
from provisioner.cloud import store
from provisioner.cloud.app import create_app
from provisioner.cloud.bridge_http import device_paths_only
from provisioner.cloud.mosquitto.config import bridge_files
from provisioner.cloud.tokens import (
    Role,
    admin_token_file,
    ensure_upload_token,
    hashed_tokens_file,
    read_hashed_tokens,
    read_token,
    token_hash,
)
from provisioner.errors import ProvisionerError, ServiceUnavailableError
from provisioner.logs import configure, register_secret
from provisioner.logs.access import AccessLogMiddleware
from provisioner.private_files import check_database, private_umask
from provisioner.settings import Settings, load_settings


def token_roles(settings: Settings) -> dict[str, Role]:
    """Every accepted token hash and its role: minted ones from ``tokens.sha256``, the
    admin token (created if missing) and the upload token (writer: it creates and patches
    devices; the configured registry is created here, not through the API)."""
    upload = settings.registry_token_file
    ensure_upload_token(upload)
    ensure_upload_token(admin_token_file(upload))
    roles = read_hashed_tokens(hashed_tokens_file(upload))
    for path, role in ((admin_token_file(upload), Role.ADMIN), (upload, Role.WRITER)):
        token = read_token(path)
        register_secret(token)
        roles[token_hash(token)] = role
    return roles


def bridge_token_hash(settings: Settings) -> str | None:
    """The SHA-256 of the token the MQTT bridge's mosquitto plugin presents on
    ``/bridge/v1`` (its file created if missing, beside the upload token), or None when the
    bridge is disabled: then the device plane's plugin routes are not served at all. The
    token is no service-account token: it opens the plugin contract only, never the
    registry API."""
    if not settings.bridge.enabled:
        return None
    path = settings.bridge_token_file
    ensure_upload_token(path)
    token = read_token(path)
    register_secret(token)
    return token_hash(token)


class _Leader(uvicorn.Server):
    """The plain server: a SIGTERM/SIGINT it receives stops the HTTPS one too (one process,
    one set of signal handlers)."""

    def __init__(self, config: uvicorn.Config, app: AccessLogMiddleware) -> None:
        super().__init__(config)
        self.app = app
        self.followers: list[uvicorn.Server] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        for f in self.followers:
            f.should_exit = True


class _Follower(uvicorn.Server):
    """The HTTPS server: installs no signal handlers (the leader's stop it)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def prepare(settings: Settings) -> _Leader:
    """Ensure the token files, the database and the configured registry; build the server."""
    roles = token_roles(settings)
    bridge_hash = bridge_token_hash(settings)
    reg = settings.registry
    engine = store.open_store(settings.registry_db_url)
    try:
        store.ensure_registry(engine, reg.project, reg.location, reg.registry)
    finally:
        engine.dispose()
    app = AccessLogMiddleware(
        create_app(
            settings.registry_db_url,
            roles,
            bridge_token_hash=bridge_hash,
            hook_allow=settings.bridge.hook_allow,
        )
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return _Leader(config, app)


def prepare_https(settings: Settings, leader: _Leader) -> uvicorn.Server | None:
    """The HTTPS device bridge's server (module docstring), serving the leader's app; None
    unless ``bridge.https_port`` is set (and the bridge enabled)."""
    b = settings.bridge
    if not b.enabled or b.https_port is None:
        return None
    files = bridge_files(settings)
    for path in (files.cert_chain, files.key, files.client_ca):
        if not path.is_file():
            raise ServiceUnavailableError(
                f"bridge.https_port is set but {path} is missing: `provisioner services run` "
                "issues the bridge's certificate before it starts the registry"
            )
    config = uvicorn.Config(
        device_paths_only(leader.app),
        ssl_certfile=str(files.cert_chain),
        ssl_keyfile=str(files.key),
        ssl_ca_certs=str(files.client_ca),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        http=TlsScopeH11Protocol,
        log_config=None,
        log_level=None,
        access_log=False,
        server_header=False,
        lifespan="off",  # the app's lifespan is the leader's
        timeout_graceful_shutdown=5,
    )
    try:
        config.load()  # the TLS context now: a bad file is a start-up error, not a dead task
    except (OSError, ssl.SSLError) as exc:
        raise ServiceUnavailableError(
            f"the HTTPS device bridge cannot use {files.cert_chain} / {files.key} / "
            f"{files.client_ca}: {exc}"
        ) from None
    server = _Follower(config)
    leader.followers.append(server)
    return server


def bind(host: str, port: int, setting: str = "registry.listen_port") -> socket.socket:
    """The listening socket, bound here so "port in use" is a clear error, not a traceback.

    Made with ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on sockets whose proto says
    TCP, and without it every response on a kept-alive connection (the bridge plugin's, the
    uploaders') waited ~40 ms for Nagle and the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceUnavailableError(
            f"the registry cannot listen on {host}:{port} ({exc.strerror}): is another "
            f"registry already running? Stop it or set {setting}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; then finish in-flight requests and return 0.

    uvicorn turns both signals into a graceful shutdown and afterwards re-raises them
    under the handlers that were installed before it started; installing ours first makes
    that re-raise an ordinary exit 0 instead of a death by signal or a KeyboardInterrupt.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    configure(settings, "registry")
    sockets: list[socket.socket] = []
    try:
        check_database(settings.registry_db_url, settings.var)
        server = prepare(settings)
        https = prepare_https(settings, server)
        sockets.append(bind(settings.registry.listen_host, settings.registry.listen_port))
        if https is not None:
            assert settings.bridge.https_port is not None
            sockets.append(
                bind(settings.bridge.host, settings.bridge.https_port, "bridge.https_port")
            )
    except ProvisionerError as exc:
        for sock in sockets:
            sock.close()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if https is None:
            server.run(sockets=sockets)
        else:
            asyncio.run(_serve_both(server, https, sockets))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        for sock in sockets:
            sock.close()
    return 0 if server.started else 1


async def _serve_both(
    leader: uvicorn.Server, follower: uvicorn.Server, sockets: list[socket.socket]
) -> None:
    """Both servers in one event loop; the follower is stopped and awaited when the leader
    ends (its signal handling re-raises the signal after that, as :func:`serve` expects)."""
    task = asyncio.create_task(follower.serve(sockets=[sockets[1]]))
    try:
        await leader.serve(sockets=[sockets[0]])
    finally:
        follower.should_exit = True
        await task


def main(config: Path | None = None) -> int:
    """``python -m provisioner.cloud [--config FILE]``: files private (umask 077)
    even when it runs without the supervisor."""
    private_umask()
    try:
        settings = load_settings(config)
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return serve(settings)
