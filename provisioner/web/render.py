"""Templates: one Jinja2 environment (autoescaped) for pages and the fragments the live
updates send, so a fragment looks the same whether it came with the page or over SSE."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy.engine import Engine

from provisioner.auth.roles import ACTIONS
from provisioner.web import sessions
from provisioner.web.sessions import WebUser

# The navigation: (path, label, action). A link shows only to a role that may follow it.
NAV: tuple[tuple[str, str, str], ...] = (
    ("/ui/", "Line", "station.status"),
    ("/ui/batches", "Batches", "batch.read"),
    ("/ui/audit", "Audit", "audit.query"),
    ("/ui/ca", "CA", "ca.show"),
    ("/ui/users", "Users", "users.read"),
)


def when(value: datetime | str | None) -> str:
    """A stored time as people on the floor read it: UTC, to the second."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | float | None) -> str:
    """How long ago (a time) or how long (seconds), in the largest sensible unit."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = (datetime.now(UTC) - value).total_seconds()
    s = max(0.0, float(value))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


class Pages:
    """Renders pages (with the navigation for the user's role) and fragments."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.env = Environment(
            loader=PackageLoader("provisioner.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(when=when, ago=ago, num=num)
        self.env.globals["ACTIONS"] = ACTIONS

    def fragment(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**context)

    def page(
        self,
        request: Request,
        template: str,
        user: WebUser | None,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """A whole page; the session's one-time message (after a form) is shown on it."""
        flash = sessions.take_flash(self.engine, user) if user is not None else None
        nav = [
            (path, label) for path, label, action in NAV if user is not None and user.may(action)
        ]
        html = self.env.get_template(template).render(
            request_path=request.url.path,
            user=user,
            nav=nav,
            flash=flash,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)
