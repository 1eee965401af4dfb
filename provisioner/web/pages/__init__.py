"""The dashboard's pages, one module per area; each has ``router(ctx) -> APIRouter``."""

from __future__ import annotations

from types import ModuleType

from provisioner.web.pages import admin, audit, batches, devices, line, signin

PAGE_MODULES: tuple[ModuleType, ...] = (signin, line, batches, devices, audit, admin)
