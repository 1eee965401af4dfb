"""The authenticated endpoints: auditors' queries and proofs, operators' batches, admins'
accounts. Each route names its action; :class:`~provisioner.api.security.Guard` enforces
it."""

# No "from __future__ import annotations": FastAPI must see the Depends(guard(...))
# annotations as objects, and guard is local to the router factories.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner import batches
from provisioner.api.security import ApiProblem, Guard
from provisioner.audit import proofs, query
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.auth import users
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint
from provisioner.errors import InvalidInputError, NotFoundError, ProvisionerError
from provisioner.settings import Settings

Who = users.Principal


def _problem(exc: ProvisionerError) -> ApiProblem:
    if isinstance(exc, NotFoundError):
        return ApiProblem(404, "NOT_FOUND", str(exc))
    if isinstance(exc, InvalidInputError):
        return ApiProblem(400, "INVALID_ARGUMENT", str(exc))
    return ApiProblem(400, "FAILED_PRECONDITION", str(exc))


def event_filter(
    serial: str | None = None,
    batch: int | None = None,
    station: str | None = None,
    actor: str | None = None,
    type: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> query.EventFilter:
    """The audit filters as query parameters (``type`` is the event type)."""
    try:
        return query.EventFilter.of(serial, batch, station, actor, type, since, until)
    except ProvisionerError as exc:
        raise _problem(exc) from None


Filter = Annotated[query.EventFilter, Depends(event_filter)]


class NewBatch(BaseModel):
    station: str
    count: int = Field(ge=1)
    quota: int | None = Field(default=None, ge=1)


class NewUser(BaseModel):
    name: str
    role: str


def audit_router(engine: Engine, settings: Settings, guard: Guard) -> APIRouter:
    r = APIRouter(prefix="/audit")

    @r.get("/events")
    def events(
        who: Annotated[Who, Depends(guard("audit.query"))],
        f: Filter,
        after: int = 0,
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
        format: str = "jsonl",
    ) -> StreamingResponse:
        if format not in ("jsonl", "csv"):
            raise ApiProblem(400, "INVALID_ARGUMENT", "format must be jsonl or csv")
        events = query.iterate(engine, f)
        lines = query.jsonl_lines(events) if format == "jsonl" else query.csv_lines(events)
        media = "application/jsonl" if format == "jsonl" else "text/csv"
        return StreamingResponse(lines, media_type=media)

    @r.get("/proof/{serial}")
    def proof(serial: str, who: Annotated[Who, Depends(guard("audit.prove"))]) -> Any:
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
        old: int, new: int, who: Annotated[Who, Depends(guard("audit.consistency"))]
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
    def get_batch(batch_id: int, who: Annotated[Who, Depends(guard("batch.read"))]) -> Any:
        try:
            return batches.report(engine, batch_id).as_json()
        except ProvisionerError as exc:
            raise _problem(exc) from None

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
            )
        except ProvisionerError as exc:
            raise _problem(exc) from None
        return {"id": bid, "station": body.station, "count": body.count}

    @r.get("/users")
    def list_users(who: Annotated[Who, Depends(guard("users.read"))]) -> Any:
        return [
            {"name": u.name, "role": u.role, "disabled": u.disabled}
            for u in users.list_users(engine)
        ]

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
    def revoke(name: str, who: Annotated[Who, Depends(guard("users.manage"))]) -> Any:
        try:
            return {"revoked": users.revoke_tokens(engine, name, who.actor)}
        except ProvisionerError as exc:
            raise _problem(exc) from None

    return r
