"""ECDH (0x43): not implemented yet; the opcode answers a parse error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HANDLERS: dict[int, Callable[..., Any]] = {}
