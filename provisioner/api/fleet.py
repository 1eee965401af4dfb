"""Field enrollment over HTTP: the device-facing routes (Thistle's shapes) and the admins'.

Device-facing (:func:`fleet_device_router`, served on the devices' TLS listener; no user
token, the enrollment or device token is the credential):

- ``POST /enroll``, header ``Thistle-Device-Enrollment-Token: <token>``, optional
  ``label`` (form field, or JSON ``{"label": ...}``) -> ``{"device_id", "device_token"}``.
- ``POST /identity`` (the default), ``Authorization: Bearer <device_token>``, a PEM (or DER)
  CSR as the body, or ``csr`` in a form or JSON -> ``{"device_id",
  "device_certificate_pem", "ca_chain_pem", ...}``: the key never leaves the device.
- ``GET /identity`` (the document's mode), same header -> the same plus
  ``device_private_key_pem``, a key made for this answer only (403 when
  ``fleet.allow_server_keys`` is off).
- ``POST /identity/renew`` over mTLS with the current identity certificate: an empty body
  keeps the key, a CSR replaces it.

Answers 401 (token, the same message whatever is wrong with it), 403 (policy), 409 (the
device has its identity already), 422 (a bad CSR), 429 with ``Retry-After`` past
``fleet.rate_per_minute`` requests per client address, 503 while the HSM or the registry
is unavailable. Bodies are parsed here, not by pydantic, so no validation error can echo a
token back. Errors leave in the API's shape whichever app mounts the router.

Admin (:func:`fleet_admin_router`, in the API under user tokens): enrollment tokens
(create, list, regenerate), devices (list, revoke).
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations.

import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.api.security import ApiProblem, Guard
from provisioner.api.security import problem_of as security_problem_of
from provisioner.asgi_tls import client_certificate
from provisioner.auth import users
from provisioner.enrollment.certs import MAX_CSR_BYTES, BadCsrError
from provisioner.errors import (
    AuthenticationError,
    CaNotInitialisedError,
    ConfigError,
    HsmError,
    PolicyViolationError,
    ProvisionerError,
    RegistryError,
)
from provisioner.fleet import service, tokens
from provisioner.fleet.ratelimit import RateLimiter
from provisioner.settings import Settings

ENROLLMENT_HEADER = "Thistle-Device-Enrollment-Token"
_MAX_BODY = MAX_CSR_BYTES + 1024


class _TooMany(ApiProblem):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429,
            "RESOURCE_EXHAUSTED",
            f"too many requests from this address: retry in {retry_after} s",
        )
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        r = super().response()
        r.headers["Retry-After"] = str(self.retry_after)
        return r


def problem_of(exc: ProvisionerError) -> ApiProblem:
    """The HTTP answer to a fleet error."""
    if isinstance(exc, service.RenewalRefusedError) and exc.reason == "no_client_certificate":
        return ApiProblem(401, "UNAUTHENTICATED", str(exc))
    if isinstance(exc, AuthenticationError):
        return ApiProblem(401, "UNAUTHENTICATED", str(exc))
    if isinstance(exc, BadCsrError):
        return ApiProblem(422, "INVALID_ARGUMENT", str(exc))
    if isinstance(exc, PolicyViolationError):
        return ApiProblem(403, "PERMISSION_DENIED", str(exc))
    if isinstance(exc, HsmError | CaNotInitialisedError | RegistryError | ConfigError):
        return ApiProblem(503, "UNAVAILABLE", str(exc))
    return security_problem_of(exc)


Handler = Callable[..., Awaitable[JSONResponse]]


def _answers(fn: Handler) -> Handler:
    """Errors become the API's error shape here, not in an app's exception handlers: the
    router is mounted by more than one app."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> JSONResponse:
        try:
            return await fn(*args, **kwargs)
        except ApiProblem as exc:
            return exc.response()
        except ProvisionerError as exc:
            return problem_of(exc).response()

    return wrapper


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise ApiProblem(413, "INVALID_ARGUMENT", f"request body over {_MAX_BODY} bytes")
    return body


async def _fields(request: Request) -> dict[str, str]:
    """String fields of a JSON object, urlencoded or multipart form body ({} otherwise)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        await _body(request)
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype == "application/json" or ctype.endswith("+json"):
        import json

        try:
            data = json.loads(await _body(request) or b"{}")
        except ValueError:
            raise ApiProblem(400, "INVALID_ARGUMENT", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiProblem(400, "INVALID_ARGUMENT", "send a JSON object")
        return {k: v for k, v in data.items() if isinstance(v, str)}
    return {}


async def _csr(request: Request) -> bytes | None:
    """The CSR of an identity or renewal request, as PEM: a ``csr`` field (form, JSON), or
    the body itself (PEM, or DER as ``application/pkcs10``); None for an empty body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded" and (await _body(request)).lstrip().startswith(
        b"-----BEGIN"
    ):
        ctype = ""  # a PEM body under curl's default --data content type: the body is the CSR
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data") or (
        ctype == "application/json" or ctype.endswith("+json")
    ):
        fields = await _fields(request)
        value = fields.get("csr") or fields.get("csr_pem")
        return value.encode() if value else None
    body = (await _body(request)).strip()
    if not body:
        return None
    if body.startswith(b"-----BEGIN"):
        return body
    try:
        csr = x509.load_der_x509_csr(body)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise BadCsrError("the body is neither a PEM nor a DER certificate request") from None
    return csr.public_bytes(serialization.Encoding.PEM)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "UNAUTHENTICATED", "send Authorization: Bearer <device_token>")
    return token.strip()


