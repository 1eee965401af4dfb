"""The device page: one device's certificate, registry state, revocation and, for a role
that may read the trail, its audit timeline and offline proof file.

Reachable by device id (``/ui/devices/{id}``, the batch page's links) and by chip serial
(``/ui/devices?serial=...``, what is printed on the part). The proof file is exactly what
the API's ``/audit/proof/{serial}`` returns, so ``provisioner audit check-proof`` checks it
offline with only the audit public key.
"""

# No "from __future__ import annotations": FastAPI must see the Depends(ctx.guard...)
# annotations as objects, and ctx is local to router().

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner.audit import proofs
from provisioner.db.models import MAX_ID
from provisioner.errors import NotFoundError
from provisioner.web import device_facts
from provisioner.web.context import WebContext
from provisioner.web.sessions import WebUser

DeviceId = Annotated[int, Path(ge=1, le=MAX_ID)]


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)
    reader = ctx.guard.page("batch.read")
    prover = ctx.guard.page("audit.prove")

    def not_found(request: Request, user: WebUser, message: str) -> Response:
        return ctx.pages.page(
            request, "error.html", user, status_code=404, title="Not found", message=message
        )

    @r.get("/devices")
    def find_device(
        request: Request, user: Annotated[WebUser, Depends(reader)], serial: str = ""
    ) -> Response:
        """Find a device by its chip serial (the search box, or a scanned label)."""
        serial = serial.strip()[:40]
        if not serial:
            return ctx.pages.page(request, "device_find.html", user, serial="", error=None)
        try:
            dev_id = device_facts.device_id_by_serial(ctx.engine, serial)
        except NotFoundError as exc:
            return ctx.pages.page(
                request, "device_find.html", user, status_code=404, serial=serial, error=str(exc)
            )
        return RedirectResponse(f"/ui/devices/{dev_id}", status_code=303)

    @r.get("/devices/{device_id}")
    async def device(
        request: Request, device_id: DeviceId, user: Annotated[WebUser, Depends(reader)]
    ) -> Response:
        try:
            facts = await run_in_threadpool(
                device_facts.device_facts,
                ctx.engine,
                device_id,
                with_timeline=user.may("audit.query"),
            )
        except NotFoundError as exc:
            return not_found(request, user, str(exc))
        return ctx.pages.page(request, "device.html", user, f=facts)

    @r.get("/devices/{device_id}/certificate.pem")
    def certificate(
        request: Request, device_id: DeviceId, user: Annotated[WebUser, Depends(reader)]
    ) -> Response:
        try:
            name, pem = device_facts.certificate_pem(ctx.engine, device_id)
        except NotFoundError as exc:
            return not_found(request, user, str(exc))
        return Response(
            pem,
            media_type="application/x-pem-file",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @r.get("/devices/{device_id}/proof.json")
    def proof(
        request: Request, device_id: DeviceId, user: Annotated[WebUser, Depends(prover)]
    ) -> Response:
        """The chip's proof file (the API's ``/audit/proof/{serial}``), as a download."""
        try:
            facts = device_facts.device_facts(ctx.engine, device_id, with_timeline=False)
            serial = facts.device.chip_serial
            if serial is None:
                raise NotFoundError(f"device {device_id} has no chip serial yet: nothing to prove")
            with Session(ctx.engine) as s:
                doc = proofs.build(s, serial)
        except NotFoundError as exc:
            return not_found(request, user, str(exc))
        return Response(
            json.dumps(doc, indent=1) + "\n",
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="audit-proof-{serial}.json"'},
        )

    return r
