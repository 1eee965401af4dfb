"""``POST /stations/enroll``: a station PC trades its one-time enrollment token and a CSR
for its certificate, the pinned CA chain and line certificate, and its broker password.

No user token: the enrollment token is the credential (an admin made it with ``station
add``). The body is parsed here rather than by a pydantic model so that no validation error
can echo the token back into a response or a log. Answers: 201 with
:class:`~provisioner.enrollment.service.EnrollmentAnswer`; 401, the same message for an
unknown, used or expired token (audited); 422 for a bad CSR (audited); 503 while the line
server cannot issue (no line identity, HSM unavailable).
"""

# No "from __future__ import annotations": FastAPI reads the handler's annotations.

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.api.security import ApiProblem
from provisioner.enrollment.certs import MAX_CSR_BYTES, BadCsrError
from provisioner.enrollment.service import enroll_station
from provisioner.enrollment.tokens import EnrollmentTokenError
from provisioner.errors import (
    CaNotInitialisedError,
    ConflictError,
    HsmError,
    ProvisionerError,
    ServiceUnavailableError,
)
from provisioner.settings import Settings

_USAGE = 'send JSON {"token": "<enrollment token>", "csr": "<PEM certificate request>"}'


def _body(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        raise ApiProblem(422, "INVALID_ARGUMENT", _USAGE)
    token, csr = data.get("token"), data.get("csr")
    if not isinstance(token, str) or not isinstance(csr, str) or len(token) > 200:
        raise ApiProblem(422, "INVALID_ARGUMENT", _USAGE)
    if len(csr) > MAX_CSR_BYTES:
        raise ApiProblem(422, "INVALID_ARGUMENT", f"CSR longer than {MAX_CSR_BYTES} bytes")
    return token, csr


def stations_router(engine: Engine, settings: Settings) -> APIRouter:
    r = APIRouter(prefix="/stations")

    @r.post("/enroll", status_code=201)
    async def enroll(request: Request) -> JSONResponse:
        try:
            data = await request.json()
        except ValueError:
            raise ApiProblem(422, "INVALID_ARGUMENT", _USAGE) from None
        token, csr = _body(data)
        peer = request.client.host if request.client else None
        try:
            answer = await run_in_threadpool(
                enroll_station, settings, engine, token, csr.encode(), peer=peer
            )
        except EnrollmentTokenError as exc:
            raise ApiProblem(401, "UNAUTHENTICATED", str(exc)) from None
        except BadCsrError as exc:
            raise ApiProblem(422, "INVALID_ARGUMENT", str(exc)) from None
        except (ServiceUnavailableError, HsmError, CaNotInitialisedError) as exc:
            raise ApiProblem(503, "UNAVAILABLE", str(exc)) from None
        except ConflictError as exc:
            raise ApiProblem(409, "FAILED_PRECONDITION", str(exc)) from None
        except ProvisionerError as exc:
            raise ApiProblem(400, "FAILED_PRECONDITION", str(exc)) from None
        return JSONResponse(answer.as_json(), 201)

    return r
