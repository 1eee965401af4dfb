"""Signing in with a user token and out again.

The sign-in form is protected against login CSRF with a double-submit token (a cookie and a
hidden field that must match), since there is no session yet to hold one. A wrong token is
answered with the same words whether or not it ever existed, and is never echoed back.
"""

# No "from __future__ import annotations": FastAPI must see Depends(ctx.guard.form(None)) as
# an object, and ctx is local to router().

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from provisioner.errors import AuthenticationError
from provisioner.web import sessions
from provisioner.web.context import WebContext
from provisioner.web.guard import SignInRequired, safe_next
from provisioner.web.sessions import WebUser

PRE = "prov_signin"  # the sign-in form's double-submit cookie


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)
    secure = ctx.settings.web.secure_cookie

    def form(request: Request, next_path: str, error: str | None, status: int) -> Response:
        pre = secrets.token_urlsafe(24)
        resp = ctx.pages.page(
            request,
            "signin.html",
            None,
            status_code=status,
            csrf=pre,
            next_path=safe_next(next_path),
            error=error,
        )
        resp.set_cookie(
            PRE, pre, max_age=900, httponly=True, samesite="strict", secure=secure, path="/ui"
        )
        return resp

    @r.get("/signin")
    def signin_page(request: Request, next: str = "/ui/") -> Response:
        try:
            ctx.guard.user(request)
            return RedirectResponse(safe_next(next), status_code=303)  # already signed in
        except SignInRequired:
            return form(request, next, None, 200)

    @r.post("/signin")
    def signin(
        request: Request,
        token: Annotated[str, Form(max_length=200)] = "",
        csrf: Annotated[str, Form(max_length=100)] = "",
        next: Annotated[str, Form(max_length=500)] = "/ui/",
    ) -> Response:
        pre = request.cookies.get(PRE, "")
        if not pre or not hmac.compare_digest(pre, csrf):
            return form(request, next, "The form expired: sign in again.", 403)
        try:
            session_id, _ = sessions.sign_in(
                ctx.engine, token.strip(), ctx.settings.web.session_hours
            )
        except AuthenticationError:
            return form(request, next, "That token is not valid (revoked, or mistyped).", 401)
        resp = RedirectResponse(safe_next(next), status_code=303)
        resp.set_cookie(
            sessions.COOKIE,
            session_id,
            max_age=int(ctx.settings.web.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=secure,
            path="/",
        )
        resp.delete_cookie(PRE, path="/ui")
        return resp

    @r.post("/signout")
    def signout(user: Annotated[WebUser, Depends(ctx.guard.form(None))]) -> Response:
        sessions.sign_out(ctx.engine, user)
        resp = RedirectResponse("/ui/signin", status_code=303)
        resp.delete_cookie(sessions.COOKIE, path="/")
        return resp

    return r
