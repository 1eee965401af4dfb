"""Who is calling the API, and may they: bearer tokens checked against hashed user
tokens, each endpoint declaring its action (provisioner.auth.roles).

401 without a valid token; 403 (audited as ``auth.denied``) when the role may not. A
user's first call of the UTC day is audited as ``auth.login`` (once per user and channel
per day, whichever process sees it first: :func:`provisioner.auth.users.record_login`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from provisioner.api.problems import clip
from provisioner.auth import users
from provisioner.auth.roles import ACTIONS
from provisioner.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ProvisionerError,
    ServiceUnavailableError,
)


class ApiProblem(Exception):
    """An HTTP error in the google.rpc-like shape the registry API also uses. The message
    is clipped (:func:`~provisioner.api.problems.clip`): it may quote what the caller sent."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, clip(message)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.code == 401 else None
        body = {"error": {"code": self.code, "status": self.status, "message": self.message}}
        return JSONResponse(body, self.code, headers=headers)


def problem_of(exc: ProvisionerError) -> ApiProblem:
    """The HTTP answer to a domain error raised by an action (routes with more specific
    errors check those first and fall back on this)."""
    if isinstance(exc, NotFoundError):
        return ApiProblem(404, "NOT_FOUND", str(exc))
    if isinstance(exc, InvalidInputError):
        return ApiProblem(400, "INVALID_ARGUMENT", str(exc))
    if isinstance(exc, ConflictError):
        return ApiProblem(409, "FAILED_PRECONDITION", str(exc))
    if isinstance(exc, ServiceUnavailableError):
        return ApiProblem(503, "UNAVAILABLE", str(exc))
    return ApiProblem(400, "FAILED_PRECONDITION", str(exc))


# Declares the bearer scheme in the OpenAPI document (so clients and fuzzers know to send a
# token); the check itself is Guard's, which also answers 401 in the API's own shape.
_BEARER = HTTPBearer(auto_error=False, description="a user token (`provisioner users add`)")


class Guard:
    """Builds the per-endpoint dependency: ``Depends(guard("audit.query"))``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Tokens whose sign-in was already checked today: saves a query on every call.
        self._seen: set[str] = set()
        self._day: date | None = None
        self._lock = threading.Lock()

    def __call__(self, action: str) -> Callable[..., object]:
        if action not in ACTIONS:
            raise KeyError(f"undeclared action {action!r}")

        async def dependency(
            request: Request,
            _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        ) -> users.Principal:
            return await run_in_threadpool(self._check, request, action)

        return dependency

    def _check(self, request: Request, action: str) -> users.Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiProblem(401, "UNAUTHENTICATED", "send Authorization: Bearer <token>")
        try:
            who = users.authenticate(self.engine, token.strip())
        except AuthenticationError as exc:
            raise ApiProblem(401, "UNAUTHENTICATED", str(exc)) from None
        digest = users.token_hash(token.strip())
        with self._lock:
            today = datetime.now(UTC).date()
            if today != self._day:
                self._day, self._seen = today, set()
            first = digest not in self._seen
            self._seen.add(digest)
        if first:
            users.record_login(self.engine, who, "api")
        try:
            users.authorize(
                self.engine, who, action, via=f"api {request.method} {request.url.path}"
            )
        except PermissionDeniedError as exc:
            raise ApiProblem(403, "PERMISSION_DENIED", str(exc)) from None
        return who
