"""``POST /ocsp`` and ``GET /ocsp/{request}``: the OCSP responder over HTTP (RFC 6960
appendix A.1), public like the CRLs: the request names a certificate, the answer is signed.

Every answer is HTTP 200 with ``application/ocsp-response``, an OCSP error included
(``malformedRequest``, ``unauthorized``, ``tryLater`` when the token or the database is
down): OCSP clients read the OCSP status, not the HTTP one, and ``openssl ocsp`` gives up
on anything but 200 without saying why. The request's media type is not checked (clients
differ), its size is (:data:`provisioner.ca.ocsp.MAX_REQUEST_BYTES`).

GET carries the DER request base64-encoded (then URL-encoded) in the path, so HTTP caches
can keep the answer: pre-produced answers to GET say how long (RFC 5019 6.2:
``max-age`` up to nextUpdate, ``Last-Modified``, ``Expires``, ``ETag``); answers to a
nonce and every error say ``no-store``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime

from fastapi import APIRouter, Request, Response
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.ca.ocsp import MAX_REQUEST_BYTES, OcspAnswer, OcspResponder
from provisioner.settings import Settings

MEDIA_TYPE = "application/ocsp-response"

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "A DER OCSPResponse (RFC 6960), also for OCSP-level errors.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _headers(answer: OcspAnswer, cacheable: bool) -> dict[str, str]:
    if not (cacheable and answer.successful and not answer.nonce and answer.next_update):
        return {"Cache-Control": "no-store"}
    assert answer.this_update is not None
    now = datetime.now(UTC)
    max_age = max(0, int((answer.next_update - now).total_seconds()))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(answer.this_update, usegmt=True),
        "Expires": format_datetime(answer.next_update, usegmt=True),
        "ETag": '"' + hashlib.sha256(answer.der).hexdigest()[:32] + '"',
    }


def decode_get_path(encoded: str) -> bytes:
    """The DER request from the path of a GET: base64 (standard or URL-safe alphabet,
    padding optional). The server has already undone the URL encoding; a ``+`` that
    something on the way turned into a space is put back. Empty when it does not decode."""
    text = encoded.strip("/").replace(" ", "+").replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    if len(text) > MAX_REQUEST_BYTES * 2:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def ocsp_router(settings: Settings, engine: Engine) -> APIRouter:
    """The responder's routes; the responder (and the token connection it opens on its
    first signature) lives as long as the app and is closed on shutdown."""
    responder = OcspResponder(settings, engine)
    router = APIRouter(tags=["pki"], on_shutdown=[responder.close])

    async def _answer(der: bytes, cacheable: bool) -> Response:
        answer = await run_in_threadpool(responder.respond, der)
        return Response(answer.der, media_type=MEDIA_TYPE, headers=_headers(answer, cacheable))

    @router.post("/ocsp", response_class=Response, responses=_RESPONSES)
    async def ocsp_post(request: Request) -> Response:
        """An OCSP request in the body (DER, ``application/ocsp-request``; the body is
        read raw, so the schema does not describe it)."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return await _answer(b"", False)  # malformedRequest, without reading on
        return await _answer(bytes(body), False)

    @router.get("/ocsp/{encoded:path}", response_class=Response, responses=_RESPONSES)
    async def ocsp_get(encoded: str) -> Response:
        """An OCSP request in the path: base64 of its DER, URL-encoded (RFC 6960 A.1)."""
        return await _answer(decode_get_path(encoded), True)

    return router