def fleet_device_router(
    settings: Settings, engine: Engine, *, ca: service.CaSource | None = None
) -> APIRouter:
    """The device-facing routes. ``ca`` opens the CA for one signature (default: a
    :class:`~provisioner.fleet.service.CaKeeper` owned by this router, which keeps the
    token open: the devices' listener is a process of its own)."""
    r = APIRouter(tags=["fleet devices"])
    limiter = RateLimiter(settings.fleet.rate_per_minute)
    ca_source: service.CaSource = ca or service.CaKeeper(settings)

    def limit(request: Request) -> None:
        wait = limiter.retry_after(_peer(request) or "?")
        if wait:
            raise _TooMany(wait)

    @r.post("/enroll")
    @_answers
    async def enroll(request: Request) -> JSONResponse:
        limit(request)
        token = request.headers.get(ENROLLMENT_HEADER, "")  # none: refused (and audited)
        label = (await _fields(request)).get("label")
        answer = await run_in_threadpool(
            service.enroll, settings, engine, token, label, peer=_peer(request)
        )
        return JSONResponse(answer.as_json(), 200)

    async def _identity(request: Request, csr: bytes | None) -> JSONResponse:
        answer = await run_in_threadpool(
            service.issue_identity,
            settings,
            engine,
            _bearer(request),
            csr,
            peer=_peer(request),
            ca=ca_source,
        )
        return JSONResponse(answer.as_json(), 200, headers={"Cache-Control": "no-store"})

    @r.get("/identity")
    @_answers
    async def identity_server_key(request: Request) -> JSONResponse:
        limit(request)
        return await _identity(request, None)

    @r.post("/identity")
    @_answers
    async def identity_csr(request: Request) -> JSONResponse:
        limit(request)
        csr = await _csr(request)
        if csr is None:
            raise ApiProblem(
                422, "INVALID_ARGUMENT", "send the device's CSR (PEM) as the body, or GET /identity"
            )
        return await _identity(request, csr)

    @r.post("/identity/renew")
    @_answers
    async def renew(request: Request) -> JSONResponse:
        limit(request)
        cert = client_certificate(request.scope)
        csr = await _csr(request)
        answer = await run_in_threadpool(
            service.renew, settings, engine, cert, csr, peer=_peer(request), ca=ca_source
        )
        return JSONResponse(answer.as_json(), 200)

    return r


class NewToken(BaseModel):
    registry: str | None = Field(default=None, max_length=300)
    label: str | None = Field(default=None, max_length=tokens.MAX_LABEL_CHARS)
    ttl_days: int | None = Field(default=None, ge=1, le=3650)
    max_uses: int | None = Field(default=None, ge=1, le=1_000_000)


class Regenerate(BaseModel):
    ttl_days: int | None = Field(default=None, ge=1, le=3650)


class RevokeDevice(BaseModel):
    reason: str = Field(default="unspecified", max_length=32)


TokenId = Annotated[int, Path(ge=1, le=2**63 - 1)]
DeviceId = Annotated[str, Path(max_length=128)]
Who = users.Principal


def fleet_admin_router(engine: Engine, settings: Settings, guard: Guard) -> APIRouter:
    """``/fleet/...`` for admins (``fleet.manage``, ``fleet.revoke``) and readers
    (``fleet.read``). A new or regenerated token is in the answer once, never again."""
    r = APIRouter(prefix="/fleet", tags=["fleet"])

    def _ttl(days: int | None) -> timedelta:
        return timedelta(days=days or settings.fleet.token_ttl_days)

    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProvisionerError as exc:
            raise problem_of(exc) from None

    @r.post("/tokens", status_code=201)
    def create_token(
        body: NewToken, who: Annotated[Who, Depends(guard("fleet.manage"))]
    ) -> dict[str, Any]:
        new = _call(
            tokens.create,
            engine,
            body.registry or tokens.default_registry(settings),
            who.actor,
            ttl=_ttl(body.ttl_days),
            max_uses=body.max_uses or settings.fleet.token_max_uses,
            label=body.label,
        )
        return {"token": new.token, **new.info.as_json()}

    @r.get("/tokens")
    def list_tokens(_: Annotated[Who, Depends(guard("fleet.read"))]) -> list[dict[str, Any]]:
        return [t.as_json() for t in tokens.list_tokens(engine)]

    @r.post("/tokens/{token_id}/regenerate", status_code=201)
    def regenerate(
        token_id: TokenId,
        who: Annotated[Who, Depends(guard("fleet.manage"))],
        body: Regenerate | None = None,
    ) -> dict[str, Any]:
        new = _call(
            tokens.regenerate,
            engine,
            token_id,
            who.actor,
            ttl=_ttl(body.ttl_days if body else None),
        )
        return {"token": new.token, **new.info.as_json()}

    @r.get("/devices")
    def devices(_: Annotated[Who, Depends(guard("fleet.read"))]) -> list[dict[str, Any]]:
        return [d.as_json() for d in service.list_devices(engine)]

    @r.post("/devices/{device_id}/revoke")
    def revoke(
        device_id: DeviceId,
        who: Annotated[Who, Depends(guard("fleet.revoke"))],
        body: RevokeDevice | None = None,
    ) -> dict[str, Any]:
        done = _call(
            service.revoke_device,
            settings,
            engine,
            device_id,
            who.actor,
            body.reason if body else "unspecified",
        )
        return dict(done.__dict__)

    return r
