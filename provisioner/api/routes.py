"""The authenticated endpoints: auditors' queries and proofs, operators' batches, admins'
accounts. Each route names its action; :class:`~provisioner.api.security.Guard` enforces
it."""

# No "from __future__ import annotations": FastAPI must see the Depends(guard(...))
# annotations as objects, and guard is local to the router factories.

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner import batches, dispatch
from provisioner.api.security import Guard, problem_of
from provisioner.audit import proofs, query
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.auth import users
from provisioner.db.engine import transaction
from provisioner.db.models import MAX_ID, AuditCheckpoint
from provisioner.errors import (
    ProvisionerError,
)
from provisioner.settings import Settings

Who = users.Principal
# Every number and name a caller sends is bounded here, to what the database can hold (a
# 64-bit signed integer) and the longest value that could match: anything outside is a 400
# (provisioner.api.app turns validation errors into the API's error shape), never an
# overflow inside the database driver (a 500).
BatchId = Annotated[int, Path(ge=1, le=MAX_ID)]
Seq = Annotated[int, Query(ge=0, le=MAX_ID)]
NAME_MAX = 64  # station ids, user names (their columns hold 64)
TEXT_MAX = 255  # actors, event types, time stamps, formats: longer can match nothing
UserName = Annotated[str, Path(max_length=NAME_MAX)]


_problem = problem_of


def event_filter(
    serial: Annotated[str | None, Query(max_length=NAME_MAX)] = None,
    batch: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    station: Annotated[str | None, Query(max_length=NAME_MAX)] = None,
    actor: Annotated[str | None, Query(max_length=TEXT_MAX)] = None,
    type: Annotated[str | None, Query(max_length=TEXT_MAX)] = None,
    since: Annotated[str | None, Query(max_length=TEXT_MAX)] = None,
    until: Annotated[str | None, Query(max_length=TEXT_MAX)] = None,
) -> query.EventFilter:
    """The audit filters as query parameters (``type`` is the event type)."""
    try:
        return query.EventFilter.of(serial, batch, station, actor, type, since, until)
    except ProvisionerError as exc:
        raise _problem(exc) from None


Filter = Annotated[query.EventFilter, Depends(event_filter)]


class NewBatch(BaseModel):
    station: str = Field(max_length=NAME_MAX)
    count: int = Field(ge=1, le=batches.MAX_BATCH)
    quota: int | None = Field(default=None, ge=1, le=batches.MAX_BATCH)
    # issue (default): blank chips, our CA issues; preprovisioned: the part's own
    # certificates (``part``: trust-and-go | trustflex), verified and uploaded as they are.
    mode: Literal["issue", "preprovisioned"] = "issue"
    part: str | None = Field(default=None, max_length=32)


class RetryRequest(BaseModel):
    """Failed devices to retry, by device id or chip serial; empty: all failed devices."""

    devices: list[Annotated[str, Field(max_length=40)]] = Field(default=[], max_length=1000)


class QuotaChange(BaseModel):
    quota: int = Field(ge=1, le=batches.MAX_BATCH)


class NewUser(BaseModel):
    name: str = Field(max_length=NAME_MAX)
    role: str = Field(max_length=NAME_MAX)


class NewRole(BaseModel):
    role: str = Field(max_length=NAME_MAX)


def audit_router(engine: Engine, settings: Settings, guard: Guard) -> APIRouter:
    r = APIRouter(prefix="/audit")

    @r.get("/events")
    def events(
        who: Annotated[Who, Depends(guard("audit.query"))],
        f: Filter,
        after: Seq = 0,
        limit: Annotated[int, Query(ge=1, le=query.MAX_PAGE)] = 100,
    ) -> dict[str, Any]:
        with Session(engine) as s:
            rows = query.page(s, f, after, limit)
        return {
            "events": [query.as_dict(e) for e in rows],
            "next_after": rows[-1].seq if len(rows) == limit else None,
        }

    @r.get("/export")
    def export(
        who: Annotated[Who, Depends(guard("audit.export"))],
        f: Filter,
        format: Annotated[str, Query(max_length=TEXT_MAX)] = "jsonl",
        tz: Annotated[str, Query(max_length=TEXT_MAX)] = "utc",
    ) -> StreamingResponse:
        try:
            lines = query.export_lines(engine, f, format, time_zone=tz)
        except ProvisionerError as exc:
            raise _problem(exc) from None
        media = "application/jsonl" if format == "jsonl" else "text/csv"
        return StreamingResponse(lines, media_type=media)

    @r.get("/proof/{serial}")
    def proof(
        serial: Annotated[str, Path(max_length=NAME_MAX)],
        who: Annotated[Who, Depends(guard("audit.prove"))],
    ) -> Any:
        try:
            with Session(engine) as s:
                return proofs.build(s, serial)
        except ProvisionerError as exc:
            raise _problem(exc) from None

    @r.get("/checkpoints")
    def checkpoints(who: Annotated[Who, Depends(guard("audit.query"))]) -> Any:
        with Session(engine) as s:
            rows = s.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.size))).all()
            return [r.model_dump() for r in rows]

    @r.get("/consistency")
    def consistency(
        old: Seq, new: Seq, who: Annotated[Who, Depends(guard("audit.consistency"))]
    ) -> Any:
        try:
            with Session(engine) as s:
                return proofs.build_consistency(s, old, new)
        except ProvisionerError as exc:
            raise _problem(exc) from None

    @r.get("/verify")
    def verify(who: Annotated[Who, Depends(guard("audit.verify"))]) -> Any:
        with transaction(engine) as s:
            return verify_log(s, load_audit_key(settings)).as_json()

    return r


