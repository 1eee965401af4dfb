"""The device a line of log is about, as fields of its own.

A socket's task sets them around one device's run (:func:`log_context`); whatever is
logged meanwhile in that thread or task (the pipeline, the chip driver's wrapper, the
link to the line) carries them without each call site repeating them. Context variables,
not a global: two sockets never share a process, but threads and asyncio tasks of one
process each keep their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

#: The fields a context may carry, in the order a human line shows them.
FIELDS = ("batch", "device", "chip_serial", "station", "socket")

_EMPTY: MappingProxyType[str, Any] = MappingProxyType({})
_current: ContextVar[MappingProxyType[str, Any]] = ContextVar("provisioner_log", default=_EMPTY)


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s) {sorted(unknown)}: expected {FIELDS}")
    return {k: v for k, v in fields.items() if v is not None}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, every record carries ``fields`` (added to the outer ones; None
    values are left out). Restored on exit, including what :func:`bind` added inside."""
    token = _current.set(MappingProxyType({**_current.get(), **_checked(fields)}))
    try:
        yield
    finally:
        _current.reset(token)


def bind(**fields: Any) -> None:
    """Add fields learnt during the run (the chip's serial once it is read) to the
    innermost :func:`log_context`; they end with it."""
    _current.set(MappingProxyType({**_current.get(), **_checked(fields)}))


def current_fields() -> dict[str, Any]:
    return dict(_current.get())
