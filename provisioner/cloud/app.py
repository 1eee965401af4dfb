"""The built-in registry's HTTP API, in the Cloud IoT Core v1 REST shape.

Same paths, camelCase proto3 JSON and google.rpc errors as Cloud IoT, so one upload client
(and, later, the official clients) serve both this registry and a real one. Every request but
``GET /healthz`` needs ``Authorization: Bearer <token>``; the app holds only SHA-256 hashes.

Registries: create, get, list, patch (credentials, logLevel, mqttConfig, httpConfig,
eventNotificationConfigs, stateNotificationConfig), delete (only when empty), and
bind/unbind a device to a gateway. Devices: create (gatewayConfig too), get, list
(deviceIds/deviceNumIds filters, fieldMask, paging), patch (credentials, blocked, metadata,
logLevel, gatewayConfig.gatewayAuthMethod), delete; modifyCloudToDeviceConfig,
configVersions, states and sendCommandToDevice. What concerns connected devices is passed to
the device plane (``app.state.plane``), which serves the MQTT bridge. Registry CA
certificates constrain device credentials (``certificates``); roles constrain callers
(``auth``). ``clearblade`` serves the same device operations on the paths the
``clearblade-cloud-iot`` client calls.

All state (the database engine, the device plane) belongs to the app object
:func:`create_app` returns.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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

from provisioner.cloud import clearblade, openapi, resources, service, store
from provisioner.cloud.auth import BearerAuth
from provisioner.cloud.bridge_http import device_router
from provisioner.cloud.hooks import hooks_router
from provisioner.cloud.plane.routes import bridge_router
from provisioner.cloud.plane.service import DevicePlane
from provisioner.cloud.status import ApiError, Code, error_response
from provisioner.cloud.tokens import Role
from provisioner.errors import ConfigError

HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1024 * 1024  # 3 credentials and 256 KB of metadata fit many times over
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    """Database and key parsing block; keep them off the event loop."""
    return await run_in_threadpool(fn)


async def _tell(request: Request, method: str, *args: Any) -> None:
    """Call a hook of the app's device plane (``app.state.plane``), if it has one. The
    plane's hooks are thread-safe and may read the database, so a plain method runs in a
    worker thread; a coroutine one is awaited."""
    plane = getattr(request.app.state, "plane", None)
    if plane is None:
        return
    hook = getattr(plane, method)
    if inspect.iscoroutinefunction(hook):
        await hook(*args)
    else:
        await in_thread(lambda: hook(*args))


def create_app(
    db_url: str,
    token_roles: Mapping[str, Role],
    bridge_token_hash: str | None = None,
    hook_allow: Sequence[str] = ("127.0.0.1/32", "::1/128"),
) -> FastAPI:
    """The registry service on the database at ``db_url`` (tables created if missing),
    accepting bearer tokens whose SHA-256 hex digest is a key of ``token_roles``, each
    allowed what its role allows (see ``auth``).

    The device plane comes with it: the HTTP device bridge (device JWTs), the broker hooks
    for EMQX, mosquitto-go-auth and VerneMQ (callers in ``hook_allow``), and, with
    ``bridge_token_hash``, the MQTT bridge plugin's ``/bridge/v1`` contract for the holder
    of the token with that SHA-256 hex digest."""
    roles = {h.lower(): role for h, role in token_roles.items()}
    if not roles or not all(_SHA256_HEX.fullmatch(h) for h in roles):
        raise ConfigError("the registry needs at least one token hash (64 hex digits)")
    engine = store.open_store(db_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="provisioner built-in device registry (Cloud IoT v1 shape)",
        docs_url=None,
        redoc_url=None,
        # Public and read-only, like /healthz: it describes the Cloud IoT paths, nothing
        # about this registry's contents (:mod:`provisioner.cloud.openapi`).
        openapi_url=openapi.OPENAPI_PATH,
        lifespan=lifespan,
    )
    app.state.engine = engine
    plane = DevicePlane(engine)
    app.state.plane = plane
    app.add_middleware(
        BearerAuth, token_roles=roles, open_paths={HEALTH_PATH, openapi.OPENAPI_PATH}
    )
    _install_error_handlers(app)

    @app.get(HEALTH_PATH)
    def healthz() -> JSONResponse:
        """Ready means the database answers, not merely that the port is open."""
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    if bridge_token_hash is not None:
        app.include_router(bridge_router(plane, bridge_token_hash))
    app.include_router(device_router(plane))
    app.include_router(hooks_router(plane, hook_allow, bridge_token_hash))
    app.include_router(_registry_routes(engine))
    app.include_router(clearblade.routes(engine, _body, in_thread, _tell))
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]
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
        # Names where and why, never pydantic's ``input`` (error_body clips the rest).
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


def _registry_routes(engine: Engine) -> APIRouter:
    """The Cloud IoT v1 paths; each handler parses the request and runs the operation in a
    worker thread (database and key parsing block). Changes that concern connected devices
    (a new config, a device or registry changed, a command) go to the app's device plane."""
    router = APIRouter(prefix="/v1/projects/{project}/locations/{location}/registries")

    def how_of(request: Request) -> resources.Rendering:
        return resources.Rendering.from_query(dict(request.query_params))

    @router.post("")
    async def create_registry(project: str, location: str, request: Request) -> JSONResponse:
        body = resources.parse_body(
            await _body(request), resources.DeviceRegistryIn, "device_registry"
        )
        how = how_of(request)
        return JSONResponse(
            await in_thread(lambda: service.create_registry(engine, project, location, body, how))
        )

    @router.get("")
    def list_registries(project: str, location: str, request: Request) -> JSONResponse:
        q = request.query_params
        size = service.page_size(service.query(q, "pageSize", "page_size"))
        after = resources.decode_page_token(service.query(q, "pageToken", "page_token"))
        return JSONResponse(
            service.list_registries(engine, project, location, size, after, how_of(request))
        )

    @router.get("/{registry}")
    def get_registry(project: str, location: str, registry: str, request: Request) -> JSONResponse:
        reg = service.registry_or_404(engine, project, location, registry)
        return JSONResponse(resources.registry_json(reg, how_of(request)))

    @router.patch("/{registry}")
    async def patch_registry(
        project: str, location: str, registry: str, request: Request
    ) -> JSONResponse:
        body = resources.parse_body(
            await _body(request), resources.DeviceRegistryIn, "device_registry"
        )
        mask = service.query(request.query_params, "updateMask", "update_mask")
        how = how_of(request)

        def work() -> store.StoredRegistry:
            reg = service.registry_or_404(engine, project, location, registry)
            return service.patch_registry_stored(engine, reg, body, mask)

        updated = await in_thread(work)
        await _tell(request, "registry_changed", updated)
        return JSONResponse(resources.registry_json(updated, how))

    @router.delete("/{registry}")
    def delete_registry(project: str, location: str, registry: str) -> JSONResponse:
        service.delete_registry(
            engine, service.registry_or_404(engine, project, location, registry)
        )
        return JSONResponse({})

    @router.post("/{registry}/devices")
    async def create_device(
        project: str, location: str, registry: str, request: Request
    ) -> JSONResponse:
        body = resources.parse_body(await _body(request), resources.DeviceIn, "device")
        how = how_of(request)

        def work() -> dict[str, Any]:
            reg = service.registry_or_404(engine, project, location, registry)
            return service.create_device(engine, reg, body, how)

        return JSONResponse(await in_thread(work))

    @router.get("/{registry}/devices/{device}")
    def get_device(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        reg = service.registry_or_404(engine, project, location, registry)
        return JSONResponse(service.get_device(engine, reg, device, how_of(request)))

    @router.patch("/{registry}/devices/{device}")
    async def patch_device(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        body = resources.parse_body(await _body(request), resources.DeviceIn, "device")
        mask = service.query(request.query_params, "updateMask", "update_mask")
        how = how_of(request)

        def work() -> tuple[store.StoredRegistry, dict[str, Any]]:
            reg = service.registry_or_404(engine, project, location, registry)
            return reg, service.patch_device(engine, reg, device, body, mask, how)

        reg, out = await in_thread(work)
        await _tell(request, "device_changed", reg, out.get("id", device))
        return JSONResponse(out)

    @router.delete("/{registry}/devices/{device}")
    async def delete_device(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)

        def work() -> tuple[store.StoredRegistry, str]:
            reg = service.registry_or_404(engine, project, location, registry)
            # The plane knows sessions by device id; a numId in the path is resolved first.
            dev = service.device_or_404(engine, reg, device)
            service.delete_device(engine, reg, device)
            return reg, dev.device_id

        reg, device_id = await in_thread(work)
        await _tell(request, "device_changed", reg, device_id)
        return JSONResponse({})

    @router.get("/{registry}/devices")
    def list_devices(project: str, location: str, registry: str, request: Request) -> JSONResponse:
        q = service.device_query(request.query_params)
        reg = service.registry_or_404(engine, project, location, registry)
        return JSONResponse(service.list_devices(engine, reg, q, how_of(request)))

    @router.post("/{registry}/devices/{device}:modifyCloudToDeviceConfig")
    async def modify_config(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        body = resources.parse_body(await _body(request), resources.ModifyConfigIn, "request")

        def work() -> tuple[store.StoredRegistry, store.StoredDevice, Any]:
            reg = service.registry_or_404(engine, project, location, registry)
            return reg, *service.modify_config(engine, reg, device, body)

        reg, dev, config = await in_thread(work)
        await _tell(request, "config_changed", reg, dev, config)
        return JSONResponse(resources.config_json(config))

    @router.get("/{registry}/devices/{device}/configVersions")
    def config_versions(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        num = service.query(request.query_params, "numVersions", "num_versions")
        reg = service.registry_or_404(engine, project, location, registry)
        return JSONResponse(service.config_versions(engine, reg, device, num))

    @router.get("/{registry}/devices/{device}/states")
    def list_states(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        num = service.query(request.query_params, "numStates", "num_states")
        reg = service.registry_or_404(engine, project, location, registry)
        return JSONResponse(service.list_states(engine, reg, device, num))

    @router.post("/{registry}/devices/{device}:sendCommandToDevice")
    async def send_command(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        device = resources.check_device_ident(device)
        body = resources.parse_body(await _body(request), resources.SendCommandIn, "request")

        def work() -> tuple[store.StoredRegistry, service.Command]:
            reg = service.registry_or_404(engine, project, location, registry)
            return reg, service.command(engine, reg, device, body)

        reg, cmd = await in_thread(work)
        if getattr(request.app.state, "plane", None) is None:  # no device plane: none subscribed
            raise service.not_subscribed(cmd.device)
        await _tell(request, "send_command", reg, cmd.device, cmd.data, cmd.subfolder)
        return JSONResponse({})

    @router.post("/{registry}:bindDeviceToGateway")
    async def bind(project: str, location: str, registry: str, request: Request) -> JSONResponse:
        body = resources.parse_body(await _body(request), resources.BindIn, "request")

        def work() -> tuple[store.StoredRegistry, str]:
            reg = service.registry_or_404(engine, project, location, registry)
            return reg, service.bind(engine, reg, body)

        reg, device_id = await in_thread(work)
        await _tell(request, "device_changed", reg, device_id)
        return JSONResponse({})

    @router.post("/{registry}:unbindDeviceFromGateway")
    async def unbind(project: str, location: str, registry: str, request: Request) -> JSONResponse:
        body = resources.parse_body(await _body(request), resources.BindIn, "request")

        def work() -> tuple[store.StoredRegistry, str]:
            reg = service.registry_or_404(engine, project, location, registry)
            return reg, service.unbind(engine, reg, body)

        reg, device_id = await in_thread(work)
        await _tell(request, "device_changed", reg, device_id)
        return JSONResponse({})

    return router
