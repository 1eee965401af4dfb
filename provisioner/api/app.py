"""The provisioner's HTTP API.

Public (no token): ``/healthz`` and the PKI material below. Everything else needs
``Authorization: Bearer <user token>`` and the role its action names
(:mod:`provisioner.api.routes`, :mod:`provisioner.auth.roles`).

Public PKI endpoints: what relying parties fetch, never anything secret.

``GET /crl/<name>.crl`` serves the CRL that ``provisioner ca crl`` / ``ca revoke`` last
published for intermediate ``<name>`` (DER, ``application/pkix-crl``): the stable URL that
``profile.crl_url`` puts in device certificates. ``GET /ca/<name>.pem`` serves the root
(``root``), the current intermediate (``intermediate``) or an archived one by its name.
These read files only. ``POST /stations/enroll`` (:mod:`provisioner.api.stations`; the
one-time enrollment token is the credential) is the one route that opens the token: for
the moment it issues a station certificate with the intermediate's key, which never
leaves the token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from provisioner.api.fleet import fleet_admin_router
from provisioner.api.problems import clip, validation_message, with_error_shape
from provisioner.api.routes import audit_router, ops_router
from provisioner.api.security import ApiProblem, Guard
from provisioner.api.stations import stations_router
from provisioner.db.engine import create_schema, make_engine
from provisioner.logs import configure
from provisioner.logs.access import AccessLogMiddleware
from provisioner.metrics.route import metrics_router
from provisioner.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": {"code": 404, "status": "NOT_FOUND", "message": what}}, 404)


_HTTP_STATUS = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "INVALID_ARGUMENT"}


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal leaves in the API's own shape, ``{"error": {code, status, message}}``,
    never FastAPI's ``{"detail": ...}`` (which echoes the whole input of a bad request)."""

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiProblem(400, "INVALID_ARGUMENT", validation_message(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        status = _HTTP_STATUS.get(exc.status_code, "FAILED_PRECONDITION")
        if exc.status_code >= 500:
            status = "INTERNAL"
        body = {
            "error": {"code": exc.status_code, "status": status, "message": clip(str(exc.detail))}
        }
        return JSONResponse(body, exc.status_code, headers=exc.headers)


def create_app(settings: Settings) -> FastAPI:
    # The OpenAPI document is public and read-only, like /healthz: it describes the routes
    # and which need a bearer token, nothing about this installation. The dashboard's /ui
    # routes stay out of it (include_in_schema=False there); no interactive docs pages.
    app = FastAPI(
        title="provisioner",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(AccessLogMiddleware)  # one JSON line per request (provisioner.access)
    ca_dir = settings.ca_dir
    engine = make_engine(settings.db_url)
    create_schema(engine)
    guard = Guard(engine)
    app.include_router(audit_router(engine, settings, guard))
    app.include_router(ops_router(engine, settings, guard))
    app.include_router(metrics_router(engine, settings, guard))  # GET /metrics (metrics.read)
    app.include_router(stations_router(engine, settings))  # public: the token is the credential
    app.include_router(fleet_admin_router(engine, settings, guard))  # /fleet (fleet.*)
    from provisioner.api.ocsp import ocsp_router

    app.include_router(ocsp_router(settings, engine))  # public: POST /ocsp, GET /ocsp/{req}
    if settings.web.enabled:
        from provisioner.web.app import mount

        mount(app, engine, settings)  # the dashboard under /ui (session cookie, CSRF)

    _install_error_handlers(app)

    def _file(path: Path, media_type: str, what: str) -> Response:
        if not path.is_file():
            return _not_found(f"{what} does not exist")
        return Response(
            path.read_bytes(), media_type=media_type, headers={"Cache-Control": "max-age=300"}
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/crl/{filename}")
    def crl(filename: str) -> Response:
        name = filename.removesuffix(".crl")
        if not filename.endswith(".crl") or not _NAME.match(name):
            return _not_found(f"no CRL {filename!r}")
        return _file(ca_dir / "crl" / f"{name}.crl", "application/pkix-crl", f"CRL {name!r}")

    @app.get("/ca/{filename}")
    def ca_cert(filename: str) -> Response:
        name = filename.removesuffix(".pem")
        if not filename.endswith(".pem") or not _NAME.match(name):
            return _not_found(f"no certificate {filename!r}")
        if name in ("root", "intermediate"):
            path = ca_dir / f"{name}.pem"
        else:
            path = ca_dir / "intermediates" / f"{name}.pem"
        return _file(path, "application/x-pem-file", f"certificate {name!r}")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_error_shape(
                get_openapi(title=app.title, version=app.version, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def main(config: Path | None = None) -> int:
    import uvicorn

    from provisioner.private_files import private_umask
    from provisioner.settings import load_settings

    private_umask()  # files it creates (logs) are private even when started alone
    settings = load_settings(config)
    configure(settings, "api")
    uvicorn.run(
        create_app(settings),
        host=settings.api.listen_host,
        port=settings.api.listen_port,
        log_config=None,  # uvicorn's own lines go through our JSON handler
        log_level=None,
        access_log=False,  # AccessLogMiddleware writes the access log instead
    )
    return 0
