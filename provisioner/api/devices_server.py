"""The device-facing HTTPS listener: enrollment in the field, identity certificates and
their renewal over mTLS (``python -m provisioner.api.devices_server [--config FILE]``).

Why a listener of its own rather than routes on the API: devices in the field talk TLS to a
certificate they can check against the one small root they pin (``<var>/devices/ca.pem``),
and renewal authenticates by the device's client certificate, which a TLS server must ask
for in the handshake. The operators' API stays plain HTTP behind whatever fronts it, and
never asks a browser for a certificate.

- The server certificate is P-256, issued by the current HSM intermediate like the MQTT
  bridge's (:mod:`provisioner.ca.server_cert`; SANs ``devices.names``), in
  :attr:`Settings.devices_dir`; re-issued on start when missing, expiring within 30 days,
  renamed or after ``ca rotate``.
- A client certificate is asked for but optional (``CERT_OPTIONAL``): enrollment has none
  yet. One that is presented must chain to the root through one of our intermediates,
  current or archived (``clients.pem``), or the handshake fails; the application reads the
  verified one from the ASGI ``tls`` extension (:mod:`provisioner.asgi_tls`) and decides
  whether it is a live identity certificate.
- Intermediates made while it runs (``ca rotate``, ``ca import-cert``) are trusted for
  client certificates within ``TRUST_REFRESH_S``: devices that got their identity from the
  new one can renew without a restart (:func:`refresh_client_trust`). The server
  certificate itself is re-issued at the next start (the old intermediate stays valid).
- The routes are the fleet service's device routes (:func:`provisioner.api.fleet.
  fleet_device_router`) plus ``/healthz``; errors in the API's shape.

Started by the supervisor after the API when ``devices.enabled`` (child ``devices``).
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from provisioner.ca.server_cert import (
    ServerCertFiles,
    client_ca_bundle,
    ensure_server_certificate,
)
from provisioner.errors import ProvisionerError
from provisioner.private_files import write_private
from provisioner.settings import Settings

log = logging.getLogger("provisioner.devices")

COMMON_NAME = "device enrollment"
TRUST_REFRESH_S = 10.0


def devices_files(settings: Settings) -> ServerCertFiles:
    """The listener's certificate files (and the client bundle it verifies against)."""
    return ServerCertFiles(
        settings.devices_dir,
        tuple(settings.devices.names),
        COMMON_NAME,
        "devices.names",
        client_ca=True,
    )


def ensure_devices_certificate(
    settings: Settings, *, pin_source: str | None = None, now: datetime | None = None
) -> bool:
    """Make sure the listener has a current server certificate, key, pinned root and client
    bundle; returns whether a certificate was issued (the token is opened only then)."""
    return ensure_server_certificate(
        settings, devices_files(settings), pin_source=pin_source, now=now
    )


def devices_url(settings: Settings) -> str:
    """How devices reach the listener: ``devices.public_url``, else derived from the
    listen address (a wildcard is reached through the loopback)."""
    d = settings.devices
    if d.public_url:
        return d.public_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(d.listen_host, d.listen_host)
    return f"https://[{host}]:{d.port}" if ":" in host else f"https://{host}:{d.port}"


def create_devices_app(settings: Settings, router: APIRouter | None = None) -> FastAPI:
    """The listener's application: ``router`` (default: the fleet service's device routes
    on this installation's database) and ``/healthz``."""
    from provisioner.api.app import _install_error_handlers
    from provisioner.logs.access import AccessLogMiddleware

    # No OpenAPI document: the device protocol is the document's (docs/enrollment.md).
    app = FastAPI(title="provisioner devices", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLogMiddleware)
    if router is None:
        from provisioner.api.fleet import fleet_device_router
        from provisioner.db.engine import create_schema, make_engine

        engine = make_engine(settings.db_url)
        create_schema(engine)
        router = fleet_device_router(settings, engine)
    app.include_router(router)
    _install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def server_config(settings: Settings, app: Any) -> Any:
    """uvicorn's configuration for the listener: TLS with our server certificate, client
    certificates optional but verified against ``clients.pem``, the ``tls`` scope
    extension, logging through the process's own JSON handler."""
    import uvicorn

    from provisioner.asgi_tls import TlsScopeH11Protocol

    files = devices_files(settings)
    return uvicorn.Config(
        app,
        host=settings.devices.listen_host,
        port=settings.devices.port,
        ssl_keyfile=str(files.key_path),
        ssl_certfile=str(files.chain_path),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        ssl_ca_certs=str(files.client_ca_path),
        http=TlsScopeH11Protocol,
        log_config=None,  # uvicorn's own lines go through our JSON handler
        log_level=None,
        access_log=False,  # AccessLogMiddleware writes the access log instead
    )


def refresh_client_trust(settings: Settings, context: ssl.SSLContext, known: bytes) -> bytes:
    """Trust the CA's intermediates that ``known`` (the bundle the context was loaded with)
    lacks: ``clients.pem`` rewritten and the new certificates added to the running server's
    context, so the next handshakes accept their devices. Returns the bundle now trusted.
    (Nothing is ever taken out: intermediates stay archived for as long as their
    certificates may be out.)"""
    bundle = client_ca_bundle(settings)
    if bundle != known:
        write_private(devices_files(settings).client_ca_path, bundle)
        context.load_verify_locations(cadata=bundle.decode())
        log.info("client certificates: now trusting the CA's current intermediates")
    return bundle


def _follow_ca(settings: Settings, context: ssl.SSLContext, stop: threading.Event) -> None:
    known = devices_files(settings).client_ca_path.read_bytes()
    while not stop.wait(TRUST_REFRESH_S):
        try:
            known = refresh_client_trust(settings, context, known)
        except (OSError, ValueError, ProvisionerError) as exc:  # a rotation half-written
            log.warning("client certificates: could not re-read the CA: %s", exc)


def main(config: Path | None = None) -> int:
    """Ensure the certificate (a no-op when current: the supervisor already did it), then
    serve until stopped. A port in use ends the process with an error, as uvicorn does."""
    import uvicorn

    from provisioner.logs import configure
    from provisioner.private_files import private_umask
    from provisioner.settings import load_settings

    private_umask()
    settings = load_settings(config)
    configure(settings, "devices")
    ensure_devices_certificate(settings)
    cfg = server_config(settings, create_devices_app(settings))
    cfg.load()  # builds the TLS context now, so it can be followed
    stop = threading.Event()
    follower = threading.Thread(
        target=_follow_ca, args=(settings, cfg.ssl, stop), name="follow-ca", daemon=True
    )
    follower.start()
    server = uvicorn.Server(cfg)
    try:
        server.run()
    finally:
        stop.set()
    # A port in use: uvicorn exits with code 3 itself. Any other start that never completed
    # (a shutdown signal during startup) is not a clean run either.
    return 0 if server.started else 1


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.api.devices_server",
        description="The device-facing HTTPS listener: enrollment, identity, renewal (mTLS).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $PROVISIONER_CONFIG or ./provisioner.toml)",
    )
    return main(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(cli())
