"""The Line page: every station and socket as the operator at the jig needs them, the
signer, the registry backlog and the audit checkpoint, kept live over Server-Sent Events.

Roles that do not run the line (auditors, Prometheus' monitor) are sent to the page their
work starts on, or told that the dashboard has nothing for them: the Line page itself shows
chip serials and device ids, which only ``station.status`` may read.
"""

# No ``from __future__ import annotations`` here: FastAPI reads each route's
# ``Annotated[WebUser, Depends(ctx.guard...)]`` at run time, and ``ctx`` exists only inside
# ``router()`` (with postponed annotations the dependency became a required query field).

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup

from provisioner.web import facts
from provisioner.web.context import WebContext
from provisioner.web.sessions import WebUser

# Where a role without the Line page lands: its own work first (an auditor may also read
# batches, but comes to the dashboard for the audit trail), then the other pages.
LANDING: tuple[tuple[str, str], ...] = (
    ("/ui/audit", "audit.query"),
    ("/ui/batches", "batch.read"),
    ("/ui/ca", "ca.show"),
    ("/ui/users", "users.read"),
)


def landing(user: WebUser) -> str | None:
    """The first page ``user`` may open when the Line page is not theirs (None: none)."""
    return next((path for path, action in LANDING if user.may(action)), None)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)

    def fragments() -> dict[str, str]:
        """The page's live parts, each rendered by its own template."""
        signer = facts.service(ctx.engine, "signer")
        registry = facts.service(ctx.engine, "registry")
        services = ctx.pages.fragment(
            "_line_services.html",
            signer=signer,
            registry=registry,
            latency_s=facts.signing_latency_s(ctx.settings),
            backlog=facts.upload_backlog(ctx.engine),
            checkpoint=facts.latest_checkpoint(ctx.engine),
        )
        stations = ctx.pages.fragment(
            "_line_stations.html", stations=facts.stations(ctx.engine, ctx.settings)
        )
        return {"line-services": services, "line-stations": stations}

    @r.get("/")
    def line_page(
        request: Request, user: Annotated[WebUser, Depends(ctx.guard.signed_in())]
    ) -> Response:
        if not user.may("station.status"):
            to = landing(user)
            if to is not None:
                return RedirectResponse(to, status_code=303)
            return ctx.pages.page(request, "line_nothing.html", user)
        parts = {k: Markup(v) for k, v in fragments().items()}  # escaped by our templates
        return ctx.pages.page(request, "line.html", user, parts=parts)

    @r.get("/live/line")
    def line_live(
        request: Request, user: Annotated[WebUser, Depends(ctx.guard.page("station.status"))]
    ) -> Response:
        return ctx.live(request, fragments)

    return r
