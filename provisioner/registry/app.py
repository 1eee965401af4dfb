"""The built-in registry's HTTP API, in the Cloud IoT Core v1 REST shape.

Paths, camelCase fields and google.rpc-style errors as Cloud IoT users know them. Requests
carry ``Authorization: Bearer <token>``; the app knows only SHA-256 hashes of tokens.
Walking-skeleton scope: create/get registries, create/get/list devices (issue 5 adds PATCH,
deletes, field masks, registry CA credentials, roles).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from provisioner.registry import store
from provisioner.registry.credentials import InvalidCredential, parse_credentials
from provisioner.registry.tokens import token_matches

_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9\-_.+~%]{2,254}$")
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}},
        status_code=code,
    )


def _int_enums(request: Request) -> bool:
    return "enum-encoding=int" in request.url.query


def _device_json(
    project: str, location: str, registry: str, d: store.StoredDevice, int_enums: bool
) -> dict[str, Any]:
    return {
        "id": d.device_id,
        "name": f"projects/{project}/locations/{location}/registries/{registry}/devices/{d.num_id}",
        "numId": str(d.num_id),
        "credentials": [c.as_json(int_enums) for c in d.credentials],
        "blocked": d.blocked,
        "metadata": d.metadata,
    }


def create_app(engine: Engine, token_hashes: set[str]) -> FastAPI:
    """The registry service over ``engine`` (see :func:`store.open_store`)."""
    app = FastAPI(title="provisioner built-in device registry", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.code, exc.message)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if request.url.path == "/healthz":
            return await call_next(request)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not token_matches(token, token_hashes):
            return _error(401, "Request had invalid authentication credentials.")
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def registry_pk(p: str, loc: str, r: str) -> int:
        pk = store.get_registry(engine, p, loc, r)
        if pk is None:
            raise ApiError(
                404, f"The registry `projects/{p}/locations/{loc}/registries/{r}` does not exist."
            )
        return pk

    @app.post("/v1/projects/{p}/locations/{loc}/registries")
    async def create_registry(p: str, loc: str, request: Request) -> dict[str, Any]:
        body = await _json(request)
        rid = body.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise ApiError(400, "The registry id is invalid.")
        try:
            store.create_registry(engine, p, loc, rid)
        except store.AlreadyExists:
            raise ApiError(409, f"The registry `{rid}` already exists.") from None
        return {"id": rid, "name": f"projects/{p}/locations/{loc}/registries/{rid}"}

    @app.get("/v1/projects/{p}/locations/{loc}/registries/{r}")
    def get_registry(p: str, loc: str, r: str) -> dict[str, Any]:
        registry_pk(p, loc, r)
        return {"id": r, "name": f"projects/{p}/locations/{loc}/registries/{r}"}

    @app.post("/v1/projects/{p}/locations/{loc}/registries/{r}/devices")
    async def create_device(p: str, loc: str, r: str, request: Request) -> dict[str, Any]:
        pk = registry_pk(p, loc, r)
        body = await _json(request)
        did = body.get("id")
        if not isinstance(did, str) or not _ID.match(did):
            raise ApiError(
                400,
                "The device id is invalid: it must start with a letter and "
                "have 3 to 255 characters from [a-zA-Z0-9-_.+~%].",
            )
        try:
            creds = parse_credentials(body.get("credentials"))
        except InvalidCredential as exc:
            raise ApiError(400, str(exc)) from None
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ApiError(400, "metadata must map strings to strings.")
        try:
            dev = store.create_device(engine, pk, did, creds, bool(body.get("blocked")), meta)
        except store.AlreadyExists:
            raise ApiError(409, f"The device `{did}` already exists.") from None
        return _device_json(p, loc, r, dev, _int_enums(request))

    @app.get("/v1/projects/{p}/locations/{loc}/registries/{r}/devices/{d}")
    def get_device(p: str, loc: str, r: str, d: str, request: Request) -> dict[str, Any]:
        dev = store.get_device(engine, registry_pk(p, loc, r), d)
        if dev is None:
            raise ApiError(404, f"The device `{d}` does not exist.")
        return _device_json(p, loc, r, dev, _int_enums(request))

    @app.get("/v1/projects/{p}/locations/{loc}/registries/{r}/devices")
    def list_devices(
        p: str,
        loc: str,
        r: str,
        request: Request,
        pageSize: int = 1000,
        pageToken: str = "",
    ) -> dict[str, Any]:
        pk = registry_pk(p, loc, r)
        if not 1 <= pageSize <= 10000:
            raise ApiError(400, "pageSize must be between 1 and 10000.")
        offset = int(pageToken) if pageToken.isdigit() else 0
        devs, more = store.list_devices(engine, pk, offset, pageSize)
        out: dict[str, Any] = {
            "devices": [_device_json(p, loc, r, d, _int_enums(request)) for d in devs]
        }
        if more:
            out["nextPageToken"] = str(offset + pageSize)
        return out

    return app


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received.")
    return body
