"""The MQTT bridge's TLS server certificate, issued by the product's own CA.

A listener of :mod:`provisioner.ca.server_cert` (see there for the why: P-256, one small
root, a software server key, the certificate signed in the token by the current
intermediate). Files in :attr:`Settings.bridge_dir`: ``server.key`` (0600), ``server.pem``
(the server certificate then the intermediate: what mosquitto's ``certfile`` sends) and
``ca.pem`` (the root); :func:`bridge_files` names them. :func:`ensure_bridge_certificate`
re-issues when a file is missing, the certificate expires within 30 days, no longer chains
to the current intermediate (after ``ca rotate``) or its names differ from
``bridge.names``; otherwise it touches nothing and opens no token.
"""

from __future__ import annotations

from datetime import datetime

from provisioner.ca import server_cert
from provisioner.ca.server_cert import ServerCertFiles
from provisioner.settings import Settings

COMMON_NAME = "mqtt bridge"


def bridge_files(settings: Settings) -> ServerCertFiles:
    """The bridge's certificate files and names."""
    return ServerCertFiles(
        settings.bridge_dir,
        tuple(settings.bridge.names),
        COMMON_NAME,
        "bridge.names",
        # the mTLS listener verifies device certificates against clients.pem
        client_ca=settings.bridge.mtls_port is not None,
    )


def is_current(settings: Settings, now: datetime | None = None) -> bool:
    """Whether the files hold a certificate for the current key, intermediate, root and
    ``bridge.names`` with more than 30 days left."""
    return server_cert.is_current(settings, bridge_files(settings), now)


def ensure_bridge_certificate(
    settings: Settings, *, pin_source: str | None = None, now: datetime | None = None
) -> bool:
    """Make sure :attr:`Settings.bridge_dir` holds a current server certificate, key and
    root (see the module docstring). Returns whether a certificate was issued. The key is
    kept across re-issues unless it is missing or unreadable."""
    return server_cert.ensure_server_certificate(
        settings, bridge_files(settings), pin_source=pin_source, now=now
    )
