"""Who may see a page or send a form: the session cookie, the page's action, the form's
CSRF token.

A signed-out browser is sent to the sign-in page (``SignInRequired``); a role that may not
take the action gets a 403 page (``PageForbidden``), the refusal audited as ``auth.denied``
by :func:`provisioner.auth.users.authorize`, exactly as the API and the CLI do. A form is
accepted only with this session's CSRF token and, when the browser names one, from this
server's own origin.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.auth import users
from provisioner.errors import AuthenticationError, PermissionDeniedError
from provisioner.web import sessions
from provisioner.web.sessions import WebUser


class SignInRequired(Exception):
    """No live session: sign in first (then come back to ``next_path``)."""

    def __init__(self, next_path: str, reason: str) -> None:
        super().__init__(reason)
        self.next_path, self.reason = next_path, reason


class PageForbidden(Exception):
    """The signed-in role may not take this page's action."""

    def __init__(self, user: WebUser, message: str) -> None:
        super().__init__(message)
        self.user, self.message = user, message


class BadForm(Exception):
    """A form without this session's CSRF token, or from another origin."""


def safe_next(path: str | None) -> str:
    """Where to go after signing in: only a path of this dashboard (never another site)."""
    if not path or not path.startswith("/ui") or path.startswith("//") or "\\" in path:
        return "/ui/"
    return path


class WebGuard:
    """Builds the per-route dependencies: ``Depends(guard.page("batch.read"))`` for a page,
    ``Depends(guard.form("batch.control"))`` for a form post."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Every dependency built here and the action it checks (None: any signed-in user),
        # so a test can walk the routes and hold each one to its declared role.
        self.declared: dict[Callable[..., object], str | None] = {}

    def user(self, request: Request) -> WebUser:
        """The signed-in user, or SignInRequired."""
        try:
            user = sessions.lookup(self.engine, request.cookies.get(sessions.COOKIE, ""))
        except AuthenticationError as exc:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInRequired(path, str(exc)) from None
        request.state.user = user.name  # for the access log
        return user

    def check(self, request: Request, action: str) -> WebUser:
        user = self.user(request)
        try:
            users.authorize(
                self.engine, user.principal, action, via=f"web {request.method} {request.url.path}"
            )
        except PermissionDeniedError as exc:
            raise PageForbidden(user, str(exc)) from None
        return user

    def page(self, action: str) -> Callable[[Request], Awaitable[WebUser]]:
        users.check_action(action)

        async def dependency(request: Request) -> WebUser:
            return await run_in_threadpool(self.check, request, action)

        self.declared[dependency] = action
        return dependency

    def signed_in(self) -> Callable[[Request], Awaitable[WebUser]]:
        """Any signed-in user (a page that then shows only what the role may see)."""

        async def dependency(request: Request) -> WebUser:
            return await run_in_threadpool(self.user, request)

        self.declared[dependency] = None
        return dependency

    def form(self, action: str | None) -> Callable[[Request], Awaitable[WebUser]]:
        """A form post: ``action`` as for a page (None: any signed-in user, e.g. sign-out),
        plus this session's CSRF token and this server's origin."""
        if action is not None:
            users.check_action(action)

        async def dependency(request: Request) -> WebUser:
            if action is None:
                user = await run_in_threadpool(self.user, request)
            else:
                user = await run_in_threadpool(self.check, request, action)
            form = await request.form()
            sent = form.get("csrf")
            if not isinstance(sent, str) or not hmac.compare_digest(sent, user.csrf):
                raise BadForm("the form is missing this session's CSRF token: reload the page")
            if not same_origin(request):
                raise BadForm("the form was sent from another site")
            return user

        self.declared[dependency] = action
        return dependency


def same_origin(request: Request) -> bool:
    """A browser's Origin (or, without it, Referer) names this server; requests without
    either (not from a browser form) are judged by the CSRF token alone."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True
    if source == "null":
        return False
    host = request.headers.get("host", "")
    return urlsplit(source).netloc == host
