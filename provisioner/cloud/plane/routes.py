"""``/bridge/v1/*``: the HTTP contract between the broker plugin and the device plane.

The plugin (``deploy/mosquitto/provisioner_plugin.c``) holds one bearer token (the bridge
token file); this router knows only its SHA-256 hash and checks it itself, before reading
the body, so nobody else can admit devices or inject telemetry. Payloads travel as standard
base64 (``payload_b64``). The four calls:

1. ``connect``: admit or refuse a CONNECT; an admission carries the session number, the topic
   patterns the client may publish to and receive on, and the JWT's expiry.
2. ``subscribe``: allow or refuse one SUBSCRIBE; may carry deliveries (the latest config).
3. ``control``: a gateway's attach/detach publish, answered with the new pattern lists,
   error deliveries, and whether to close the connection.
4. ``sync``: the plugin's tick: buffered telemetry/state and disconnects in; disconnects to
   make (expired JWTs included, so the plugin keeps no clock) and deliveries out.

The plane blocks (database, signatures): each call runs it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from provisioner.cloud.plane.service import DevicePlane, Message, Refusal
from provisioner.cloud.plane.sessions import Delivery
from provisioner.cloud.status import Code, error_response
from provisioner.cloud.tokens import token_matches

PREFIX = "/bridge/v1"
MAX_CALL_BYTES = 256 * 1024  # connect (JWT, certificate), subscribe, control
MAX_SYNC_BYTES = 64 * 1024 * 1024  # a sync holds a batch of up-to-256 KB messages
_MAX_STR = 64 * 1024


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ConnectIn(_In):
    client_id: str = Field(max_length=_MAX_STR)
    username: str | None = Field(default=None, max_length=_MAX_STR)
    password: str | None = Field(default=None, max_length=_MAX_STR)
    cert_pem: str | None = Field(default=None, max_length=_MAX_STR)
    address: str | None = Field(default=None, max_length=256)


class SubscribeIn(_In):
    client_id: str = Field(max_length=_MAX_STR)
    session: int
    topic: str = Field(max_length=_MAX_STR)
    qos: int = 0


class ControlIn(_In):
    client_id: str = Field(max_length=_MAX_STR)
    session: int
    topic: str = Field(max_length=_MAX_STR)
    payload_b64: str = ""
    qos: int = 1


class MessageIn(_In):
    client_id: str = Field(max_length=_MAX_STR)
    session: int
    topic: str = Field(max_length=_MAX_STR)
    payload_b64: str = ""
    qos: int = 0


class DisconnectedIn(_In):
    client_id: str = Field(max_length=_MAX_STR)
    session: int


class SyncIn(_In):
    messages: list[MessageIn] = Field(default_factory=list)
    disconnected: list[DisconnectedIn] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _BadRequest(f"{where}.payload_b64 is not standard base64") from None


def _out(d: Delivery, *, with_client: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "topic": d.topic,
        "payload_b64": base64.b64encode(d.payload).decode("ascii"),
        "qos": d.qos,
    }
    if with_client:
        item = {"client_id": d.client_id, **item}
    return item


def bridge_router(plane: DevicePlane, token_hash: str) -> APIRouter:
    """The ``/bridge/v1`` routes for the broker plugin, accepting only the bearer token whose
    SHA-256 hex digest is ``token_hash``."""
    known = [token_hash.lower()]
    router = APIRouter(prefix=PREFIX)

    async def call(
        request: Request, model: type[M], limit: int, work: Callable[[M], dict[str, Any]]
    ) -> JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if (
            scheme.lower() != "bearer"
            or not token.strip()
            or not token_matches(token.strip(), known)
        ):
            return error_response(
                Code.UNAUTHENTICATED,
                "The bridge token is missing or wrong.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return error_response(
                    Code.INVALID_ARGUMENT, f"The request is larger than {limit} bytes."
                )
            chunks.append(chunk)
        try:
            body = model.model_validate_json(b"".join(chunks))
        except (ValueError, ValidationError) as exc:
            where = ""
            if isinstance(exc, ValidationError) and exc.errors():
                where = " at " + ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
            return error_response(Code.INVALID_ARGUMENT, f"Invalid bridge request{where}.")
        try:
            return JSONResponse(await run_in_threadpool(lambda: work(body)))
        except _BadRequest as exc:
            return error_response(Code.INVALID_ARGUMENT, exc.message)

    def connect(body: ConnectIn) -> dict[str, Any]:
        result = plane.connect(
            body.client_id, body.password, cert_pem=body.cert_pem, address=body.address
        )
        if isinstance(result, Refusal):
            return {"allow": False, "reason": result.reason}
        return {
            "allow": True,
            "session": result.session,
            "publish": list(result.publish),
            "subscribe": list(result.subscribe),
            "expires_at": result.expires_at,
        }

    def subscribe(body: SubscribeIn) -> dict[str, Any]:
        result = plane.subscribe(body.client_id, body.session, body.topic, body.qos)
        return {
            "allow": result.allow,
            "deliver": [_out(d, with_client=False) for d in result.deliver],
        }

    def control(body: ControlIn) -> dict[str, Any]:
        payload = _b64(body.payload_b64, "control")
        result = plane.control(body.client_id, body.session, body.topic, payload, body.qos)
        return {
            "allow": result.allow,
            "publish": result.publish,
            "subscribe": result.subscribe,
            "deliver": [_out(d, with_client=False) for d in result.deliver],
            "kick": result.kick,
        }

    def sync(body: SyncIn) -> dict[str, Any]:
        messages = [
            Message(m.client_id, m.session, m.topic, _b64(m.payload_b64, f"messages[{i}]"), m.qos)
            for i, m in enumerate(body.messages)
        ]
        result = plane.sync(messages, [(d.client_id, d.session) for d in body.disconnected])
        return {
            "kick": [{"client_id": c, "session": s} for c, s in result.kick],
            "deliver": [_out(d, with_client=True) for d in result.deliver],
        }

    @router.post("/connect")
    async def connect_route(request: Request) -> JSONResponse:
        return await call(request, ConnectIn, MAX_CALL_BYTES, connect)

    @router.post("/subscribe")
    async def subscribe_route(request: Request) -> JSONResponse:
        return await call(request, SubscribeIn, MAX_CALL_BYTES, subscribe)

    @router.post("/control")
    async def control_route(request: Request) -> JSONResponse:
        return await call(request, ControlIn, MAX_CALL_BYTES, control)

    @router.post("/sync")
    async def sync_route(request: Request) -> JSONResponse:
        return await call(request, SyncIn, MAX_SYNC_BYTES, sync)

    return router
