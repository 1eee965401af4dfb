"""``GET /metrics`` on the line's API: every process of the line and the database, for
a user whose role may ``metrics.read`` (the ``monitor`` role is made for Prometheus: it
sends the user's token with ``authorization: credentials_file``)."""

# No "from __future__ import annotations": FastAPI must see the Depends(guard(...))
# annotation as an object (as in provisioner.api.routes).

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.api.security import Guard
from provisioner.auth.users import Principal
from provisioner.metrics.exposition import render
from provisioner.settings import Settings


def metrics_router(engine: Engine, settings: Settings, guard: Guard) -> APIRouter:
    r = APIRouter()

    @r.get("/metrics")
    async def metrics(who: Annotated[Principal, Depends(guard("metrics.read"))]) -> Response:
        if not settings.metrics.enabled:
            message = "metrics are disabled on this line (metrics.enabled = false)"
            problem = {"error": {"code": 404, "status": "NOT_FOUND", "message": message}}
            return JSONResponse(problem, 404)
        # Reading the files and the database blocks: off the event loop.
        body, content_type = await run_in_threadpool(render, settings, engine)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return r
