"""The auditor's page: search the trail, export what was found, verify the whole log.

Search and export use the same filters and queries as the API and the CLI
(:mod:`provisioner.audit.query`); verify runs the same :func:`verify_log` as ``audit
verify`` with the installed audit public key, and the page explains in plain words what was
checked and, on failure, what it means and what to do.
"""

# No "from __future__ import annotations": FastAPI must see the Depends(ctx.guard...)
# annotations as objects, and ctx is local to router().

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session, col, func, select

from provisioner.audit import query
from provisioner.audit.checkpointer import audit_key_file, load_audit_key
from provisioner.audit.verify import VerifyResult, verify_log
from provisioner.db.engine import transaction
from provisioner.db.models import MAX_ID, AuditCheckpoint, AuditEvent
from provisioner.errors import ConfigError, ProvisionerError
from provisioner.web.context import WebContext
from provisioner.web.sessions import WebUser

PAGE = 100
FILTERS = ("serial", "batch", "station", "actor", "type", "since", "until")


@dataclass(frozen=True)
class Search:
    """The search form as typed (kept to refill the form and build links)."""

    serial: str = ""
    batch: str = ""
    station: str = ""
    actor: str = ""
    type: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def of(cls, request: Request) -> "Search":
        q = request.query_params
        return cls(**{k: q.get(k, "").strip()[:100] for k in FILTERS})

    def event_filter(self) -> query.EventFilter:
        """ProvisionerError (InvalidInputError) on a bad batch id or time."""
        batch = None
        if self.batch:
            if not self.batch.isdigit() or not 1 <= int(self.batch) < 2**63:
                raise ConfigError(f"batch {self.batch!r}: give a batch number")
            batch = int(self.batch)
        return query.EventFilter.of(
            self.serial or None,
            batch,
            self.station or None,
            self.actor or None,
            self.type or None,
            self.since or None,
            self.until or None,
        )

    def link(self, **extra: str | int) -> str:
        """This search's query string (empty fields left out), plus ``extra``."""
        items = [(k, getattr(self, k)) for k in FILTERS if getattr(self, k)]
        items += [(k, str(v)) for k, v in extra.items()]
        return urlencode(items)


@dataclass(frozen=True)
class KeyInfo:
    path: str
    sha256: str  # of the DER SubjectPublicKeyInfo: what an auditor compares with their copy


def _key_info(ctx: WebContext) -> KeyInfo | None:
    key = load_audit_key(ctx.settings)
    if key is None:
        return None
    der = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyInfo(str(audit_key_file(ctx.settings)), hashlib.sha256(der).hexdigest())


def _latest_checkpoint(ctx: WebContext) -> tuple[AuditCheckpoint | None, int, int]:
    """The latest checkpoint, how many checkpoints there are and how many events."""
    with Session(ctx.engine) as s:
        cp = s.exec(
            select(AuditCheckpoint).order_by(col(AuditCheckpoint.size).desc()).limit(1)
        ).first()
        n_cp = s.exec(select(func.count()).select_from(AuditCheckpoint)).one()
        n_ev = s.exec(select(func.max(AuditEvent.seq))).one()
    return cp, int(n_cp), int(n_ev or 0)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)
    reader = ctx.guard.page("audit.query")
    exporter = ctx.guard.page("audit.export")
    verifier = ctx.guard.page("audit.verify")

    @r.get("/audit")
    def audit(
        request: Request, user: Annotated[WebUser, Depends(reader)], after: int = 0
    ) -> Response:
        search = Search.of(request)
        error, events, next_after = None, [], None
        try:
            f = search.event_filter()
            with Session(ctx.engine) as s:
                # A cursor past any stored seq (64-bit) is just past the end of the log.
                events = query.page(s, f, min(max(0, after), MAX_ID), PAGE)
            if len(events) == PAGE:
                next_after = events[-1].seq
        except ProvisionerError as exc:
            error = str(exc)
        cp, n_cp, n_ev = _latest_checkpoint(ctx)
        return ctx.pages.page(
            request,
            "audit.html",
            user,
            status_code=400 if error else 200,
            search=search,
            error=error,
            events=events,
            after=after,
            next_after=next_after,
            checkpoint=cp,
            checkpoints=n_cp,
            total_events=n_ev,
        )

    @r.get("/audit/export")
    def export(
        request: Request,
        user: Annotated[WebUser, Depends(exporter)],
        format: str = "csv",
        tz: str = "utc",
    ) -> Response:
        """Every matching event, streamed (constant memory) as CSV or JSON Lines."""
        search = Search.of(request)
        try:
            lines = query.export_lines(ctx.engine, search.event_filter(), format, time_zone=tz)
        except ProvisionerError as exc:
            return ctx.pages.page(
                request, "error.html", user, status_code=400, title="Export", message=str(exc)
            )
        media = "application/jsonl" if format == "jsonl" else "text/csv"
        return StreamingResponse(
            lines,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="audit-events.{format}"'},
        )

    @r.get("/audit/verifier.py")
    def standalone_verifier(user: Annotated[WebUser, Depends(verifier)]) -> Response:
        """The auditors' standalone verifier (one file; needs only ``cryptography``): the
        same file ``provisioner audit verifier -o FILE`` writes."""
        from provisioner.audit import verifier as standalone

        return Response(
            Path(standalone.__file__).read_bytes(),
            media_type="text/x-python",
            headers={"Content-Disposition": 'attachment; filename="verifier.py"'},
        )

    @r.get("/audit/verify")
    def verify(request: Request, user: Annotated[WebUser, Depends(verifier)]) -> Response:
        """Recompute the whole log now (the same check as ``audit verify``)."""
        key = load_audit_key(ctx.settings)
        with transaction(ctx.engine) as s:
            result: VerifyResult = verify_log(s, key)
        cp, n_cp, _ = _latest_checkpoint(ctx)
        return ctx.pages.page(
            request,
            "audit_verify.html",
            user,
            result=result,
            key=_key_info(ctx),
            checkpoint=cp,
            checkpoints=n_cp,
        )

    return r
