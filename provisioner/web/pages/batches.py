"""The Batches pages: the list with a create form, and one batch live to its end with the
lifecycle actions the batch's state and the user's role allow.

A transition runs exactly what the CLI runs (:mod:`provisioner.batches` for the state and
its audit event, :func:`provisioner.dispatch.queue_transition` for the work); a refused one
shows its message on the next page and has written nothing. The services are checked only
before a transition that will queue work, so a refusal says what is wrong with the batch,
not that Redis is down.
"""

# No ``from __future__ import annotations`` here: FastAPI reads each route's
# ``Annotated[WebUser, Depends(ctx.guard...)]`` at run time, and ``ctx`` exists only inside
# ``router()`` (with postponed annotations the dependency became a required query field).

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import Response
from markupsafe import Markup

from provisioner import batches, dispatch, preflight
from provisioner.batches.views import BatchReport, DeviceQuery
from provisioner.cli.view import duration_text, part_action_text
from provisioner.db.models import MAX_ID, BatchState
from provisioner.errors import InvalidInputError, NotFoundError, ProvisionerError
from provisioner.settings import Settings
from provisioner.web import facts
from provisioner.web.context import ERROR, WebContext
from provisioner.web.sessions import WebUser

BatchId = Annotated[int, Path(ge=1, le=MAX_ID)]
FAILED_SHOWN = 100  # failed devices listed on the page (the rest: `batch status --failed`)


# --- the throughput chart (server-rendered SVG: the CSP allows no script drawing) ---------

W, H, LEFT, BOTTOM, TOP = 600.0, 180.0, 34.0, 20.0, 10.0
MIN_SLOTS = 10  # a run of a minute or two still shows bars, not one slab


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    peak: float
    first: str
    last: str
    step_min: int


def chart(series: facts.Series | None) -> Chart | None:
    """Bars of devices verified per minute, scaled to the busiest minute."""
    if series is None or not series.values:
        return None
    n = len(series.values)
    peak = max(series.peak, 1.0)
    slots = max(n, MIN_SLOTS)
    slot = (W - LEFT) / slots
    plot_h = H - BOTTOM - TOP
    bars = []
    for i, v in enumerate(series.values):
        h = plot_h * v / peak
        at = series.start.strftime("%H:%M") if i == 0 else f"+{i * series.step_min} min"
        bars.append(
            Bar(
                x=round(LEFT + i * slot + slot * 0.1, 2),
                y=round(TOP + plot_h - h, 2),
                w=round(max(slot * 0.8, 0.5), 2),
                h=round(h, 2),
                title=f"{at}: {v:.1f} devices/min",
            )
        )
    end = series.start.timestamp() + slots * series.step_min * 60
    return Chart(
        bars=tuple(bars),
        peak=peak,
        first=series.start.strftime("%H:%M UTC"),
        last=datetime.fromtimestamp(end, UTC).strftime("%H:%M UTC"),
        step_min=series.step_min,
    )


# --- what may be done with a batch -----------------------------------------------------------


@dataclass(frozen=True)
class Action:
    verb: str
    label: str
    action: str  # the role's action (provisioner.auth.roles)
    confirm: str | None = None
    danger: bool = False


ACTIONS: tuple[Action, ...] = (
    Action("start", "Start", "batch.start"),
    Action("pause", "Pause", "batch.control"),
    Action("resume", "Resume", "batch.control"),
    Action("retry", "Retry failed", "batch.control"),
    Action(
        "close",
        "Close with failures",
        "batch.control",
        confirm="Close the batch as finished_with_failures? Its failed devices stay failed.",
    ),
    Action(
        "cancel",
        "Cancel batch",
        "batch.control",
        confirm="Cancel the batch? Devices not started are released and it never runs again.",
        danger=True,
    ),
)


