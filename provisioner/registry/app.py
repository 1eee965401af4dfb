"""The built-in registry's HTTP API, in the Cloud IoT Core v1 REST shape.

Same paths, camelCase proto3 JSON and google.rpc errors as Cloud IoT, so one upload client
(and, later, the official clients) serve both this registry and a real one. Every request but
``GET /healthz`` needs ``Authorization: Bearer <token>``; the app holds only SHA-256 hashes.

Walking-skeleton scope: create/get registries; create/get/list devices. PATCH, DELETE,
device filters, registry CA credentials and roles come later; requests that need them are
refused explicitly rather than half-served.

All state (the database engine) belongs to the app object :func:`create_app` returns.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner.errors import ConfigError
from provisioner.registry import resources, store
from provisioner.registry.auth import BearerAuth
from provisioner.registry.status import ApiError, Code, error_response

HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1024 * 1024  # 3 credentials and 256 KB of metadata fit many times over
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


def create_app(db_url: str, token_sha256_hexes: set[str]) -> FastAPI:
    """The registry service on the database at ``db_url`` (tables created if missing),
    accepting bearer tokens whose SHA-256 hex digest is in ``token_sha256_hexes``."""
    hashes = {h.lower() for h in token_sha256_hexes}
    if not hashes or not all(_SHA256_HEX.fullmatch(h) for h in hashes):
        raise ConfigError("the registry needs at least one upload token hash (64 hex digits)")
    engine = store.open_store(db_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="provisioner built-in device registry (Cloud IoT v1 shape)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(BearerAuth, token_sha256_hexes=hashes, open_paths={HEALTH_PATH})
    _install_error_handlers(app)

    @app.get(HEALTH_PATH)
    def healthz() -> JSONResponse:
        """Ready means the database answers, not merely that the port is open."""
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    app.include_router(_registry_routes(engine))
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as a google.rpc error body, whatever raised it."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            "The requested URL was not found on this server."
            if exc.status_code == 404
            else str(exc.detail)
        )
        return error_response(Code.from_http(exc.status_code), message, http_status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(
            Code.INVALID_ARGUMENT, f"Invalid value at '{where}': {first.get('msg', '')}."
        )

    @app.exception_handler(OperationalError)
    async def _db(_: Request, __: OperationalError) -> JSONResponse:
        return error_response(Code.UNAVAILABLE, "The registry database is unavailable; retry.")

    @app.exception_handler(Exception)
    async def _internal(_: Request, __: Exception) -> JSONResponse:
        return error_response(Code.INTERNAL, "Internal error encountered.")


def _query(request: Request, camel: str, snake: str) -> str | None:
    """A query parameter by its proto3 JSON name or its proto field name."""
    return request.query_params.get(camel, request.query_params.get(snake))


async def _body(request: Request) -> bytes:
    """The request body, refused as soon as it outgrows any valid request (the server would
    otherwise buffer whatever a caller sends)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes.",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(
            Code.INVALID_ARGUMENT, f"Invalid value for pageSize: {raw[:32]!r}."
        ) from None
    if size < 0:
        raise ApiError(Code.INVALID_ARGUMENT, "pageSize must not be negative.")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _registry_routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/v1/projects/{project}/locations/{location}/registries")

    def registry_or_404(project: str, location: str, registry: str) -> store.StoredRegistry:
        found = store.get_registry(engine, project, location, registry)
        if found is None:
            name = f"projects/{project}/locations/{location}/registries/{registry}"
            raise ApiError(Code.NOT_FOUND, f"A registry with the name '{name}' doesn't exist.")
        return found

    async def in_thread(fn: Callable[[], T]) -> T:
        # Database and key parsing block; keep them off the event loop.
        return await run_in_threadpool(fn)

    @router.post("")
    async def create_registry(project: str, location: str, request: Request) -> JSONResponse:
        body = resources.parse_body(
            await _body(request), resources.DeviceRegistryIn, "device_registry"
        )
        registry_id = resources.check_id(body.id, "registry")
        resources.check_parent(project, location)

        def work() -> store.StoredRegistry:
            try:
                return store.create_registry(engine, project, location, registry_id)
            except store.AlreadyExists:
                raise ApiError(
                    Code.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={registry_id}).",
                ) from None

        return JSONResponse(resources.registry_json(await in_thread(work)))

    @router.get("/{registry}")
    def get_registry(project: str, location: str, registry: str) -> JSONResponse:
        return JSONResponse(resources.registry_json(registry_or_404(project, location, registry)))

    @router.post("/{registry}/devices")
    async def create_device(
        project: str, location: str, registry: str, request: Request
    ) -> JSONResponse:
        body = resources.parse_body(await _body(request), resources.DeviceIn, "device")
        how = resources.Rendering.from_query(dict(request.query_params))

        def work() -> dict[str, Any]:
            reg = registry_or_404(project, location, registry)
            new = resources.new_device(body)
            try:
                dev = store.create_device(engine, reg, new)
            except store.AlreadyExists:
                raise ApiError(
                    Code.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={new.device_id}).",
                ) from None
            return resources.device_json(reg, dev, how)

        return JSONResponse(await in_thread(work))

    @router.get("/{registry}/devices/{device}")
    def get_device(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        reg = registry_or_404(project, location, registry)
        dev = store.get_device(engine, reg, device)
        if dev is None:
            raise ApiError(
                Code.NOT_FOUND,
                f"A device with the name '{reg.name}/devices/{device[:300]}' doesn't exist.",
            )
        how = resources.Rendering.from_query(dict(request.query_params))
        return JSONResponse(resources.device_json(reg, dev, how))

    @router.get("/{registry}/devices")
    def list_devices(project: str, location: str, registry: str, request: Request) -> JSONResponse:
        for camel, snake in (("deviceIds", "device_ids"), ("deviceNumIds", "device_num_ids")):
            if _query(request, camel, snake) is not None:
                raise ApiError(
                    Code.UNIMPLEMENTED, f"Listing devices by {camel} is not supported yet."
                )
        size = _page_size(_query(request, "pageSize", "page_size"))
        after = resources.decode_page_token(_query(request, "pageToken", "page_token"))
        fields = resources.parse_field_mask(_query(request, "fieldMask", "field_mask"))
        how = resources.Rendering.from_query(dict(request.query_params))
        reg = registry_or_404(project, location, registry)
        devices, more = store.list_devices(engine, reg, after, size)
        out: dict[str, Any] = {
            "devices": [resources.device_json(reg, d, how, fields) for d in devices]
        }
        if more and devices:
            out["nextPageToken"] = resources.encode_page_token(devices[-1].device_id)
        return JSONResponse(out)

    return router
