"""The ASGI TLS extension for uvicorn: the client certificate of an mTLS connection in
``scope["extensions"]["tls"]``.

uvicorn verifies a client certificate when it is configured to (``ssl_cert_reqs``,
``ssl_ca_certs``) but never tells the application which one was presented. The ASGI spec
has an extension for exactly that (``tls``: ``client_cert_chain``, ``tls_version`` ...);
this h11 protocol fills it in from the connection's TLS object, once per connection (the
handshake is over when asyncio hands the connection to the protocol). Python before 3.13
gives the verified leaf only, so ``client_cert_chain`` holds the leaf alone.

Serve with ``uvicorn.Config(..., http=TlsScopeH11Protocol)``; read with
:func:`client_certificate`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI ``tls`` extension of one TLS connection."""
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    name = None
    if der:
        name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class TlsScopeH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the ``tls`` extension in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        tls = tls_extension(ssl_object)
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
            await app(scope, receive, send)

        self.app = with_tls


def client_certificate(scope: Mapping[str, Any]) -> x509.Certificate | None:
    """The verified client certificate of the request's connection, or None (plain HTTP,
    or TLS without a client certificate)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode())
