"""Error bodies that never carry much of what the caller sent.

A refusal often names the value it refuses (``unknown station 'x'``), and pydantic's
validation errors carry the whole ``input``: left alone, a 20 MB body comes back in its
own error, and anything an error message echoes also lands in logs and proxies. So every
error body the API sends goes through :func:`clip`, and request validation errors are
rewritten (:func:`validation_problem`) into the API's own shape, ``{"error": {code,
status, message}}`` with status 400, naming where the bad value was and why, never the
value itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# Enough for every message the API writes itself, with room for a short echoed value.
MAX_MESSAGE = 240
# One run of non-blank characters this long can only be echoed input: shortened in place,
# so the explanation after it survives.
MAX_RUN = 64
_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")
_ELLIPSIS = "..."


def _shorten(run: re.Match[str]) -> str:
    return run[0][: MAX_RUN - len(_ELLIPSIS)] + _ELLIPSIS


def clip(message: str) -> str:
    """``message`` with long runs shortened and cut to :data:`MAX_MESSAGE` characters."""
    message = _RUN.sub(_shorten, message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - len(_ELLIPSIS)] + _ELLIPSIS
    return message


_WHERE = {"path": "path parameter", "query": "query parameter", "header": "header"}


def _where(loc: Sequence[Any]) -> str:
    """``("query", "batch")`` → ``query parameter 'batch'``; ``("body", "count")`` →
    ``body field 'count'``; a malformed body (no field) → ``body``."""
    if not loc:
        return "request"
    head, rest = str(loc[0]), [str(p) for p in loc[1:]]
    if head == "body":
        return f"body field '{'.'.join(rest)}'" if rest else "body"
    return f"{_WHERE.get(head, head)} '{'.'.join(rest)}'"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """The first validation error in words: where and why, without the offending input
    (pydantic's ``msg`` describes the rule, its ``input`` and ``ctx`` are left out)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return clip(f"invalid {_where(first.get('loc', ()))}: {first.get('msg', 'invalid')}{more}")


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "minimum": 400, "maximum": 599},
                "status": {"type": "string"},
                "message": {"type": "string", "maxLength": MAX_MESSAGE},
            },
        }
    },
}


def with_error_shape(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document FastAPI generates, corrected to what the API answers: a bad
    request is a 400 in the API's error shape (not FastAPI's 422 ``HTTPValidationError``),
    and every operation may answer an ``Error`` (401, 403, 404, 409, 503...)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    error = {
        "description": "a refusal: `error.status` says which, `error.message` why",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for operations in doc.get("paths", {}).values():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = error
    return doc
