"""Errors in the google.rpc shape Cloud IoT clients parse: ``{"error": {code, message, status}}``.

Every refusal of the built-in registry goes through :class:`ApiError`, so clients written for
Cloud IoT (and our own upload client) can branch on ``status`` and show ``message`` unchanged.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi.responses import JSONResponse


class Code(Enum):
    """The google.rpc codes this service answers with, and their HTTP statuses."""

    INVALID_ARGUMENT = 400
    UNAUTHENTICATED = 401
    PERMISSION_DENIED = 403
    NOT_FOUND = 404
    ALREADY_EXISTS = 409
    RESOURCE_EXHAUSTED = 429
    INTERNAL = 500
    UNIMPLEMENTED = 501
    UNAVAILABLE = 503

    @classmethod
    def from_http(cls, status: int) -> Code:
        """The closest code for an HTTP status raised by the framework (405, 422...)."""
        for code in cls:
            if code.value == status:
                return code
        if status == 405:
            return cls.UNIMPLEMENTED
        return cls.INTERNAL if status >= 500 else cls.INVALID_ARGUMENT


class ApiError(Exception):
    """A refusal with the code and message the caller will see."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_body(code: Code, message: str, http_status: int | None = None) -> dict[str, Any]:
    status = http_status or code.value
    return {"error": {"code": status, "message": message, "status": code.name}}


def error_response(
    code: Code,
    message: str,
    headers: dict[str, str] | None = None,
    http_status: int | None = None,
) -> JSONResponse:
    """The HTTP response for a refusal; the status line is ``code``'s unless the framework
    already chose a more precise one (405 Method Not Allowed)."""
    status = http_status or code.value
    return JSONResponse(error_body(code, message, status), status_code=status, headers=headers)
