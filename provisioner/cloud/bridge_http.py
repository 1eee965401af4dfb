"""The HTTP device bridge: Cloud IoT's ``cloudiotdevice`` v1 methods for devices that do not
speak MQTT.

Three routes, each authenticated by the device's own JWT in ``Authorization: Bearer`` (no
session: every request carries a token, as Cloud IoT required), checked by
``DevicePlane.authenticate_http`` with the same rules as an MQTT connect (alg, aud, iat, exp,
lifetime, signature against an unexpired credential of *this* device, blocked device,
registry ``httpConfig`` disabled). On the bridge's HTTPS listener (``[bridge] https_port``,
:mod:`provisioner.cloud.server`) a request without ``Authorization`` may instead come over a
connection with a TLS client certificate of the product's CA that is one of the device's
current credentials (mTLS, as on the MQTT bridge's mTLS listener); the plain listener never
has one, so a proxy cannot make one up:

- ``POST /v1/{device}:publishEvent`` ``{binaryData, subFolder}`` -> ``{}``: telemetry into the
  event store, routed like an MQTT ``/devices/{d}/events[/subFolder]`` publish;
- ``POST /v1/{device}:setState`` ``{state: {binaryData}}`` -> ``{}``: the device's state;
- ``GET /v1/{device}/config?localVersion=N`` -> ``{version, binaryData}``: 0 (or absent) asks for
  the current config; a lower N returns the current one; N equal to the current version
  returns only ``{version}`` (nothing newer); N above it is OUT_OF_RANGE.

Shapes from Google's reference ("Method: projects.locations.registries.devices.getConfig" /
publishEvent / setState, cloud.google.com/iot/docs/reference/cloudiotdevice/rest/v1) and
"Publishing over the HTTP bridge" (cloud.google.com/iot/docs/how-tos/http-bridge), whose curl
examples and Python sample (``cloudiot_http_example.py``) send the proto field names
(``binary_data``, ``local_version``) and URL-safe base64; both spellings and both alphabets
are accepted. ``{device}`` is the device id or its numId, as in Cloud IoT.

A config fetched over HTTP counts as delivered and acknowledged (``lastConfigSendTime``,
the version's ``deviceAckTime``): HTTP has no separate acknowledgement, and a device asking
with ``localVersion`` equal to the current version says it holds it.

Gateways (``gatewayInfo``, in the body or, for getConfig, as ``gatewayInfo.delegatedDeviceId`` /
``gatewayInfo.gatewayId`` query parameters; ClearBlade's "GatewayInfo" and "Using gateways with
the HTTP bridge"): either the path and JWT are the gateway's and ``delegatedDeviceId`` names the
device it acts for, or the path and JWT are the device's and ``gatewayId`` names the gateway
it came through. Either way the device must be bound to the gateway (whatever the gateway's
``gatewayAuthMethod``: over HTTP the binding is the association, the JWT the
authentication), neither may be blocked, and the request then acts on the device
(``lastAccessedGatewayId`` stamped).

Errors are google.rpc bodies (the app's :class:`ApiError` handler).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.asgi_tls import client_certificate
from provisioner.cloud import device_data, resources, service, store
from provisioner.cloud.auth import bearer_token
from provisioner.cloud.status import ApiError, Code

if TYPE_CHECKING:
    from provisioner.cloud.plane.service import DevicePlane

PREFIX = "/v1/projects/{project}/locations/{location}/registries/{registry}/devices"
# Cloud IoT's limits: a telemetry event up to 256 KB, a state up to 64 KB (device_data checks
# the state again). Base64 and the JSON around it fit in the body limit.
MAX_EVENT_BYTES = 256 * 1024
MAX_BODY_BYTES = 512 * 1024
MAX_SUBFOLDER = 256
_B64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")
MISSING_JWT = (
    "Request had invalid authentication credentials. Expected a device JWT in "
    "'Authorization: Bearer <JWT>' (or a TLS client certificate on the HTTPS listener)."
)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, refused once it outgrows any valid request."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes.",
            )
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(Code.INVALID_ARGUMENT, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(Code.INVALID_ARGUMENT, "Invalid JSON payload received: not an object.")
    return body


def _field(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field by its proto3 JSON name or its proto name (Google's sample sends the latter)."""
    return body[camel] if camel in body else body.get(snake)


def _check_fields(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    """Unknown fields are refused as Google's proto3 JSON parser did."""
    for name in body:
        if name not in allowed:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f'Invalid JSON payload received. Unknown name "{str(name)[:64]}" at '
                f"'{what}': Cannot find field.",
            )


