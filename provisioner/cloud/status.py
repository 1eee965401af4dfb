"""Errors in the google.rpc shape Cloud IoT clients parse: ``{"error": {code, message, status}}``.

Every refusal of the built-in registry goes through :class:`ApiError`, so clients written for
Cloud IoT (and our own upload client) can branch on ``status`` and show ``message`` unchanged.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from fastapi.responses import JSONResponse


class Code(Enum):
    """The google.rpc codes this service answers with: (HTTP status, google.rpc number).

    Both are in the value because two codes share HTTP 400 (INVALID_ARGUMENT and
    FAILED_PRECONDITION), and an Enum would otherwise merge them into one.
    """

    INVALID_ARGUMENT = (400, 3)
    FAILED_PRECONDITION = (400, 9)
    OUT_OF_RANGE = (400, 11)  # the device bridge's getConfig with a localVersion ahead
    UNAUTHENTICATED = (401, 16)
    PERMISSION_DENIED = (403, 7)
    NOT_FOUND = (404, 5)
    ALREADY_EXISTS = (409, 6)
    RESOURCE_EXHAUSTED = (429, 8)
    INTERNAL = (500, 13)
    UNIMPLEMENTED = (501, 12)
    UNAVAILABLE = (503, 14)

    @property
    def http(self) -> int:
        return self.value[0]

    @classmethod
    def from_http(cls, status: int) -> Code:
        """The closest code for an HTTP status raised by the framework (405, 422...)."""
        for code in cls:
            if code.http == status:
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


# A message may quote what the caller sent (an id, a field name, a path); Cloud IoT's own
# messages are short. Long runs of non-blank characters can only be echoed input: shortened
# in place so the explanation after them survives; then the whole message is capped. A
# 20 MB request never comes back in its error.
MAX_MESSAGE = 240
MAX_RUN = 128  # a full device name (projects/.../devices/<numId>) stays whole
_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")
_ELLIPSIS = "..."


def clip(message: str) -> str:
    """``message`` with long runs shortened and cut to :data:`MAX_MESSAGE` characters."""
    message = _RUN.sub(lambda m: m[0][: MAX_RUN - len(_ELLIPSIS)] + _ELLIPSIS, message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - len(_ELLIPSIS)] + _ELLIPSIS
    return message


def error_body(code: Code, message: str, http_status: int | None = None) -> dict[str, Any]:
    status = http_status or code.http
    return {"error": {"code": status, "message": clip(message), "status": code.name}}


def error_response(
    code: Code,
    message: str,
    headers: dict[str, str] | None = None,
    http_status: int | None = None,
) -> JSONResponse:
    """The HTTP response for a refusal; the status line is ``code``'s unless the framework
    already chose a more precise one (405 Method Not Allowed)."""
    status = http_status or code.http
    return JSONResponse(error_body(code, message, status), status_code=status, headers=headers)
