"""Live parts of a page over Server-Sent Events.

A page names its stream in ``data-live``; the stream sends, as JSON, the fragments (element
id -> HTML) that changed since the last event, rendered by the same templates as the page.
The browser's EventSource reconnects on its own after a dropped connection; a session that
ended (sign-out, revoked token) ends the stream, and the page says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from provisioner.errors import AuthenticationError

Fragments = dict[str, str]
KEEPALIVE_S = 15.0


def stream(
    request: Request,
    produce: Callable[[], Fragments],
    still_signed_in: Callable[[], None],
    *,
    interval_s: float = 1.0,
) -> StreamingResponse:
    """``produce`` runs in a thread every ``interval_s``; ``still_signed_in`` raises
    AuthenticationError once the session is gone (checked before each round)."""

    async def events() -> AsyncIterator[str]:
        last: Fragments = {}
        quiet = 0.0
        yield "retry: 3000\n\n"
        while not await request.is_disconnected():
            try:
                await run_in_threadpool(still_signed_in)
            except AuthenticationError:
                yield "event: signed-out\ndata: {}\n\n"
                return
            now = await run_in_threadpool(produce)
            changed = {k: v for k, v in now.items() if last.get(k) != v}
            last = now
            if changed:
                quiet = 0.0
                yield f"data: {json.dumps(changed)}\n\n"
            else:
                quiet += interval_s
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": still here\n\n"
            await asyncio.sleep(interval_s)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
