"""What every page module gets: the database, the settings, the guard and the templates,
and the one way a form's outcome reaches the next page (Post/Redirect/Get with a message)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.engine import Engine

from provisioner.errors import ProvisionerError
from provisioner.settings import Settings
from provisioner.web import live, sessions
from provisioner.web.guard import WebGuard
from provisioner.web.render import Pages
from provisioner.web.sessions import WebUser

OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class WebContext:
    engine: Engine
    settings: Settings
    guard: WebGuard
    pages: Pages

    def redirect(self, user: WebUser, to: str, message: str, kind: str = OK) -> RedirectResponse:
        """Back to ``to`` (303, so a reload does not post again), with ``message`` shown
        once there."""
        sessions.set_flash(self.engine, user, f"{kind}|{message}")
        return RedirectResponse(to, status_code=303)

    def attempt(self, user: WebUser, to: str, action: Callable[[], str]) -> RedirectResponse:
        """Run a form's action; its message, or the refusal's (a ProvisionerError says what
        was wrong and writes nothing), on the next page."""
        try:
            message = action()
        except ProvisionerError as exc:
            return self.redirect(user, to, str(exc), ERROR)
        return self.redirect(user, to, message)

    def live(
        self, request: Request, produce: Callable[[], live.Fragments], interval_s: float = 1.0
    ) -> StreamingResponse:
        """A page's live stream: ``produce`` returns {element id: HTML}; the stream ends
        when the session does."""
        cookie = request.cookies.get(sessions.COOKIE, "")

        def still_signed_in() -> None:
            sessions.lookup(self.engine, cookie)

        return live.stream(request, produce, still_signed_in, interval_s=interval_s)