def decode_binary(value: Any, where: str) -> bytes:
    """A proto3 ``bytes`` value: standard or URL-safe base64, padding optional."""
    if value is None:
        return b""
    if not isinstance(value, str) or not _B64.fullmatch(value):
        raise ApiError(
            Code.INVALID_ARGUMENT, f"Invalid value at '{where}' (TYPE_BYTES): not base64."
        )
    text = value.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            Code.INVALID_ARGUMENT, f"Invalid value at '{where}' (TYPE_BYTES): not base64."
        ) from None


def _subfolder(value: Any) -> str:
    """The telemetry subfolder, as the MQTT topic suffix after ``events/`` would carry it."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(Code.INVALID_ARGUMENT, "Invalid value at 'sub_folder' (TYPE_STRING).")
    if len(value) > MAX_SUBFOLDER or any(c in value for c in "+#\0"):
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Invalid subfolder: at most {MAX_SUBFOLDER} characters, no MQTT wildcards.",
        )
    return value.strip("/")


@dataclass(frozen=True)
class GatewayInfo:
    """Cloud IoT's GatewayInfo union: exactly one of the two is set."""

    delegated_device_id: str | None = None
    gateway_id: str | None = None


GATEWAY_FIELDS = {"gatewayInfo", "gateway_info"}


def _gateway_info(delegated: Any, gateway: Any, where: str = "gateway_info") -> GatewayInfo | None:
    for value, name in ((delegated, "delegated_device_id"), (gateway, "gateway_id")):
        if value is not None and not isinstance(value, str):
            raise ApiError(Code.INVALID_ARGUMENT, f"Invalid value at '{where}.{name}'.")
    if delegated and gateway:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Only one of '{where}.delegated_device_id' and '{where}.gateway_id' may be set.",
        )
    if delegated:
        return GatewayInfo(delegated_device_id=resources.check_device_ident(delegated))
    if gateway:
        return GatewayInfo(gateway_id=resources.check_device_ident(gateway))
    return None


def _gateway_info_of_body(body: Mapping[str, Any]) -> GatewayInfo | None:
    info = _field(body, "gatewayInfo", "gateway_info")
    if info is None:
        return None
    if not isinstance(info, dict):
        raise ApiError(Code.INVALID_ARGUMENT, "Invalid value at 'gateway_info'.")
    _check_fields(
        info,
        {"delegatedDeviceId", "delegated_device_id", "gatewayId", "gateway_id"},
        "gateway_info",
    )
    return _gateway_info(
        _field(info, "delegatedDeviceId", "delegated_device_id"),
        _field(info, "gatewayId", "gateway_id"),
    )


def _gateway_info_of_query(request: Request) -> GatewayInfo | None:
    """gRPC transcoding puts a GET's message fields in the query: ``gatewayInfo.gatewayId``."""
    q = request.query_params
    return _gateway_info(
        q.get("gatewayInfo.delegatedDeviceId", q.get("gateway_info.delegated_device_id")),
        q.get("gatewayInfo.gatewayId", q.get("gateway_info.gateway_id")),
    )


def _local_version(request: Request) -> int:
    raw = service.query(request.query_params, "localVersion", "local_version")
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            f"Invalid value at 'local_version' (TYPE_INT64), \"{raw[:32]}\".",
        )
    return int(raw)


# What the HTTPS listener serves (docs/field.md's nginx rule, plus the health check).
DEVICE_PATH = re.compile(
    r"/v1/projects/[^/]+/locations/[^/]+/registries/[^/]+/devices/[^/:]+"
    r"(:publishEvent|:setState|/config)"
)