def ops_router(engine: Engine, settings: Settings, guard: Guard) -> APIRouter:
    r = APIRouter()

    @r.get("/batches")
    def list_batches(who: Annotated[Who, Depends(guard("batch.read"))]) -> Any:
        return [
            {k: v for k, v in b.as_json().items() if k != "devices"}
            for b in batches.list_batches(engine)
        ]

    @r.get("/batches/{batch_id}")
    def get_batch(
        batch_id: BatchId,
        who: Annotated[Who, Depends(guard("batch.read"))],
        devices: Annotated[str | None, Query(pattern="^(all|failed)$")] = None,
        step: Annotated[str | None, Query(max_length=NAME_MAX)] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=batches.views.MAX_PAGE)] = 100,
    ) -> Any:
        """The batch's summary; ``devices=all|failed`` and/or ``step`` add a page of devices."""
        try:
            query = (
                batches.DeviceQuery(
                    failed=devices == "failed",
                    step=batches.DeviceQuery.parse_step(step),
                    offset=offset,
                    limit=limit,
                )
                if devices or step
                else None
            )
            return batches.report(engine, batch_id, query).as_json()
        except ProvisionerError as exc:
            raise _problem(exc) from None

    def _transition(fn: Callable[[], batches.Transition]) -> dict[str, Any]:
        """Run a lifecycle transition and queue what it returns (resume, retry)."""
        try:
            t = fn()
            if t.queue:
                dispatch.send_devices(settings, t.station_id, t.queue)
        except ProvisionerError as exc:
            raise _problem(exc) from None
        return {
            "id": t.batch_id,
            "state": t.state.value,
            "queued": len(t.queue),
            "failed": list(t.failed),
            **t.detail,
        }

    @r.post("/batches/{batch_id}/pause")
    def pause(batch_id: BatchId, who: Annotated[Who, Depends(guard("batch.control"))]) -> Any:
        return _transition(lambda: batches.pause(engine, batch_id, actor=who.actor))

    @r.post("/batches/{batch_id}/resume")
    def resume(batch_id: BatchId, who: Annotated[Who, Depends(guard("batch.control"))]) -> Any:
        return _transition(lambda: batches.resume(engine, batch_id, actor=who.actor))

    @r.post("/batches/{batch_id}/cancel")
    def cancel(batch_id: BatchId, who: Annotated[Who, Depends(guard("batch.control"))]) -> Any:
        return _transition(lambda: batches.cancel(engine, batch_id, actor=who.actor))

    @r.post("/batches/{batch_id}/close")
    def close(batch_id: BatchId, who: Annotated[Who, Depends(guard("batch.control"))]) -> Any:
        return _transition(lambda: batches.close(engine, batch_id, actor=who.actor))

    @r.post("/batches/{batch_id}/retry")
    def retry(
        batch_id: BatchId, body: RetryRequest, who: Annotated[Who, Depends(guard("batch.control"))]
    ) -> Any:
        return _transition(
            lambda: batches.retry(engine, batch_id, actor=who.actor, which=body.devices or None)
        )

    @r.put("/batches/{batch_id}/quota")
    def quota(
        batch_id: BatchId, body: QuotaChange, who: Annotated[Who, Depends(guard("batch.quota"))]
    ) -> Any:
        return _transition(lambda: batches.set_quota(engine, batch_id, body.quota, actor=who.actor))

    @r.post("/batches", status_code=201)
    def create_batch(body: NewBatch, who: Annotated[Who, Depends(guard("batch.create"))]) -> Any:
        try:
            bid = batches.create_batch(
                engine,
                settings,
                station_id=body.station,
                count=body.count,
                actor=who.actor,
                quota=body.quota,
                mode=body.mode,
                part=body.part,
            )
        except ProvisionerError as exc:
            raise _problem(exc) from None
        out = {"id": bid, "station": body.station, "count": body.count}
        return {**out, "mode": body.mode, "part": body.part}

    @r.get("/users")
    def list_users(who: Annotated[Who, Depends(guard("users.read"))]) -> Any:
        return [u.as_dict() for u in users.list_users(engine)]

    @r.post("/users", status_code=201)
    def add_user(body: NewUser, who: Annotated[Who, Depends(guard("users.manage"))]) -> Any:
        try:
            token = users.add_user(engine, body.name, body.role, who.actor)
        except ProvisionerError as exc:
            raise _problem(exc) from None
        # The one time the token is shown; the server keeps only its hash.
        return JSONResponse(
            {"name": body.name, "role": body.role, "token": token},
            201,
            headers={"Cache-Control": "no-store"},
        )

    @r.post("/users/{name}/revoke")
    def revoke(name: UserName, who: Annotated[Who, Depends(guard("users.manage"))]) -> Any:
        try:
            return {"revoked": users.revoke_tokens(engine, name, who.actor)}
        except ProvisionerError as exc:
            raise _problem(exc) from None

    @r.post("/users/{name}/role")
    def set_role(
        name: UserName, body: NewRole, who: Annotated[Who, Depends(guard("users.manage"))]
    ) -> Any:
        try:
            old = users.set_role(engine, name, body.role, who.actor)
        except ProvisionerError as exc:
            raise _problem(exc) from None
        return {"name": name, "role": body.role, "previous_role": old}

    return r