def offered(rep: BatchReport, user: WebUser) -> list[Action]:
    """The actions the batch's state allows and the user's role may take (the route checks
    both again: a stale page gets the transition's refusal)."""
    state = BatchState(rep.state)
    under_way = state in (BatchState.RUNNING, BatchState.PAUSED)
    allowed = {
        "start": state is BatchState.CREATED,
        "pause": state is BatchState.RUNNING,
        "resume": state is BatchState.PAUSED,
        "retry": under_way and rep.failed > 0,
        "close": under_way and rep.failed > 0,
        "cancel": not state.ended,
    }
    return [a for a in ACTIONS if allowed[a.verb] and user.may(a.action)]


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)
    engine, settings = ctx.engine, ctx.settings

    # --- the list -------------------------------------------------------------------------

    def list_fragments() -> dict[str, str]:
        reps = facts.recent_batches(engine)
        return {
            "batch-list": ctx.pages.fragment(
                "_batch_list.html", reps=reps, yield_pct=facts.yield_pct
            )
        }

    @r.get("/batches")
    def batches_page(
        request: Request, user: Annotated[WebUser, Depends(ctx.guard.page("batch.read"))]
    ) -> Response:
        parts = {k: Markup(v) for k, v in list_fragments().items()}  # escaped by the templates
        return ctx.pages.page(
            request, "batches.html", user, parts=parts, stations=sorted(settings.stations)
        )

    @r.get("/live/batches")
    def batches_live(
        request: Request, user: Annotated[WebUser, Depends(ctx.guard.page("batch.read"))]
    ) -> Response:
        return ctx.live(request, list_fragments, interval_s=2.0)

    @r.post("/batches")
    def create(
        user: Annotated[WebUser, Depends(ctx.guard.form("batch.create"))],
        station: Annotated[str, Form(max_length=64)] = "",
        count: Annotated[str, Form(max_length=20)] = "",
        quota: Annotated[str, Form(max_length=20)] = "",
    ) -> Response:
        try:
            n = _whole(count, "count")
            q = _whole(quota, "quota") if quota.strip() else None
            batches.validate_request(settings, station_id=station, count=n, quota=q)
            preflight.check_signer(settings)
            bid = batches.create_batch(
                engine, settings, station_id=station, count=n, actor=user.actor, quota=q
            )
        except ProvisionerError as exc:
            return ctx.redirect(user, "/ui/batches", str(exc), ERROR)
        limit = q if q is not None else n
        return ctx.redirect(
            user,
            f"/ui/batches/{bid}",
            f"batch {bid} created: {n} chips on station {station} (certificate quota "
            f"{limit}); start it when the parts are at the station",
        )

    # --- one batch ------------------------------------------------------------------------

    def batch_fragments(batch_id: int, user: WebUser) -> dict[str, str]:
        rep = batches.summary(engine, batch_id, live=False)
        failed = batches.device_page(engine, batch_id, DeviceQuery(failed=True, limit=FAILED_SHOWN))
        frag = ctx.pages.fragment
        common = {"rep": rep, "user": user}
        return {
            "batch-head": frag("_batch_head.html", **common),
            "batch-progress": frag(
                "_batch_progress.html",
                **common,
                yield_pct=facts.yield_pct(rep),
                eta=duration_text(rep.eta_s) if rep.eta_s is not None else None,
            ),
            "batch-actions": frag("_batch_actions.html", **common, actions=offered(rep, user)),
            "batch-chart": frag(
                "_batch_chart.html", chart=chart(facts.verified_per_minute(engine, batch_id))
            ),
            "batch-failures": frag(
                "_batch_failures.html",
                **common,
                failed=failed,
                shown=FAILED_SHOWN,
                part_action_text=part_action_text,
            ),
            "batch-sockets": frag(
                "_line_sockets.html",
                sockets=facts.sockets_of(engine, rep.station_id, _sockets(settings, rep)),
            ),
        }

    @r.get("/batches/{batch_id}")
    def batch_page(
        request: Request,
        batch_id: BatchId,
        user: Annotated[WebUser, Depends(ctx.guard.page("batch.read"))],
    ) -> Response:
        try:
            parts = {k: Markup(v) for k, v in batch_fragments(batch_id, user).items()}
        except NotFoundError as exc:
            return ctx.pages.page(
                request,
                "error.html",
                user,
                status_code=404,
                title=f"No batch {batch_id}",
                message=str(exc),
            )
        return ctx.pages.page(request, "batch.html", user, parts=parts, batch_id=batch_id)

    @r.get("/batches/{batch_id}/live")
    def batch_live(
        request: Request,
        batch_id: BatchId,
        user: Annotated[WebUser, Depends(ctx.guard.page("batch.read"))],
    ) -> Response:
        batches.get_batch(engine, batch_id)  # NotFoundError before the stream opens
        return ctx.live(request, lambda: batch_fragments(batch_id, user))

    def transition(user: WebUser, batch_id: int, run: Callable[[], str]) -> Response:
        return ctx.attempt(user, f"/ui/batches/{batch_id}", run)

    @r.post("/batches/{batch_id}/start")
    def start(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.start"))]
    ) -> Response:
        def run() -> str:
            batch = batches.get_batch(engine, batch_id)
            if batch.state in (BatchState.CREATED, BatchState.RUNNING):
                preflight.check_line(settings, engine, batch.station_id)
            t = batches.start(engine, batch_id, actor=user.actor)
            devices, _ = dispatch.queue_transition(settings, engine, t)
            return f"batch {batch_id} started: {devices} device(s) queued"

        return transition(user, batch_id, run)

    @r.post("/batches/{batch_id}/pause")
    def pause(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.control"))]
    ) -> Response:
        def run() -> str:
            batches.pause(engine, batch_id, actor=user.actor)
            return f"batch {batch_id} paused: chips in sockets finish their current step"

        return transition(user, batch_id, run)

    @r.post("/batches/{batch_id}/resume")
    def resume(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.control"))]
    ) -> Response:
        def run() -> str:
            batch = batches.get_batch(engine, batch_id)
            if batch.state is BatchState.PAUSED:
                preflight.check_line(settings, engine, batch.station_id)
            t = batches.resume(engine, batch_id, actor=user.actor)
            devices, _ = dispatch.queue_transition(settings, engine, t)
            return f"batch {batch_id} resumed: {devices} device(s) queued"

        return transition(user, batch_id, run)

    @r.post("/batches/{batch_id}/cancel")
    def cancel(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.control"))]
    ) -> Response:
        def run() -> str:
            t = batches.cancel(engine, batch_id, actor=user.actor)
            return (
                f"batch {batch_id} cancelled: {t.detail['released']} device(s) released, "
                f"{t.detail['in_flight']} in sockets finishing or stopping at a safe step"
            )

        return transition(user, batch_id, run)

    @r.post("/batches/{batch_id}/close")
    def close(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.control"))]
    ) -> Response:
        def run() -> str:
            t = batches.close(engine, batch_id, actor=user.actor)
            return (
                f"batch {batch_id} closed as {t.state.value} with {len(t.failed)} failed "
                "device(s): what to do with each part is listed below"
            )

        return transition(user, batch_id, run)

    @r.post("/batches/{batch_id}/retry")
    def retry(
        batch_id: BatchId, user: Annotated[WebUser, Depends(ctx.guard.form("batch.control"))]
    ) -> Response:
        def run() -> str:
            batch = batches.get_batch(engine, batch_id)
            if batch.state is BatchState.RUNNING:
                preflight.check_line(settings, engine, batch.station_id)
            t = batches.retry(engine, batch_id, actor=user.actor)
            dispatch.queue_transition(settings, engine, t)
            when = "queued" if t.state is BatchState.RUNNING else "run when the batch resumes"
            return f"batch {batch_id}: failed device(s) retried, {when}"

        return transition(user, batch_id, run)

    return r


def _whole(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidInputError(f"the {what} must be a whole number, got {text[:20]!r}") from None


def _sockets(settings: Settings, rep: BatchReport) -> int | None:
    conf = settings.stations.get(rep.station_id)
    return conf.sockets if conf else None