def device_paths_only(app: ASGIApp) -> ASGIApp:
    """``app`` answering only the device bridge's paths and ``/healthz`` (404 otherwise):
    the face the registry process shows on the bridge's HTTPS listener, where devices, not
    admins or brokers, connect."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (
            scope["path"] == "/healthz" or DEVICE_PATH.fullmatch(scope["path"])
        ):
            response = JSONResponse(
                {"error": {"code": 404, "message": "Not found.", "status": "NOT_FOUND"}},
                status_code=404,
            )
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


def device_router(plane: DevicePlane) -> APIRouter:
    """The device bridge's routes. They are let past the service-account check by
    :func:`provisioner.cloud.auth.self_authenticated` and authenticate the device here."""
    router = APIRouter(prefix=PREFIX)
    engine = plane.engine

    def authenticated(
        project: str,
        location: str,
        registry: str,
        device: str,
        jwt: str | x509.Certificate,
        via: GatewayInfo | None = None,
    ) -> tuple[store.StoredRegistry, store.StoredDevice]:
        """The registry and the device a request acts on, once its JWT (or TLS client
        certificate) proves it is the device in the path (and, through a gateway, once the
        binding allows it). Blocks (database, signature check): call from a worker
        thread."""
        ident = resources.check_device_ident(device)
        reg = service.registry_or_404(engine, project, location, registry)
        found = store.get_device(engine, reg, ident)
        if found is None:
            raise service.device_not_found(reg, ident)
        plane.authenticate_http(reg, found, jwt)
        if via is None:
            return reg, found
        if via.delegated_device_id is not None:
            gateway, child = found, store.get_device(engine, reg, via.delegated_device_id)
            if child is None:
                raise service.device_not_found(reg, via.delegated_device_id)
        else:
            assert via.gateway_id is not None
            child, other = found, store.get_device(engine, reg, via.gateway_id)
            if other is None:
                raise service.device_not_found(reg, via.gateway_id)
            gateway = other
        if not gateway.is_gateway:
            raise ApiError(
                Code.INVALID_ARGUMENT, f"The device `{gateway.device_id}` is not a gateway."
            )
        if child.is_gateway:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The device `{child.device_id}` is a gateway and cannot act through another.",
            )
        for dev in (gateway, child):
            if dev.blocked:
                raise ApiError(Code.PERMISSION_DENIED, f"The device `{dev.device_id}` is blocked.")
        if not device_data.is_bound(engine, gateway.num_id, child.num_id):
            raise ApiError(
                Code.PERMISSION_DENIED,
                f"The device `{child.device_id}` is not bound to the gateway "
                f"`{gateway.device_id}`.",
            )
        device_data.record_gateway_access(
            engine, child.num_id, gateway.device_id, datetime.now(UTC)
        )
        return reg, child

    def device_jwt(request: Request) -> str | x509.Certificate:
        """The bearer JWT; without one, the connection's client certificate, if any."""
        header = request.headers.get("authorization")
        token = bearer_token(header)
        if token is not None:
            return token
        cert = client_certificate(request.scope) if header is None else None
        if cert is None:
            raise ApiError(Code.UNAUTHENTICATED, MISSING_JWT)
        return cert

    @router.post("/{device}:publishEvent")
    async def publish_event(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        jwt = device_jwt(request)
        body = await _json_body(request)
        _check_fields(
            body, {"binaryData", "binary_data", "subFolder", "sub_folder", *GATEWAY_FIELDS}, ""
        )
        via = _gateway_info_of_body(body)
        data = decode_binary(_field(body, "binaryData", "binary_data"), "binary_data")
        if len(data) > MAX_EVENT_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The event data is {len(data)} bytes; the limit is {MAX_EVENT_BYTES}.",
            )
        subfolder = _subfolder(_field(body, "subFolder", "sub_folder"))

        def work() -> None:
            reg, dev = authenticated(project, location, registry, device, jwt, via)
            plane.publish_event(reg, dev, subfolder, data)

        await run_in_threadpool(work)
        return JSONResponse({})

    @router.post("/{device}:setState")
    async def set_state(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        jwt = device_jwt(request)
        body = await _json_body(request)
        _check_fields(body, {"state", *GATEWAY_FIELDS}, "")
        via = _gateway_info_of_body(body)
        state = body.get("state")
        if not isinstance(state, dict):
            raise ApiError(Code.INVALID_ARGUMENT, "Invalid value at 'state': expected an object.")
        _check_fields(state, {"binaryData", "binary_data"}, "state")
        data = decode_binary(_field(state, "binaryData", "binary_data"), "state.binary_data")
        if len(data) > device_data.MAX_STATE_BYTES:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The state data is {len(data)} bytes; the limit is {device_data.MAX_STATE_BYTES}.",
            )

        def work() -> None:
            reg, dev = authenticated(project, location, registry, device, jwt, via)
            plane.set_state(reg, dev, data)

        await run_in_threadpool(work)
        return JSONResponse({})

    @router.get("/{device}/config")
    async def get_config(
        project: str, location: str, registry: str, device: str, request: Request
    ) -> JSONResponse:
        jwt = device_jwt(request)
        local = _local_version(request)
        via = _gateway_info_of_query(request)

        def work() -> dict[str, Any]:
            reg, dev = authenticated(project, location, registry, device, jwt, via)
            current = device_data.latest_config(engine, dev.num_id)
            if current is None:  # deleted between the two reads
                raise service.device_not_found(reg, dev.device_id)
            if local > current.version:
                raise ApiError(
                    Code.OUT_OF_RANGE,
                    f"The local version {local} is newer than the latest configuration "
                    f"version {current.version}.",
                )
            now = datetime.now(UTC)
            if local == current.version:
                # Nothing newer; the device holds this version.
                device_data.ack_config(engine, dev.num_id, current.version, now)
                return {"version": str(current.version)}
            device_data.touch(engine, dev.num_id, last_config_send_time=now)
            device_data.ack_config(engine, dev.num_id, current.version, now)
            return {
                "version": str(current.version),
                "binaryData": base64.b64encode(current.data).decode(),
            }

        return JSONResponse(await run_in_threadpool(work))

    return router
