"""Mounts the dashboard on the API's FastAPI app: the pages, the static files, the sign-in
redirects and the security headers."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

from provisioner.settings import Settings
from provisioner.web.context import WebContext
from provisioner.web.guard import BadForm, PageForbidden, SignInRequired, WebGuard
from provisioner.web.headers import SecurityHeaders
from provisioner.web.pages import PAGE_MODULES
from provisioner.web.render import Pages

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI, engine: Engine, settings: Settings) -> WebContext:
    ctx = WebContext(engine, settings, WebGuard(engine), Pages(engine))
    app.add_middleware(SecurityHeaders, hsts=settings.web.secure_cookie)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")
    for module in PAGE_MODULES:
        app.include_router(module.router(ctx))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.headers.get("accept", "").startswith("text/event-stream"):
            return Response(status_code=401)  # a live stream: the page shows "signed out"
        return RedirectResponse(f"/ui/signin?next={quote(exc.next_path)}", status_code=303)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> HTMLResponse:
        return ctx.pages.page(
            request, "forbidden.html", exc.user, status_code=403, message=exc.message
        )

    @app.exception_handler(BadForm)
    async def _bad_form(request: Request, exc: BadForm) -> HTMLResponse:
        return ctx.pages.page(
            request, "error.html", None, status_code=403, title="Form refused", message=str(exc)
        )

    return ctx
