"""The registry's device operations on the paths ClearBlade IoT Core serves, so the
``clearblade-cloud-iot`` client (a drop-in for ``google.cloud.iot_v1``) works against it.

ClearBlade puts every registry in its own "system": the client calls
``/api/v/4/webhook/execute/{systemKey}/cloudiot_devices`` with the token in
``ClearBlade-UserToken`` and names the device in ``?name=`` (a full device path, or on PATCH
the bare device id). Create requests carry no registry at all, so the system key must
identify it: here it is ``{project}:{location}:{registry}`` (ids cannot contain ``:``), which
is what ``REGISTRY_SYSKEY`` is set to. Everything else (validation, the CA rule, roles,
errors) is the Cloud IoT v1 service's own, through :mod:`service`.

The client always sends a few fields this registry does not keep (``config``,
``gatewayConfig``) with their default values; defaults are dropped before parsing, anything
else in them is refused as on the v1 paths.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from provisioner.cloud import resources, service, store
from provisioner.cloud.status import ApiError, Code

PATH = "/api/v/4/webhook/execute/{system_key}/cloudiot_devices"
_NON_GATEWAY = {None, "", 0, 2, "GATEWAY_TYPE_UNSPECIFIED", "NON_GATEWAY"}

T = TypeVar("T")


def system_key(project: str, location: str, registry: str) -> str:
    """The ClearBlade system key that stands for a registry here."""
    return f"{project}:{location}:{registry}"


def _registry(engine: Engine, key: str) -> store.StoredRegistry:
    parts = key.split(":")
    if len(parts) != 3 or not all(parts):
        raise ApiError(
            Code.NOT_FOUND,
            f"Unknown system key `{key[:100]}`; expected {{project}}:{{location}}:{{registry}}.",
        )
    return service.registry_or_404(engine, *parts)


def _device_ident(reg: store.StoredRegistry, name: str | None) -> str:
    """The device a ``name`` parameter means: a full path in this registry, or an id."""
    if not name:
        raise ApiError(Code.INVALID_ARGUMENT, "The device name must be specified.")
    if "/" not in name:
        return resources.check_device_ident(name)
    prefix = reg.name + "/devices/"
    if not name.startswith(prefix) or "/" in name[len(prefix) :]:
        raise ApiError(Code.NOT_FOUND, f"A device with the name '{name[:300]}' doesn't exist.")
    return resources.check_device_ident(name[len(prefix) :])


def _without_defaults(raw: bytes) -> bytes:
    """The body with the client's always-sent default ``config`` and ``gatewayConfig``
    removed; malformed JSON is left for the parser to report."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return raw
    if not isinstance(body, dict):
        return raw
    config = body.get("config")
    if isinstance(config, dict) and not any(config.values()):
        del body["config"]
    gateway = body.get("gatewayConfig")
    if isinstance(gateway, dict) and gateway.get("gatewayType") in _NON_GATEWAY:
        rest = {k: v for k, v in gateway.items() if k != "gatewayType"}
        if not any(rest.values()):
            del body["gatewayConfig"]
    return json.dumps(body).encode()


async def _no_plane(request: Request, method: str, *args: Any) -> None:
    """The default ``tell``: no device plane to tell."""


def routes(
    engine: Engine,
    read_body: Callable[[Request], Awaitable[bytes]],
    in_thread: Callable[[Callable[[], Any]], Awaitable[Any]],
    tell: Callable[..., Awaitable[None]] = _no_plane,
) -> APIRouter:
    """The ClearBlade-shaped device routes; ``tell(request, hook, *args)`` informs the
    device plane of a changed or deleted device, as the v1 routes do."""
    router = APIRouter()
    how = resources.Rendering()  # the client reads enums as names

    @router.get(PATH)
    def get_or_list(system_key: str, request: Request) -> JSONResponse:
        reg = _registry(engine, system_key)
        params = request.query_params
        name = params.get("name")
        if name is not None:
            return JSONResponse(service.get_device(engine, reg, _device_ident(reg, name), how))
        parent = params.get("parent")
        if parent and parent != reg.name:
            raise ApiError(
                Code.NOT_FOUND, f"A registry with the name '{parent[:300]}' doesn't exist."
            )
        return JSONResponse(service.list_devices(engine, reg, service.device_query(params), how))

    @router.post(PATH)
    async def create(system_key: str, request: Request) -> JSONResponse:
        method = request.query_params.get("method")
        if method:
            raise ApiError(Code.UNIMPLEMENTED, f"{method[:64]} is not supported by this registry.")
        raw = _without_defaults(await read_body(request))
        body = resources.parse_body(raw, resources.DeviceIn, "device")

        def work() -> dict[str, Any]:
            return service.create_device(engine, _registry(engine, system_key), body, how)

        return JSONResponse(await in_thread(work))

    @router.patch(PATH)
    async def patch(system_key: str, request: Request) -> JSONResponse:
        params = request.query_params
        raw = _without_defaults(await read_body(request))
        body = resources.parse_body(raw, resources.DeviceIn, "device")

        def work() -> tuple[store.StoredRegistry, dict[str, Any]]:
            reg = _registry(engine, system_key)
            ident = _device_ident(reg, params.get("name"))
            return reg, service.patch_device(
                engine, reg, ident, body, service.query(params, "updateMask", "update_mask"), how
            )

        reg, out = await in_thread(work)
        await tell(request, "device_changed", reg, out["id"])
        return JSONResponse(out)

    @router.delete(PATH)
    async def delete(system_key: str, request: Request) -> JSONResponse:
        def work() -> tuple[store.StoredRegistry, str]:
            reg = _registry(engine, system_key)
            dev = service.device_or_404(
                engine, reg, _device_ident(reg, request.query_params.get("name"))
            )
            service.delete_device(engine, reg, str(dev.num_id))
            return reg, dev.device_id

        reg, device_id = await in_thread(work)
        await tell(request, "device_changed", reg, device_id)
        return JSONResponse({})

    return router
