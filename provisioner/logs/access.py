"""The HTTP access log: one JSON line per request to logger ``provisioner.access``.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware), so streamed responses (the
dashboard's Server-Sent Events) pass through untouched; the line is written when the
response ends, or when the request fails or the client goes away.

Fields: ``method``, ``path`` (with the query string, cut to 200 characters), ``status``
(500 if the app raised before answering; 499 if the client went away before), ``duration_ms``,
``client`` (address) and ``user`` (the name a handler put in ``request.state.user``; the
dashboard and the API set it once they know who asks). Never headers, cookies or bodies:
that is where tokens and session ids travel. uvicorn's own access log stays off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_QUERY = 200
log = logging.getLogger("provisioner.access")


def request_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    query = scope.get("query_string", b"")
    if query:
        text = query.decode("latin-1") if isinstance(query, bytes) else str(query)
        path += "?" + (text[:MAX_QUERY] + "..." if len(text) > MAX_QUERY else text)
    return path


def user_of(state: Any) -> str | None:
    """The name of whoever ``request.state.user`` holds (a name or a principal)."""
    user = state.get("user") if isinstance(state, dict) else getattr(state, "user", None)
    if user is None:
        return None
    if isinstance(user, str):
        return user
    name = getattr(user, "name", None)
    return str(name) if name is not None else None


class AccessLogMiddleware:
    """``app.add_middleware(AccessLogMiddleware)`` (FastAPI/Starlette) or wrap any ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status: int | None = None
        # The handler's request.state writes into this dict (Starlette keeps it in the
        # scope); created here so a scope copied further down still shares it.
        state = scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status if status is not None else 500
            raise
        finally:
            client = scope.get("client")
            fields = {
                "method": scope.get("method"),
                "path": request_path(scope),
                "status": status if status is not None else 499,
                "duration_ms": round((time.monotonic() - start) * 1000, 1),
                "client": client[0] if client else None,
                "user": user_of(state),
            }
            log.info(
                "%s %s %s",
                fields["method"],
                fields["path"],
                fields["status"],
                extra={"fields": {k: v for k, v in fields.items() if v is not None}},
            )
