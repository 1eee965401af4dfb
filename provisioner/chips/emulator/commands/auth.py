"""GenDig (0x15), MAC (0x08), CheckMac (0x28): not implemented yet (parse error)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HANDLERS: dict[int, Callable[..., Any]] = {}
